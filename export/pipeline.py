"""`zoo run`: train, export and verify every model of the zoo, then write a report and pictures.

The rows are the course notes' regression once per linear layer and one MLP per registered
activation (and per alias that changes the function, like gelu_tanh). Each row runs with one torch
thread, in this process or in a spawned worker, so `--jobs N` gives the same numbers as `--jobs 1`.
A row that fails (plugin import, training, export, parity, a crashed worker) is reported with its
error and never stops the others. Workers see plugins installed as distributions (entry points),
not ones registered in this process with `Registry.register`: use `jobs=1` for those.

torch, onnx and matplotlib are imported inside functions, so `zoo --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import pathlib
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import click

import zoo
from zoo.errors import BadArgumentsError, ZooError
from zoo.files import write_atomic
from zoo.text import plural

LINEAR_LAYERS = ("einsum_linear", "param_linear", "linear")
# The course notes' printed (w, b) per layer after their 5 epochs; the truth is w = 10, b = 5.
NOTES_PUBLISHED = {"einsum_linear": (9.97, 8.1), "param_linear": (9.96, 9.0), "linear": (9.95, 8.7)}
MAX_DEFAULT_JOBS = 8

OnRow = Callable[["Row", int, int], None]  # (finished row, rows finished so far, total)


@dataclasses.dataclass(frozen=True)
class Job:
    """One row to run: the model's zoo config and the dataset it trains on."""

    name: str
    model: dict[str, Any]
    dataset: str

    def row(self, **fields: Any) -> Row:
        """A fresh row for this job."""
        activation = self.model.get("activation", "-")
        return Row(self.name, self.model["name"], activation, self.model.get("layer", "linear"), self.dataset,
                   **fields)


@dataclasses.dataclass
class Row:
    """What happened to one job: the verdict, the figures, and the error if it failed."""

    name: str
    model: str
    activation: str  # as listed: an alias for alias variants, "-" for the regression
    layer: str
    dataset: str
    ok: bool = False
    stage: str = "build"  # the step that failed (build, train, export, parity, crash), or "done"
    error: str | None = None
    train_loss: float | None = None
    worst_ratio: float | None = None  # the largest parity error in units of its float error bound (<= 1 passes)
    max_abs_error: float | None = None
    onnx: str | None = None  # the exported model, relative to the output directory
    compute: str | None = None  # the dtype the exported graph computes in
    epochs: int | None = None
    seconds: float = 0.0
    history: list[float] = dataclasses.field(default_factory=list)
    regression: dict[str, Any] | None = None  # learned vs notes vs least squares (regression rows)
    warnings: list[str] = dataclasses.field(default_factory=list)  # distinct warnings raised while it ran

    def status(self) -> str:
        """"ok", or "failed (<stage>)"."""
        return "ok" if self.ok else f"failed ({self.stage})"

    def to_json(self) -> dict[str, Any]:
        """This row as JSON-able data (non-finite floats become "nan", "inf", "-inf")."""
        from export.runtime.verify import jsonable

        return jsonable({**dataclasses.asdict(self), "status": self.status()})


@dataclasses.dataclass
class Report:
    """The result of a zoo run: its rows, settings, pictures and wall time."""

    rows: list[Row]
    settings: dict[str, Any]
    seconds: float = 0.0
    pictures: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # e.g. a picture that could not be drawn

    @property
    def ok(self) -> bool:
        """Every row trained, exported and passed parity, and every picture was drawn."""
        return not self.failed() and not self.problems

    def failed(self) -> list[Row]:
        """The rows that did not pass."""
        return [row for row in self.rows if not row.ok]

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-able data; `models` has one entry per row."""
        return {
            "zoo_version": zoo.__version__,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            "models": [row.to_json() for row in self.rows],
            "pictures": self.pictures,
            "problems": self.problems,
        }


# -- the job list ------------------------------------------------------------------------------
def plan(*, only: Sequence[str] = ()) -> list[Job]:
    """Every row of a zoo run (regressions, then one MLP per activation), kept if it matches an fnmatch pattern."""
    from zoo.plots import activation_specs

    jobs = [Job(f"linreg-{layer}", {"name": "linear_regression", "layer": layer}, "linear")
            for layer in LINEAR_LAYERS]
    jobs += [Job(f"mlp-{spec}", {"name": "mlp", "activation": spec}, "nonlinear") for spec in activation_specs()]
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(job.name, p) for job in jobs)]
    if unmatched:
        raise BadArgumentsError(
            f"--only {unmatched[0]!r} matches no row; rows are named like 'linreg-linear' and 'mlp-relu' "
            "(see `zoo run --list`)"
        )
    return [job for job in jobs if not only or any(fnmatch.fnmatchcase(job.name, p) for p in only)]


# -- one row -------------------------------------------------------------------------------------
def run_job(job: Job, *, out: str | os.PathLike[str], device: str = "auto", opset: int = 17, seed: int = 0) -> Row:
    """Build, train, export (bundle with parity check) one job; any failure becomes a failed row."""
    import torch

    from export.bundle import is_bundle

    started = time.perf_counter()
    row = job.row()
    target = pathlib.Path(out) / "models" / re.sub(r"[^A-Za-z0-9_.-]", "_", job.name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever --jobs is
    try:
        with warnings.catch_warnings(record=True) as caught:  # kept in the report, not sprayed on the terminal
            warnings.simplefilter("always")
            _run_stages(job, row, target, device=device, opset=opset, seed=seed)
    except Exception as exc:  # noqa: BLE001 - third-party plugins may raise anything; it becomes the row's error
        message = (str(exc) if isinstance(exc, ZooError) else f"{type(exc).__name__}: {exc}").strip()
        row.error = message.splitlines()[0] if message else type(exc).__name__
        if is_bundle(target):  # an earlier run's bundle must not pass for this run's result
            shutil.rmtree(target)
    finally:
        torch.set_num_threads(threads)
        row.seconds = round(time.perf_counter() - started, 3)
    row.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return row


def _run_stages(job: Job, row: Row, target: pathlib.Path, *, device: str, opset: int, seed: int) -> None:
    from export.bundle import write_bundle
    from export.parity import ParityError

    model = zoo.create_model(**job.model, seed=seed)
    data = zoo.datasets.create(job.dataset, seed=seed)
    row.stage = "train"
    result = zoo.train(model, data, device=device, seed=seed, progress=False)
    row.train_loss, row.history, row.epochs = result.final_loss, list(result.history), result.recipe["epochs"]
    if job.model["name"] == "linear_regression":
        row.regression = _compare_regression(job, model, data, device=device, seed=seed)
    row.stage = "export"
    try:
        write_bundle(model.cpu(), target, opset=opset, overwrite=True)
    except ParityError as exc:
        row.stage = "parity"
        row.worst_ratio, row.max_abs_error = exc.report.worst_ratio, exc.report.max_abs_error
        raise
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    parity = manifest["parity"]
    row.worst_ratio, row.max_abs_error = float(parity["worst_ratio"]), float(parity["max_abs_error"])
    row.compute = manifest["compute"]
    row.onnx = f"models/{target.name}/model.onnx"
    row.stage, row.ok = "done", True


def _compare_regression(job: Job, model: Any, data: Any, *, device: str, seed: int) -> dict[str, Any]:
    """Learned (w, b) next to the notes' recipe run here, the notes' printed numbers and least squares."""
    import torch

    notes_model = zoo.create_model(**job.model, seed=seed)
    notes = zoo.train(notes_model, data, recipe="notes", device=device, seed=seed, progress=False)
    x, y = data.x.double().cpu(), data.y.double().cpu()
    w_ols, b_ols = torch.linalg.lstsq(torch.cat([x, torch.ones_like(x)], dim=1), y).solution.flatten().tolist()

    def fit(w: float, b: float) -> dict[str, float]:
        return {"w": w, "b": b, "mse": float(((w * x + b - y) ** 2).mean())}

    published_w, published_b = NOTES_PUBLISHED[job.model["layer"]]
    return {
        "default": fit(*_weight_bias(model)),
        "notes": {**fit(*_weight_bias(notes_model)), "history": list(notes.history)},
        "notes_published": {"w": published_w, "b": published_b},
        "least_squares": fit(w_ols, b_ols),
    }


def _weight_bias(model: Any) -> tuple[float, float]:
    params = dict(model.named_parameters())
    return float(params["weight"].detach().flatten()[0]), float(params["bias"].detach().flatten()[0])


# -- the worker pool ---------------------------------------------------------------------------
def default_jobs(rows: int) -> int:
    """Worker processes when --jobs is not given: one per core, at most MAX_DEFAULT_JOBS and the row count."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS, rows))


def run_jobs(jobs: Sequence[Job], *, out: str | os.PathLike[str], device: str = "auto", opset: int = 17,
             seed: int = 0, workers: int = 1, on_row: OnRow | None = None) -> list[Row]:
    """Run jobs in this process (workers=1) or in `workers` spawned processes; rows come back in job order.

    A worker that dies (a plugin's segfault, out of memory) fails the one row it was running and is
    replaced; the other rows are unaffected.
    """
    options = {"out": os.fspath(out), "device": device, "opset": opset, "seed": seed}
    finished: dict[str, Row] = {}

    def done(job: Job, row: Row) -> None:
        finished[job.name] = row
        if on_row:
            on_row(row, len(finished), len(jobs))

    if workers <= 1:
        for job in jobs:
            done(job, run_job(job, **options))
    else:
        _run_in_workers(list(jobs), options, workers, done)
    return [finished[job.name] for job in jobs]


def _worker(conn: Any, options: dict[str, Any]) -> None:
    """A worker process: run the jobs it receives until it receives None."""
    while (job := conn.recv()) is not None:
        conn.send(run_job(job, **options))


def _run_in_workers(jobs: list[Job], options: dict[str, Any], workers: int, done: Callable[[Job, Row], None]) -> None:
    """Hand jobs one at a time to spawned workers, so that a dead worker is tied to exactly one row."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")  # forking a process that has loaded torch is unsafe

    def start() -> tuple[Any, Any]:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, options), daemon=True)
        process.start()
        child.close()
        return parent, process

    queue = jobs[::-1]
    idle = [start() for _ in range(min(workers, len(jobs)))]
    busy: dict[Any, tuple[Any, Job]] = {}  # connection -> (process, job it runs)
    try:
        while queue or busy:
            while idle and queue:
                conn, process = idle.pop()
                busy[conn] = (process, queue.pop())
                conn.send(busy[conn][1])
            for conn in wait(list(busy)):  # a result, or end of file when the worker died
                process, job = busy.pop(conn)
                try:
                    row = conn.recv()
                    idle.append((conn, process))
                except EOFError:
                    process.join()
                    row = job.row(stage="crash", error=f"the worker process died running this row (exit code "
                                                        f"{process.exitcode}); a plugin crashed or ran out of memory")
                    idle.append(start())
                done(job, row)
    finally:
        for conn, process in [*idle, *((conn, process) for conn, (process, _) in busy.items())]:
            process.terminate()  # idle workers wait in recv(); after Ctrl-C busy ones must not go on
            process.join()
            conn.close()


# -- pictures and report -----------------------------------------------------------------------
def draw_pictures(rows: Sequence[Row], out: pathlib.Path, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Write activations.png (activations that built and did not crash) and training.png; return (written, problems)."""
    from zoo import plots

    activations = [row.activation for row in rows if row.model == "mlp" and row.stage not in ("build", "crash")]
    regression: dict[str, list[float]] = {}
    for recipe, history in (("default recipe", lambda r: r.history),
                            ("notes' recipe", lambda r: r.regression["notes"]["history"])):
        same: dict[tuple[float, ...], list[str]] = {}  # the layers compute the same numbers: one curve each
        for row in rows:
            if row.regression:
                same.setdefault(tuple(history(row)), []).append(row.layer)
        regression.update({f"{recipe}: {', '.join(layers)}": list(h) for h, layers in same.items()})
    mlp = {row.activation: row.history for row in rows if row.model == "mlp" and row.history}
    panels = {"linear_regression on 'linear'": regression, "mlp on 'nonlinear', one curve per activation": mlp}
    pictures = {
        "activations.png": (lambda path: plots.plot_activations(activations, path, seed=seed), activations),
        "training.png": (lambda path: plots.plot_training(panels, path), regression or mlp),
    }
    written, problems = [], []
    for filename, (draw, wanted) in pictures.items():
        try:
            if wanted:
                draw(out / filename)
                written.append(filename)
        except ZooError as exc:
            problems.append(f"{filename} not drawn: {exc}")
    return written, problems


def write_report(report: Report, out: pathlib.Path) -> None:
    """Write OUT/report.json and OUT/report.md, each atomically."""
    write_atomic(out / "report.json", (json.dumps(report.to_json(), indent=2) + "\n").encode())
    write_atomic(out / "report.md", markdown(report).encode())


TABLE_HEADER = ("model", "activation", "layer", "train loss", "computes", "worst/bound", "status")
REGRESSION_HEADER = ("layer", "fit", "w", "b", "MSE (all rows)")
# (key in Row.regression, label, number format): the notes print two decimals and no MSE.
REGRESSION_FITS = (("default", "zoo default recipe", ".4f"), ("notes", "notes' recipe, run here", ".4f"),
                   ("notes_published", "notes' printed result", ".2f"), ("least_squares", "least squares", ".4f"))
ERROR_NOTE = ("Parity is judged on every probe (inputs up to +-3e38, infinities and NaN included) against the "
              "model's float64 value: each element must lie within the error bound that float arithmetic allows "
              "any correct evaluation (sums grow it with the size of their terms, each op adds its rounding). "
              "`worst/bound` is the largest error in units of that bound: at most 1 passes. `computes` is the "
              "dtype the exported graph computes in.")

REGRESSION_NOTE = ("`zoo default recipe` is the row exported above; `notes' recipe, run here` trains the same model "
                   "with the notes' recipe; `least squares` is the exact optimum (torch.linalg.lstsq).")



def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The summary table, header first: one line per row."""
    return [TABLE_HEADER, *((row.name, row.activation, row.layer, _num(row.train_loss, ".4g"), row.compute or "-",
                             _num(row.worst_ratio, ".3g"), row.status())
                            for row in rows)]


def regression_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The notes' regression compared, header first; empty without regression rows."""
    cells = [(row.layer, label, _num(fit["w"], spec), _num(fit["b"], spec), _num(fit.get("mse"), ".4f"))
             for row in rows if row.regression
             for key, label, spec in REGRESSION_FITS for fit in [row.regression[key]]]
    return [REGRESSION_HEADER, *cells] if cells else []


def format_table(cells: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns separated by two spaces; the first line is the header."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(c, widths)).rstrip() for c in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown(report: Report) -> str:
    """report.md: the run's settings, the summary table, the regression comparison, failures and pictures."""
    s, failed = report.settings, report.failed()
    epochs = sorted({row.epochs for row in report.rows if row.epochs})
    summary = (
        f"{len(report.rows)} models, {len(report.rows) - len(failed)} ok, {len(failed)} failed in "
        f"{report.seconds:.1f} s (seed {s['seed']}, device {s['device']}, opset {s['opset']}, "
        f"{plural(s['jobs'], 'worker process', 'worker processes')}). Every model trains with zoo's default recipe ({'/'.join(map(str, epochs)) or '-'} "
        "epochs), is exported as a bundle under `models/<model>/` and checked for parity with the full probe set."
    )
    lines = ["# zoo run", "", summary, "", _md_table(table_rows(report.rows)), "", ERROR_NOTE]
    regression = regression_rows(report.rows)
    if regression:
        lines += ["", "## The course notes' regression (y = 10x + 5 + noise)", "", _md_table(regression), "",
                  REGRESSION_NOTE]
    if failed or report.problems:
        lines += ["", "## Failures", ""]
        lines += [f"- `{row.name}` {row.status()}: {row.error}" for row in failed]
        lines += [f"- {problem}" for problem in report.problems]
    if report.pictures:
        lines += ["", "## Pictures", *(f"\n![{p}]({p})" for p in report.pictures)]
    return "\n".join(lines) + "\n"


def _md_table(cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0]), *lines[1:]])


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- the whole run -------------------------------------------------------------------------------
def run_zoo(out: str | os.PathLike[str] = "zoo-out", *, only: Sequence[str] = (), device: str = "auto",
            opset: int = 17, seed: int = 0, jobs: int | None = None, on_row: OnRow | None = None) -> Report:
    """Run every selected row, draw the pictures, write OUT/report.json and OUT/report.md; return the report."""
    started = time.perf_counter()
    selected = plan(only=only)
    out = pathlib.Path(out)
    settings = {"seed": seed, "device": _prepare(out, device=device, opset=opset), "opset": opset,
                "jobs": jobs or default_jobs(len(selected)), "only": list(only)}
    rows = run_jobs(selected, out=out, device=device, opset=opset, seed=seed, workers=settings["jobs"],
                    on_row=on_row)
    report = Report(rows, settings)
    report.pictures, report.problems = draw_pictures(rows, out, seed=seed)
    report.seconds = time.perf_counter() - started
    write_report(report, out)
    return report


def _prepare(out: pathlib.Path, *, device: str, opset: int) -> str:
    """Check what every row shares before any starts, create OUT/models; return the device rows will use."""
    from export.onnx_export import opset_range
    from zoo.training import resolve_device

    resolved = str(resolve_device(device))
    low, high = opset_range("torchscript")
    if not low <= opset <= high:
        raise BadArgumentsError(f"opset {opset} is not supported here; choose one from {low} to {high}")
    try:
        (out / "models").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot create the output directory {out}: {exc.strerror or exc}") from exc
    return resolved


# -- the command ---------------------------------------------------------------------------------
def _progress(row: Row, finished: int, total: int) -> None:
    """Redraw one status line on stderr (called only when stderr is a terminal)."""
    click.echo(f"\r\x1b[K[{finished:>{len(str(total))}}/{total}] {row.name}: {row.status()} ({row.seconds:.1f} s)",
               err=True, nl=finished == total)


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
              help=f"Worker processes  [default: one per CPU core, at most {MAX_DEFAULT_JOBS}]")
@click.option("--list", "list_rows", is_flag=True, help="Print the row names and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def run_command(out: pathlib.Path, patterns: tuple[str, ...], device: str, opset: int, seed: int,
                jobs: int | None, list_rows: bool, as_json: bool, quiet: bool) -> None:
    """Train, export and verify the whole zoo into DIR: report.md, report.json, pictures, models/.

    Rows: the course notes' regression once per linear layer (compared with the notes' recipe and
    with least squares) and one MLP per registered activation. Exits non-zero unless every row passes.
    """
    from zoo.cli import emit_json

    if list_rows:
        click.echo("\n".join(job.name for job in plan(only=patterns)))
        return
    show = _progress if not (quiet or as_json) and sys.stderr.isatty() else None
    report = run_zoo(out, only=patterns, device=device, opset=opset, seed=seed, jobs=jobs, on_row=show)
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
    blocks += [f"{row.name} {row.status()}: {_clip(row.error or '', 300)}" for row in report.failed()]
    files = ", ".join(str(out / name) for name in ["report.md", "report.json", *report.pictures])
    blocks.append(f"{len(report.rows) - len(report.failed())}/{len(report.rows)} ok in {report.seconds:.1f} s "
                  f"({plural(report.settings['jobs'], 'worker process', 'worker processes')}); wrote {files} and "
                  f"{out / 'models'}/")
    click.echo("\n\n".join(blocks))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
