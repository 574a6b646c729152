"""`zoo export`, `zoo verify`, `zoo predict`: thin commands over export.bundle and export.runtime.

They join the `zoo` command through the `zoo.commands` entry points. torch and onnx are imported
inside `export` only; `verify` and `predict` need onnxruntime and numpy alone.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

import zoo
from export.options import COMPUTE, DTYPES, EXPORTERS, RUNTIMES, TRACE_BATCH
from zoo.errors import BadArgumentsError, CheckpointError
from zoo.files import check_output, parents_made
from zoo.models import parse_part
from zoo.options import CHECKPOINT_SUFFIXES, Widths, emit_json, model_training_options, train_from_options


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """The runtime commands' errors (plain ValueErrors, so that it needs no zoo) as one-line CLI errors."""
    from export.runtime.commands import ERRORS, UsageError

    try:
        yield
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


def _progress(message: str) -> None:
    """A status line on stderr, only when a person is watching it."""
    if sys.stderr.isatty():
        click.echo(message, err=True)


class Argument(click.ParamType):
    """`key=value` -> {key: value}: a factory's keyword argument, the value read as a JSON scalar or a word."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_part(f"factory:{value}")[1]
        except BadArgumentsError:
            self.fail(f"{value!r} is not key=value (a number, true/false/null or a word)", param, ctx)


# -- zoo export -----------------------------------------------------------------------------------
@click.command("export")
@click.argument("source", metavar="MODEL_OR_CHECKPOINT")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=pathlib.Path),
    help="The .onnx file to write; with --test-data, the bundle directory.",
)
@click.option(
    "--opset",
    type=int,
    help="ONNX opset: 13 (dynamo: 18) up to the highest the exporter and onnxruntime support "
    "[default: 17 (dynamo: 18)].",
)
@click.option(
    "--exporter",
    type=click.Choice(EXPORTERS),
    default="torchscript",
    show_default=True,
    help="torchscript is fast; dynamo goes through torch.export and needs onnxscript.",
)
@click.option(
    "--static-batch",
    type=click.IntRange(min=1),
    is_flag=False,
    flag_value=TRACE_BATCH,
    default=None,
    metavar="[N]",
    help=f"Fix the batch axis of the graph at N rows ({TRACE_BATCH} when N is not given) instead of a symbolic "
    "one: the model then takes exactly N rows per run.",
)
@click.option(
    "--test-data",
    is_flag=True,
    help="Write a bundle directory: model.onnx, manifest.json and test_data_set_N/*.pb holding every parity "
    "probe with its float64 reference and error bound, for `zoo verify` anywhere.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="Export dtype.",
)
@click.option(
    "--compute",
    type=click.Choice(COMPUTE),
    default=None,
    help="How the graph computes  [default: --dtype]. float64 rounds once at each output, but tract "
    "refuses such a graph and OpenVINO runs it in float32.",
)
@click.option(
    "--keep-on-failure",
    is_flag=True,
    help="When parity fails, still write the model (or bundle) and its report beside -o, named "
    "*.FAILED-PARITY*, and exit 1.",
)
@click.option("--input-shape", type=Widths(),
              help="A factory's input shape after the batch axis, e.g. 3,32,32 [default: its zoo_meta's].")
@click.option("--dynamic-axis", "dynamic_axes", type=click.IntRange(min=1), multiple=True, metavar="N",
              help="An input axis besides the batch (axis 0) that the graph takes at any size, e.g. 1 for the "
              "length of (batch, length, features); repeat for several.")
@click.option("--arg", "arguments", type=Argument(), multiple=True,
              help="A keyword argument of the factory, key=value; repeat for several.")
@click.option("--force", is_flag=True, help="Replace an existing .onnx file or bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@model_training_options
@click.pass_context
def export_command(
    ctx: click.Context,
    source: str,
    out: pathlib.Path,
    opset: int | None,
    exporter: str,
    static_batch: int | None,
    test_data: bool,
    dtype: str,
    compute: str | None,
    keep_on_failure: bool,
    input_shape: list[int] | None,
    dynamic_axes: tuple[int, ...],
    arguments: tuple[dict[str, Any], ...],
    force: bool,
    as_json: bool,
    **training: Any,
) -> None:
    """Export MODEL_OR_CHECKPOINT to ONNX and prove it computes the same numbers as torch.

    MODEL_OR_CHECKPOINT is a checkpoint file (from `zoo train`), a model name, or any torch model as
    package.module:factory (a function or class returning an nn.Module, called with the --arg values,
    imported from the working directory too) with its --input-shape. A name is built and trained
    first with the training options, as `zoo train` would. The parity check always runs:
    onnxruntime against the function's float64 value over the whole float range, each element
    within the error bound of float arithmetic. On a failure nothing is written (unless
    --keep-on-failure), the worst input and the first ONNX node out of its bound are printed and
    the exit status is 1.
    """
    started = time.perf_counter()
    _check_paths(source, out, bundle=test_data, force=force)  # before torch loads (seconds) and before training
    from export.bundle import failed_path, write_bundle, write_onnx
    from export.factory import is_factory
    from export.onnx_export import ExportOptions
    from export.parity import ParityError

    factory = is_factory(source)
    if not factory and (input_shape or dynamic_axes or arguments):
        raise click.UsageError("--input-shape, --dynamic-axis and --arg apply to a factory (package.module:function), "
                               "not to a model name or a checkpoint")
    options = ExportOptions(opset=opset, exporter=exporter, dtype=dtype, compute=compute,
                            dynamic_batch=static_batch is None, batch_size=static_batch or TRACE_BATCH,
                            dynamic_axes=dynamic_axes)
    opset = options.chosen_opset
    # Missing directories are created, as every zoo command does, and removed again if the export fails.
    with parents_made(out):
        if factory:
            model, trained = _factory_model(ctx, source, training, arguments), None
            example = _factory_example(model, source, input_shape, options.batch_size)
        else:
            model, trained = _model(ctx, source, training, progress=False if as_json else None)
            example = None
        _progress(f"exporting to {out} (opset {opset}, {exporter}, {dtype}) and checking parity ...")
        write = write_bundle if test_data else write_onnx
        try:
            report = write(model, out, options, overwrite=force, keep_on_failure=keep_on_failure,
                           example_input=example)
            parity = _bundle_parity(out) if test_data else report.to_dict()
        except ParityError as exc:
            if exc.report is None:  # no rule for one of its ops: nothing was judged
                raise
            _report_parity_failure(exc, as_json)
            if keep_on_failure:
                kept = failed_path(out)
                raise click.ClickException(f"parity failed; kept the failing {'bundle' if test_data else 'model'} "
                                           f"as {kept} (worst element at {exc.report.worst_ratio:.3g} of its worst-case bound, "
                                           f"{exc.report.worst_statistical:.3g} of its statistical bound)")
            raise
    summary = {
        "path": str(out),
        "bundle": test_data,
        "source": source,
        "opset": opset,
        "exporter": exporter,
        "dtype": dtype,
        "dynamic_batch": options.dynamic_batch,
        "static_batch": static_batch,
        "compute": _chosen_compute(out / "model.onnx" if test_data else out),
        "parity": parity,
        "training": trained,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        emit_json(summary)
        return
    kind = "bundle" if test_data else "model"
    batch = "dynamic batch" if options.dynamic_batch else f"static batch of {static_batch} rows"
    computed = f" computed in {summary['compute']}" if summary["compute"] not in (dtype, None) else ""
    click.echo(f"wrote {kind} {out} (opset {opset}, {exporter}, {dtype}{computed}, {batch})")
    click.echo(
        f"parity: ok, worst element at {_num(parity['worst_ratio'])} of its worst-case bound and "
        f"{_num(parity['worst_statistical'])} of its statistical bound over {parity['rows']} probe rows "
        f"({parity['elements']} input elements)"
    )
    if not parity.get("torch_ok", True):
        click.echo("note: torch eager on this machine is outside the bound somewhere (its kernel, not the "
                   "export); see the report's 'torch' entries", err=True)
    click.echo(f"took {summary['seconds']:.2f} s")


def _check_paths(source: str, out: pathlib.Path, *, bundle: bool, force: bool) -> None:
    """Refuse a missing checkpoint and an output that cannot be written or may not be replaced; needs no torch."""
    if _is_path(source) and not os.path.isfile(source):
        raise CheckpointError(f"no checkpoint file at {source}")
    check_output(out, suffixes=() if bundle else (".onnx",), what="an ONNX model", directory=bundle)
    if not out.exists() or (bundle and out.is_dir() and not any(out.iterdir())):
        return
    if bundle:
        from export.runtime import is_bundle  # onnxruntime loads only for this rare case

        if not is_bundle(out):
            raise click.ClickException(f"{out} exists and is not a zoo bundle; choose another output directory")
    if not force:
        raise click.ClickException(f"{out} already exists; pass --force to replace it")


def _chosen_compute(model_path: pathlib.Path) -> str | None:
    """What ``--compute auto`` chose, as recorded in the written model's metadata."""
    import onnx

    props = onnx.load(os.fspath(model_path), load_external_data=False).metadata_props
    return {p.key: p.value for p in props}.get("zoo.compute")


def _model(
    ctx: click.Context, source: str, training: dict[str, Any], *, progress: bool | None
) -> tuple[Any, dict[str, Any] | None]:
    """The model to export and its training summary: loaded from a checkpoint, or built and trained."""
    if _is_path(source):
        _refuse_training_options(ctx, training, "a checkpoint")
        model = zoo.load_checkpoint(source)
        return model.cpu(), getattr(model, "zoo_training", None)
    _progress(f"training {source} ...")
    model, result = train_from_options(source, progress=progress, **training)
    return model.cpu(), result.summary()


def _factory_model(ctx: click.Context, source: str, training: dict[str, Any],
                   arguments: tuple[dict[str, Any], ...]) -> Any:
    """The model a factory builds with the --arg values, seeded by --seed (the other training options do not apply)."""
    from export.factory import build

    _refuse_training_options(ctx, {k: v for k, v in training.items() if k != "seed"}, "a factory")
    return build(source, {key: value for argument in arguments for key, value in argument.items()},
                 seed=training["seed"])


def _factory_example(model: Any, source: str, input_shape: list[int] | None, batch: int) -> Any:
    """The example a factory's model is traced with: --input-shape, else the shape its zoo_meta gives."""
    from export.onnx_export import seeded_example
    from zoo.models import input_shape_of

    shape = input_shape or input_shape_of(model)
    if not shape:
        raise click.UsageError(f"--input-shape is needed: {source} builds a {type(model).__name__} that does not say "
                               "its input shape (e.g. --input-shape 3,32,32 for (batch, 3, 32, 32) inputs)")
    return seeded_example(shape, batch)


def _refuse_training_options(ctx: click.Context, training: dict[str, Any], what: str) -> None:
    given = [name for name in training if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{flags}: training options apply to a model name, not to {what}")


def _is_path(source: str) -> bool:
    """A checkpoint path rather than a model name: an existing file, a path with a separator, a .pt name."""
    suffixes = (*CHECKPOINT_SUFFIXES, ".onnx")  # an .onnx is no model name: load_checkpoint says what it is
    return os.path.exists(source) or os.sep in source or "/" in source or source.endswith(suffixes)


def _bundle_parity(out: pathlib.Path) -> dict[str, Any]:
    from export.runtime.verify import load_manifest

    return load_manifest(out)["parity"]


def _report_parity_failure(exc: Any, as_json: bool) -> None:
    """The report on stdout (--json), or the worst inputs on stderr; the error line follows."""
    if as_json:
        emit_json({"ok": False, "parity": exc.report.to_dict()})


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


# -- zoo verify -----------------------------------------------------------------------------------
@click.command("verify")
@click.argument("bundle", metavar="BUNDLE", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="onnxruntime",
    show_default=True,
    help="The runtime to replay the bundle in (openvino and tract are optional extras: pip install 'zoo-onnx[openvino]').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_command(bundle: pathlib.Path, runtime: str, as_json: bool) -> None:
    """Re-check BUNDLE (a directory from `zoo export --test-data`, or its model.onnx) in one runtime, without torch.

    First checks every file against the manifest's sha256 and size ("bundle damaged: FILE missing /
    changed / unexpected" otherwise), then replays every probe of the export-time parity check: each
    output element must lie within its float error bound of the function's float64 value, NaN where
    the function is NaN, the same infinity where it is infinite. Prints one line per output in units
    of the bound; exit status 1 on any failure (the last line says whether only NaN/inf handling
    differs, as in runtimes that map NaN to a number).
    """
    from export.runtime import commands

    with _one_line_errors():
        commands.verify(bundle, runtime=runtime, as_json=as_json, echo=click.echo)


# -- zoo predict ----------------------------------------------------------------------------------
@click.command("predict", context_settings={"ignore_unknown_options": True})
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=pathlib.Path))
@click.argument("values", nargs=-1, type=float, metavar="[VALUES]...")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=pathlib.Path),
    help="A .npy file (written by numpy.save) or a TensorProto .pb holding the input batch: rows (N, F), images "
    "(N, C, H, W), signals (N, C, L), or token ids (N, L) for a model of one-hot tokens (N, L, V).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=pathlib.Path),
    help="Write the output to this .npy file (.npz: every output by name) instead of printing it.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (NaN/inf as the strings 'nan', 'inf', '-inf')."
)
def predict_command(
    model_path: pathlib.Path,
    values: tuple[float, ...],
    input_path: pathlib.Path | None,
    output: pathlib.Path | None,
    as_json: bool,
) -> None:
    """Run MODEL (an .onnx file or a bundle) on --input x.npy or on VALUES, with onnxruntime alone.

    VALUES are the input's numbers row after row: with a model of F input features, N*F values make
    N rows of F (e.g. `zoo predict mlp.onnx 1 2 3` runs 3 rows through a 1-feature model); a count
    that is not a multiple of F is an error. Negative numbers, nan and inf may be given as they are.
    Images, signals and token ids come in an --input file. A classifier prints the class of each
    input (with its name when the training set named them), a sequence classifier the class at
    each position; --json adds them as "predictions" to the logits, and -o writes the logits.
    """
    from export.runtime import commands

    with _one_line_errors():
        commands.predict(model_path, values, input_path=input_path, output=output, as_json=as_json, echo=click.echo)
