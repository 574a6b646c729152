"""`zoo run`: train, export and verify every model of the zoo, then write a report and pictures.

This module holds the run itself and its click command; the parts live beside it, one idea each:
`rows` (which rows, from the registries), `row` (one row, and storing its bundle), `pool` (local
worker processes), `cluster` (a Dask cluster), `outdir` (the output folder), `pictures` and `report`.

Each row runs with one torch thread, in this process, in a local worker process or on a Dask worker, so
`--jobs N` and `--cluster` give the same numbers as `--jobs 1`. A row that fails (plugin import,
training, export, parity, a crashed worker) is reported with its error and never stops the others.
Workers see plugins installed as distributions (entry points), not ones registered in this process
with `Registry.register`: use `jobs=1` for those. Ctrl-C writes the report of the rows that finished.

torch, onnx, dask and matplotlib are imported inside functions, so `zoo --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from export.run import pool as run_pool
from export.run.cluster import tasks
from export.run.outdir import check_out_dir, clear_run
from export.run.pictures import draw_pictures
from export.run.pool import WorkerDied
from export.run.report import (
    Report,
    classifier_rows,
    format_table,
    regression_rows,
    table_rows,
    where_it_ran,
    write_report,
)
from export.run.row import Finished, run_row, store_bundle
from export.run.rows import Job, Row, plan
from zoo.errors import BadArgumentsError, ZooError

MAX_DEFAULT_JOBS = 8

OnRow = Callable[[Row, int, int], None]  # (finished row, rows finished so far, total)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a zoo run; `report` (already written) holds the rows that had finished."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"interrupted after {len(report.rows)} of {report.settings['rows']} rows")
        self.report = report


def default_jobs(rows: int) -> int:
    """Worker processes when --jobs is not given: one per core, at most MAX_DEFAULT_JOBS and the row count."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS, rows))


def run_zoo(out: str | os.PathLike[str] = "zoo-out", *, only: Sequence[str] = (), device: str = "auto",
            opset: int = 17, seed: int = 0, jobs: int | None = None, cluster: str | None = None,
            on_row: OnRow | None = None, force: bool = False) -> Report:
    """Run every selected row, draw the pictures, write OUT/report.json and OUT/report.md; return the report.

    `cluster` is a Dask scheduler address, or "local" for a LocalCluster of `jobs` workers here;
    without it rows run in this process (jobs=1) or in `jobs` worker processes. Bundles are
    written under OUT/models/ by this process in every case. OUT must be empty or missing; with
    `force`, an earlier run's output there is removed first (see export.run.outdir). Raises
    BadArgumentsError, ZooError (output directory), ClusterError before any row runs, and
    RunInterrupted (a KeyboardInterrupt, after writing the report of the finished rows) on Ctrl-C.
    """
    started = time.perf_counter()
    out = pathlib.Path(out)
    replace = check_out_dir(out, force=force)  # before torch loads (seconds) and before any work
    if cluster is None and jobs != 1 and default_jobs(2) > 1:
        run_pool.warm_up()  # its imports overlap this process's start-up
    selected = plan(only=only)
    settings: dict[str, Any] = {"seed": seed, "device": _check_settings(device=device, opset=opset), "opset": opset,
                                "jobs": jobs or default_jobs(len(selected)), "only": list(only),
                                "rows": len(selected), "cluster": None, "interrupted": False}
    options = {"out": os.fspath(out), "device": device, "opset": opset, "seed": seed}
    finished: dict[str, Row] = {}
    with contextlib.ExitStack() as stack:
        results = stack.enter_context(contextlib.closing(_results(selected, options, settings, cluster, stack)))
        if replace:  # every setting checked out: the earlier run goes only now
            clear_run(out)
        _make_output_dir(out)
        try:
            for job, result in results:
                done = result if isinstance(result, Finished) else Finished(_crashed(job, result))
                store_bundle(out, done)
                finished[job.name] = done.row
                if on_row:
                    on_row(done.row, len(finished), len(selected))
        except KeyboardInterrupt:
            settings["interrupted"] = True
    report = Report([finished[job.name] for job in selected if job.name in finished], settings)
    if not report.interrupted:  # after Ctrl-C the user wants out: no pictures
        report.pictures, report.problems = draw_pictures(report.rows, out, seed=seed)
    _remove_if_empty(out / "models")
    report.seconds = time.perf_counter() - started
    write_report(report, out)
    if report.interrupted:
        raise RunInterrupted(report)
    return report


def _results(jobs: list[Job], options: dict[str, Any], settings: dict[str, Any], cluster: str | None,
             stack: contextlib.ExitStack) -> Iterator[tuple[Job, Any]]:
    """(job, Finished or the exception it ended with) as rows finish, wherever they run."""
    results, connected = tasks(run_row, jobs, jobs=settings["jobs"], stack=stack, address=cluster, options=options)
    if connected:
        settings["cluster"], settings["jobs"] = connected.settings(), connected.workers
    return results


def _crashed(job: Job, error: BaseException) -> Row:
    """The row of a job whose worker died, or whose task could not run or send its result back."""
    message = " ".join(str(error).split())
    return job.row(stage="crash", error=message if isinstance(error, WorkerDied) else
                   f"{type(error).__name__}: {message}".rstrip(": "))


def _check_settings(*, device: str, opset: int) -> str:
    """Check what every row shares before any starts; return the device rows will use."""
    from export.onnx_export import opset_range
    from zoo.training import resolve_device

    resolved = str(resolve_device(device))
    low, high = opset_range("torchscript")
    if not low <= opset <= high:
        raise BadArgumentsError(f"opset {opset} is not supported here; choose one from {low} to {high}")
    return resolved


def _make_output_dir(out: pathlib.Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot create the output directory {out}: {exc.strerror or exc}") from exc


def _remove_if_empty(directory: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()  # only succeeds when empty: no bundle was written


# -- the command ---------------------------------------------------------------------------------
def _progress(row: Row, finished: int, total: int) -> None:
    """Redraw one status line on stderr (called only when stderr is a terminal)."""
    click.echo(f"\r\x1b[K[{finished:>{len(str(total))}}/{total}] {row.name}: {row.status()} "
               f"({row.total_seconds:.1f} s)", err=True, nl=finished == total)


@click.command("run")
@click.option("-o", "--out", default="zoo-out", show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=pathlib.Path), help="Output directory.")
@click.option("--only", "patterns", multiple=True, metavar="PATTERN",
              help="Run only rows whose name matches this fnmatch pattern (repeatable), e.g. 'mlp-relu*'.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="Training device: auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--opset", type=int, default=17, show_default=True, metavar="N", help="ONNX opset of the exported models.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="N", help="Seed of weights, data and training.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Worker processes (with --cluster local: Dask workers)  [default: one per CPU core, "
                   f"at most {MAX_DEFAULT_JOBS}]")
@click.option("--cluster", metavar="ADDRESS", default=None,
              help="Run rows on the Dask scheduler at ADDRESS (e.g. tcp://host:8786), or 'local' to start a "
                   "LocalCluster here; bundles are still written to DIR here. Needs `pip install 'zoo-onnx[dask]'`.")
@click.option("--force", is_flag=True,
              help="Replace an earlier run's output in DIR (only a folder holding a zoo run's report.json and the "
                   "files that run wrote is cleared).")
@click.option("--list", "list_rows", is_flag=True, help="Print the row names and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def run_command(ctx: click.Context, out: pathlib.Path, patterns: tuple[str, ...], device: str, opset: int, seed: int,
                jobs: int | None, cluster: str | None, force: bool, list_rows: bool, as_json: bool,
                quiet: bool) -> None:
    """Train, export and verify the whole zoo into DIR: report.md, report.json, pictures, models/.

    DIR must be empty or missing: an earlier run there is replaced only with --force, anything else never.

    Rows: the course notes' regression once per registered linear layer (compared with the notes'
    recipe and with least squares), one MLP per registered activation, and cnn, resnet, cnn1d and
    transformer classifiers with a few activations and norms each (held-out accuracy in torch and
    in onnxruntime). Ctrl-C writes the report of the rows that finished and exits 130. Exits
    non-zero unless every row passes.
    """
    from zoo.options import emit_json

    if list_rows:
        click.echo("\n".join(job.name for job in plan(only=patterns)))
        return
    show = _progress if not (quiet or as_json) and sys.stderr.isatty() else None
    try:
        report = run_zoo(out, only=patterns, device=device, opset=opset, seed=seed, jobs=jobs, cluster=cluster,
                         on_row=show, force=force)
    except RunInterrupted as stop:
        click.echo(f"\nzoo: interrupted: {len(stop.report.rows)} of {stop.report.settings['rows']} rows finished; "
                   f"wrote their report to {out / 'report.md'}", err=True)
        ctx.exit(130)
    if as_json:
        emit_json(report.to_json())
    elif not quiet:
        _print_summary(report, out)
    if not report.ok:
        failed = [row.name for row in report.failed()]
        what = (f"{len(failed)} of {len(report.rows)} models failed ({', '.join(failed[:5])}"
                f"{', ...' if len(failed) > 5 else ''})") if failed else "; ".join(report.problems)
        raise click.ClickException(f"{what}; see {out / 'report.md'}")


def _print_summary(report: Report, out: pathlib.Path) -> None:
    blocks = [format_table(table_rows(report.rows))]
    regression = regression_rows(report.rows)
    if regression:
        blocks.append("The course notes' regression, y = 10x + 5 + noise:\n" + format_table(regression))
    classifiers = classifier_rows(report.rows)
    if classifiers:
        blocks.append("The classifiers on their held-out rows (torch, and the exported model in onnxruntime):\n"
                      + format_table(classifiers))
    blocks += [f"{row.name} {row.status()}: {_clip(row.error or '', 300)}" for row in report.failed()]
    files = [str(out / name) for name in ["report.md", "report.json", *report.pictures]]
    if (out / "models").is_dir():
        files.append(f"{out / 'models'}/")
    blocks.append(f"{len(report.rows) - len(report.failed())}/{len(report.rows)} ok in {report.seconds:.1f} s "
                  f"({where_it_ran(report.settings)}); wrote {', '.join(files[:-1])} and {files[-1]}")
    click.echo("\n\n".join(blocks))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
