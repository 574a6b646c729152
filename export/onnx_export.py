"""``to_onnx``: export a model to a checked ONNX file whose graph computes torch's function."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import logging
import os
import pathlib
import sys
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import torch

from export import fixes
from zoo.errors import ZooError
from zoo.files import write_atomic

EXPORTERS = ("torchscript", "dynamo")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
COMPUTE = ("float16", "float32", "float64")
DEFAULT_OPSET = 17
MIN_OPSET = 13
BATCH_AXIS = "batch"
# The dynamo exporter's translations are written for this opset; below it, it falls back to the
# version converter and silently keeps this opset when that fails.
DYNAMO_MIN_OPSET = 18


class ExportError(ZooError):
    """The model could not be exported to a valid ONNX file; the message says why and what to do."""


def opset_range(exporter: str = "torchscript") -> tuple[int, int]:
    """The (lowest, highest) opset that ``exporter`` and the installed onnxruntime both support."""
    _check_exporter(exporter)
    from torch.onnx import _constants

    if exporter == "torchscript":
        low, high = MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    else:
        low, high = DYNAMO_MIN_OPSET, _constants.ONNX_MAX_OPSET
    return low, min(high, onnxruntime_max_opset())


@functools.cache
def onnxruntime_max_opset() -> int:
    """The highest default-domain opset the installed onnxruntime accepts (found by loading)."""
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        if _onnxruntime_loads(opset):
            return opset
    raise ExportError(f"the installed onnxruntime accepts no opset >= {MIN_OPSET}; upgrade onnxruntime")


def _onnxruntime_loads(opset: int) -> bool:
    import onnxruntime

    try:
        onnxruntime.InferenceSession(_identity_model(opset), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means "not this opset"
        return False
    return True


def to_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    exporter: str = "torchscript",
    dynamic_batch: bool = True,
    example_input: torch.Tensor | None = None,
    dtype: str = "float32",
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    metadata: dict[str, str] | None = None,
    compute: str | None = None,
) -> pathlib.Path:
    """Export ``model`` to a checked ONNX file at ``path`` (written atomically) and return the path.

    The graph is exported in eval mode with the fixes of ``export.fixes`` applied, checked with
    ``onnx.checker`` (full check) and shape inference, and must declare exactly ``opset``, the
    requested dtype and, with ``dynamic_batch``, a symbolic batch axis on every input and output.
    ``opset`` defaults to ``default_opset(exporter)``. ``metadata_props`` hold ``zoo.config`` and
    ``zoo.training`` (JSON, when the model carries ``zoo_config`` / ``zoo_training``; no timings or
    devices), ``zoo.version``, ``zoo.torch_version``, ``zoo.onnx_version``, ``zoo.opset``,
    ``zoo.exporter``, ``zoo.dtype``, ``zoo.compute`` and the caller's ``metadata``: the same model
    exported twice gives the same bytes, on any machine with the same packages.

    ``compute`` is how the graph computes: in ``dtype`` (the default), node by node, or on request
    in ``"float64"`` with one rounding at each output (runtimes without float64 kernels, such as
    OpenVINO's CPU plugin and tract, refuse or narrow it).
    Raises ``ExportError`` with the reason and the next step when any of that fails.
    """
    _check_exporter(exporter)
    opset = default_opset(exporter) if opset is None else opset
    _check_opset(opset, exporter)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    compute = compute or dtype
    check_compute(compute, dtype)
    example = _example_input(model, example_input, DTYPES[dtype], dynamic_batch)
    with eval_copy(model, DTYPES[dtype]) as export_model:
        proto = _export(export_model, example, opset, exporter, dynamic_batch, input_names, output_names)
    if not fixes.enabled():
        compute = dtype
    proto = fixes.compute_in_float64(proto) if compute == "float64" else _narrow(proto, dtype)
    _strip_machine_facts(proto)
    _validate(proto, opset, dtype, dynamic_batch, example.shape[0], input_names, output_names)
    extra = {"zoo.compute": compute, **(metadata or {})}
    _set_metadata(proto, model, opset=opset, exporter=exporter, dtype=dtype, extra=extra)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, proto.SerializeToString())


def default_opset(exporter: str = "torchscript") -> int:
    """The opset used when none is asked for: 17, or the exporter's lowest when that is higher (dynamo: 18)."""
    low, high = opset_range(exporter)
    return min(max(DEFAULT_OPSET, low), high)


def check_compute(compute: str | None, dtype: str) -> None:
    """Raise ExportError unless ``compute`` is None, ``dtype`` or 'float64'."""
    if compute not in (None, "float64", dtype):
        raise ExportError(f"compute must be {dtype!r} or 'float64' for a {dtype} export, got {compute!r}")


# Node metadata the dynamo exporter writes that names files on the exporting machine.
MACHINE_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)
# Training record fields that describe the run, not the model.
MACHINE_TRAINING_FIELDS = ("seconds", "device")


def _strip_machine_facts(proto: onnx.ModelProto) -> None:
    """Drop what would make the file depend on the machine that wrote it (source paths of the exporter)."""
    graphs = [proto.graph, *(f for f in proto.functions)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key not in MACHINE_NODE_METADATA]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def _narrow(proto: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """The graph computing in ``dtype`` as torch does: float16 rounds explicitly after every node."""
    if dtype != "float16" or not fixes.enabled():
        return proto
    try:
        return fixes.round_float16(copy.deepcopy(proto))
    except ValueError as error:
        raise ExportError(f"cannot export this model in float16: {error}; export in float32") from error


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise ExportError("the dynamo exporter needs onnxscript: run `pip install onnxscript`")


def _check_opset(opset: int, exporter: str) -> None:
    low, high = opset_range(exporter)
    if not isinstance(opset, int) or isinstance(opset, bool) or not low <= opset <= high:
        raise ExportError(
            f"opset {opset!r} is not supported by the {exporter} exporter with the installed "
            f"onnxruntime; choose an opset in {low}..{high}"
        )


def _example_input(
    model: torch.nn.Module, given: torch.Tensor | None, dtype: torch.dtype, dynamic_batch: bool
) -> torch.Tensor:
    """The tracing input: the given one or a seeded randn(2, in_features); batch >= 2 when dynamic."""
    if given is None:
        features = getattr(model, "zoo_config", {}).get("in_features")
        if not isinstance(features, int):
            raise ExportError(
                "cannot build an example input: the model has no zoo_config['in_features']; "
                "pass example_input=torch.randn(2, in_features)"
            )
        given = torch.randn(2, features, generator=torch.Generator().manual_seed(0))
    example = given.detach().to(dtype)
    if dynamic_batch and example.shape[0] < 2:
        # Tracing with batch 1 lets the exporters specialise the batch axis to the constant 1.
        example = example.expand(2, *example.shape[1:]).clone()
    return example


@contextlib.contextmanager
def eval_copy(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """The model in eval mode and ``dtype``; the caller's model keeps its mode and dtype."""
    params = [*model.parameters(), *model.buffers()]
    if any(p.is_floating_point() and p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _export(
    model: torch.nn.Module,
    example: torch.Tensor,
    opset: int,
    exporter: str,
    dynamic_batch: bool,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> onnx.ModelProto:
    names = {"input_names": list(input_names), "output_names": list(output_names)}
    try:
        with _quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                return _export_dynamo(model, example, opset, dynamic_batch, names)
            return _export_torchscript(model, example, opset, dynamic_batch, names)
    except ExportError:
        raise
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"the {exporter} exporter failed at opset {opset}: {first_line}") from error


def _export_torchscript(
    model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, names: dict
) -> onnx.ModelProto:
    axes = {name: {0: BATCH_AXIS} for name in names["input_names"] + names["output_names"]}
    buffer = io.BytesIO()
    with fixes.torchscript_symbolics(opset):
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            dynamic_axes=axes if dynamic_batch else None,
            do_constant_folding=True,
            **names,
        )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(
    model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, names: dict
) -> onnx.ModelProto:
    shapes = ({0: torch.export.Dim(BATCH_AXIS)},) if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        dynamic_shapes=shapes,
        custom_translation_table=fixes.dynamo_translations(),
        verbose=False,
        **names,
    )
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' logs, warnings and graph dumps; failures still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _native_stdout_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """torchscript's C++ logger prints the whole graph to stdout when an export fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _validate(
    proto: onnx.ModelProto,
    opset: int,
    dtype: str,
    dynamic_batch: bool,
    batch: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> None:
    """Refuse a model of another opset, an invalid one, a wrong dtype or a fixed batch axis."""
    declared = {entry.domain: entry.version for entry in proto.opset_import}.get("", None)
    if declared != opset:
        raise ExportError(f"the exporter returned opset {declared} instead of {opset}; choose another opset")
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto.graph.CopyFrom(onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True).graph)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the exported model is invalid: {str(error).splitlines()[0]}") from error
    _check_signature(proto.graph.input, list(input_names), "input", dtype, dynamic_batch, batch)
    _check_signature(proto.graph.output, list(output_names), "output", dtype, dynamic_batch, batch)


def _check_signature(
    values: Sequence[onnx.ValueInfoProto], names: list[str], kind: str, dtype: str, dynamic: bool, batch: int
) -> None:
    if [value.name for value in values] != names:
        raise ExportError(f"the model has {kind}s {[v.name for v in values]}, expected {names}")
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type != elem_type:
            raise ExportError(f"{kind} {value.name!r} has ONNX type {tensor.elem_type}, expected {dtype}")
        first = tensor.shape.dim[0] if tensor.shape.dim else None
        if dynamic and (first is None or not first.dim_param):
            raise ExportError(
                f"{kind} {value.name!r} has a fixed batch axis; the model's forward must not "
                "depend on the batch size (or export with dynamic_batch=False)"
            )
        if not dynamic and (first is None or first.dim_value != batch):
            raise ExportError(f"{kind} {value.name!r} does not have the static batch size {batch}")


def _set_metadata(
    proto: onnx.ModelProto, model: torch.nn.Module, *, opset: int, exporter: str, dtype: str, extra: dict[str, str]
) -> None:
    props = {
        "zoo.version": _zoo_version(),
        "zoo.torch_version": torch.__version__,
        "zoo.onnx_version": onnx.__version__,
        "zoo.opset": str(opset),
        "zoo.exporter": exporter,
        "zoo.dtype": dtype,
    }
    if isinstance(getattr(model, "zoo_config", None), dict):
        props["zoo.config"] = json.dumps(model.zoo_config, sort_keys=True)
    if isinstance(getattr(model, "zoo_training", None), dict):
        training = {k: v for k, v in model.zoo_training.items() if k not in MACHINE_TRAINING_FIELDS}
        props["zoo.training"] = json.dumps(training, sort_keys=True)
    props.update({str(key): str(value) for key, value in extra.items()})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)


def _zoo_version() -> str:
    try:
        from zoo import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def _identity_model(opset: int) -> bytes:
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [
        onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    ])
    # IR 8 loads in every onnxruntime this could meet, so only the opset decides.
    opsets = [onnx.helper.make_opsetid("", opset)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
