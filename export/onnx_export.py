"""``to_onnx``: export a model to a checked ONNX file whose graph computes torch's function."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import inspect
import io
import json
import logging
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from export import lowerings
from export.lowerings import adapters
from export.options import EXPORTERS, TRACE_BATCH
from zoo.errors import ZooError
from zoo.files import write_atomic
from zoo.models import example_shape, input_shape_of

DTYPES = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_OPSET = 17
MIN_OPSET = 13
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"  # the name of an input axis the model takes at any length (None in its input_shape)
# Metadata key: the traced example's shape after the batch axis (JSON), where the parity check probes
# an axis that takes any size besides other sizes.
SAMPLE_SHAPE_KEY = "zoo.sample_shape"
# The dynamo exporter's translations are written for this opset; below it, it falls back to the
# version converter and silently keeps this opset when that fails.
DYNAMO_MIN_OPSET = 18
# Maxima over windows or axes that onnxruntime's CPU kernels compute as a < b ? b : a, dropping NaN.
NAN_DROPPING_OPS = frozenset({"MaxPool", "ReduceMax"})


class ExportError(ZooError):
    """The model could not be exported to a valid ONNX file; the message says why and what to do."""


def opset_range(exporter: str = "torchscript") -> tuple[int, int]:
    """The (lowest, highest) opset that ``exporter`` and the installed onnxruntime both support."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    from torch.onnx import _constants  # private: the only place torch states its exporters' highest opset

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


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How a model is exported: one checked, immutable set for to_onnx, write_onnx, write_bundle and the CLI.

    ``opset`` None means ``default_opset(exporter)``; ``compute`` None means ``dtype``, node by node,
    or on request ``"float64"`` with one rounding at each output (runtimes without float64 kernels,
    such as OpenVINO's CPU plugin and tract, refuse or narrow it). ``dynamic_axes`` are input axes
    besides the batch (axis 0) that the graph takes at any size, as the model's ``zoo_meta``
    input_shape gives with None. ``metadata`` is added to the model's ``metadata_props``. Raises
    ExportError for a value that cannot be exported here.
    """

    opset: int | None = None
    exporter: str = "torchscript"
    dtype: str = "float32"
    compute: str | None = None
    dynamic_batch: bool = True
    batch_size: int = TRACE_BATCH  # rows of the traced example input: the fixed batch without dynamic_batch
    dynamic_axes: tuple[int, ...] = ()
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("output",)
    metadata: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("input_names", "output_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        axes = tuple(self.dynamic_axes)
        if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in axes):
            raise ExportError(f"dynamic_axes are input axes after the batch axis (1, 2, ...), got {self.dynamic_axes!r}")
        object.__setattr__(self, "dynamic_axes", tuple(sorted(set(axes))))
        pairs = self.metadata.items() if isinstance(self.metadata, dict) else self.metadata
        object.__setattr__(self, "metadata", tuple(sorted((str(k), str(v)) for k, v in pairs)))
        if self.exporter not in EXPORTERS:
            raise ExportError(f"exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        if self.exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
            raise ExportError("the dynamo exporter needs onnxscript: run `pip install onnxscript`")
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.compute not in (None, "float64", self.dtype):
            raise ExportError(
                f"compute must be {self.dtype!r} or 'float64' for a {self.dtype} export, got {self.compute!r}"
            )
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ExportError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        low, high = opset_range(self.exporter)
        if self.opset is not None and (
            not isinstance(self.opset, int) or isinstance(self.opset, bool) or not low <= self.opset <= high
        ):
            raise ExportError(
                f"opset {self.opset!r} is not supported by the {self.exporter} exporter with the installed "
                f"onnxruntime; choose an opset in {low}..{high}"
            )

    @property
    def chosen_opset(self) -> int:
        """The opset exported: the one asked for, else the exporter's default."""
        return default_opset(self.exporter) if self.opset is None else self.opset

    @property
    def chosen_compute(self) -> str:
        """How the graph computes: the one asked for, else in ``dtype`` (always ``dtype`` without lowerings)."""
        return (self.compute or self.dtype) if lowerings.enabled() else self.dtype

    def replace(self, **changes: Any) -> ExportOptions:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


def export_options(options: ExportOptions | None = None, **changes: Any) -> ExportOptions:
    """``options`` (default ExportOptions()) with keyword ``changes``: what to_onnx(..., opset=18) means."""
    options = options or ExportOptions()
    return options.replace(**changes) if changes else options


def to_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    example_input: torch.Tensor | None = None,
    **changes: Any,
) -> pathlib.Path:
    """Export ``model`` to a checked ONNX file at ``path`` (written atomically) and return the path.

    ``options`` (an ExportOptions, or its fields as keywords) say how. The graph is exported in
    eval mode with the installed lowerings (``export.lowerings``) applied, checked with
    ``onnx.checker`` (full check) and shape inference, and must declare exactly the opset, the
    dtype and, with ``dynamic_batch``, a symbolic batch axis on every input and output, and a
    symbolic input axis for each of ``options.dynamic_axes``. ``example_input`` is what is traced,
    by default a seeded randn of the model's ``zoo_meta`` input shape.
    ``metadata_props`` hold ``zoo.config``, ``zoo.meta`` and ``zoo.training`` (JSON, when the model carries
    ``zoo_config`` / ``zoo_meta`` / ``zoo_training``; no timings or devices), ``zoo.version``,
    ``zoo.torch_version``, ``zoo.onnx_version``, ``zoo.opset``, ``zoo.exporter``, ``zoo.dtype``,
    ``zoo.sample_shape`` (the example's shape after the batch axis, JSON), ``zoo.compute`` and
    ``options.metadata``: the same model exported twice gives the same bytes,
    on any machine with the same packages.
    Raises ``ExportError`` with the reason and the next step when any of that fails.
    """
    options = export_options(options, **changes)
    dtype, compute = options.dtype, options.chosen_compute
    example = _example_input(model, example_input, DTYPES[dtype], options)
    axes = dynamic_axes(model, options.dynamic_batch, options.dynamic_axes)
    beyond = [axis for axis in axes if axis >= example.dim()]
    if beyond:
        raise ExportError(f"dynamic axis {beyond[0]} is not an axis of the example input of shape {list(example.shape)}")
    with eval_copy(model, DTYPES[dtype]) as export_model:
        proto = _export(export_model, example, options, axes)
    proto = _nan_kept(proto)
    proto = _computing_in_float64(proto) if compute == "float64" else _narrow(proto, dtype)
    _strip_machine_facts(proto)
    free = [axis for axis in axes if axis]
    _validate(proto, options, example.shape[0], free)
    _runs_at_other_sizes(proto, example, free)
    _set_metadata(proto, model, options, example)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, proto.SerializeToString())


def default_opset(exporter: str = "torchscript") -> int:
    """The opset used when none is asked for: 17, or the exporter's lowest when that is higher (dynamo: 18)."""
    low, high = opset_range(exporter)
    return min(max(DEFAULT_OPSET, low), high)


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


def _computing_in_float64(proto: onnx.ModelProto) -> onnx.ModelProto:
    from export.lowerings.passes import compute_in_float64  # onnx_ir loads only where a pass runs

    return compute_in_float64(proto)


def _nan_kept(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every max pooling NaN where its window holds a NaN, as torch's (export.lowerings.passes.PropagateNaNPass)."""
    if not lowerings.enabled() or not any(node.op_type in NAN_DROPPING_OPS for node in proto.graph.node):
        return proto
    from export.lowerings.passes import propagate_nan  # onnx_ir loads only where a pass runs

    return propagate_nan(proto, NAN_DROPPING_OPS)


def _narrow(proto: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """The graph computing in ``dtype`` as torch does: float16 rounds explicitly after every node."""
    if dtype != "float16" or not lowerings.enabled():
        return proto
    try:
        from export.lowerings.passes import round_float16  # onnx_ir loads only where a pass runs

        return round_float16(copy.deepcopy(proto))
    except ValueError as error:
        raise ExportError(f"cannot export this model in float16: {error}; export in float32") from error


def _example_input(
    model: torch.nn.Module, given: torch.Tensor | None, dtype: torch.dtype, options: ExportOptions
) -> torch.Tensor:
    """The tracing input: the given one or a seeded randn of ``options.batch_size`` samples of the model's
    input shape (``zoo.models.input_shape_of``; an any-length axis ``zoo.models.EXAMPLE_LENGTH`` long);
    batch >= 2 when dynamic."""
    if given is None:
        shape = input_shape_of(model)
        if not shape:
            raise ExportError(
                "cannot build an example input: the model has neither zoo_meta['input_shape'] nor "
                f"zoo_config['in_features']; pass example_input=torch.randn({options.batch_size}, *sample_shape)"
            )
        given = seeded_example(shape, options.batch_size)
    example = given.detach().to(dtype)
    if options.dynamic_batch and example.shape[0] < 2:
        # Tracing with batch 1 lets the exporters specialise the batch axis to the constant 1.
        example = example.expand(2, *example.shape[1:]).clone()
    return example


def seeded_example(shape: Sequence[int | None], batch: int = TRACE_BATCH) -> torch.Tensor:
    """A traceable example: ``batch`` seeded N(0, 1) samples of ``shape`` (None: ``zoo.models.EXAMPLE_LENGTH`` long)."""
    return torch.randn(example_shape(list(shape), batch), generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def eval_copy(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """The model in eval mode and ``dtype``, with torch's attention fast path off; the caller's model keeps
    its mode and dtype.

    In eval, nn.MultiheadAttention and nn.TransformerEncoderLayer otherwise run fused kernels (and nested
    tensors) that no exporter lowers and the parity pass cannot judge; off, they run the same function
    op by op. The export, the parity reference and torch eager all run inside this context.
    """
    params = [*model.parameters(), *model.buffers()]
    if any(p.is_floating_point() and p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    modes = {module: module.training for module in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training


def dynamic_axes(model: torch.nn.Module, dynamic_batch: bool = True, extra: Sequence[int] = ()) -> dict[int, str]:
    """The input axes exported at any size, by name: the batch (when ``dynamic_batch``), each axis that
    ``model.zoo_meta['input_shape']`` gives as None and each of ``extra`` (``sequence``; ``sequence1``,
    ``sequence2``... for several)."""
    shape = input_shape_of(model) or []
    free = sorted({axis + 1 for axis, size in enumerate(shape) if size is None} | set(extra))
    names = [SEQUENCE_AXIS] if len(free) == 1 else [f"{SEQUENCE_AXIS}{n}" for n in range(1, len(free) + 1)]
    return {**({0: BATCH_AXIS} if dynamic_batch else {}), **dict(zip(free, names))}


def _export(
    model: torch.nn.Module, example: torch.Tensor, options: ExportOptions, axes: dict[int, str]
) -> onnx.ModelProto:
    chosen = lowerings.active()
    try:
        with _quiet_exporter(), torch.no_grad():
            if options.exporter == "dynamo":
                return _export_dynamo(model, example, options, chosen, axes)
            return _export_torchscript(model, example, options, chosen, axes)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(_failure(error, options)) from error


# How each exporter says it has no lowering for an op (torchscript, then dynamo).
_UNSUPPORTED = (
    re.compile(r"Exporting the operator '(?:aten::)?(\w+)' to ONNX opset version \d+ is not supported"),
    re.compile(r"No ONNX function found for <OpOverload\(op='(?:aten|prims)\.(\w+)'"),
)


def _failure(error: Exception, options: ExportOptions) -> str:
    """The exporter's first line, and for an op without a lowering, how to add one."""
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    message = f"the {options.exporter} exporter failed at opset {options.chosen_opset}: {first_line}"
    chain = [text, *(str(cause) for cause in _causes(error))]
    missing = next((m.group(1) for pattern in _UNSUPPORTED for part in chain for m in [pattern.search(part)] if m), None)
    if missing is None:
        return message
    problem = lowerings.installed().problems.get(missing)
    if problem:
        return f"{message}; its lowering is installed but unusable: {problem}"
    return (
        f"{message}; no lowering for aten::{missing} is installed: write one with "
        f"@export.lowerings.lowering({missing!r}) and declare it under `zoo.onnx` in your package's setup.cfg "
        "(README: Writing a plugin)"
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    cause = error.__cause__
    while cause is not None:
        yield cause
        cause = cause.__cause__


def _export_torchscript(
    model: torch.nn.Module,
    example: torch.Tensor,
    options: ExportOptions,
    chosen: Sequence[lowerings.Lowering],
    axes: dict[int, str],
) -> onnx.ModelProto:
    names = _names(options)
    batch = {0: BATCH_AXIS} if options.dynamic_batch else {}
    dynamic = {**{name: axes for name in options.input_names}, **{name: batch for name in options.output_names}}
    buffer = io.BytesIO()
    with adapters.torchscript_symbolics(chosen, options.chosen_opset), _forward_of_inputs_only(model):
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=options.chosen_opset,
            dynamic_axes={name: value for name, value in dynamic.items() if value} or None,
            do_constant_folding=True,
            **names,
        )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _forward_of_inputs_only(model: torch.nn.Module) -> Iterator[None]:
    """Let the torchscript exporter see ``forward(*inputs)`` alone while it traces ``model``.

    It appends the default of every forward parameter the example does not give to the traced inputs,
    where a flag such as nn.TransformerEncoderLayer's ``is_causal=False`` becomes a tensor that
    torch.nn.functional then refuses. The module keeps its names, so node scopes are unchanged.
    """
    parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    if not any(p.default is not p.empty for p in parameters):
        yield
        return
    forward, own = model.forward, vars(model).get("forward")
    model.forward = lambda *inputs: forward(*inputs)
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _export_dynamo(
    model: torch.nn.Module,
    example: torch.Tensor,
    options: ExportOptions,
    chosen: Sequence[lowerings.Lowering],
    axes: dict[int, str],
) -> onnx.ModelProto:
    shapes = ({axis: torch.export.Dim(name) for axis, name in axes.items()},) if axes else None
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=options.chosen_opset,
        dynamic_shapes=shapes,
        custom_translation_table=adapters.dynamo_translations(chosen),
        verbose=False,
        **_names(options),
    )
    return program.model_proto


def _names(options: ExportOptions) -> dict[str, list[str]]:
    return {"input_names": list(options.input_names), "output_names": list(options.output_names)}


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


def _validate(proto: onnx.ModelProto, options: ExportOptions, batch: int, free: Sequence[int] = ()) -> None:
    """Refuse a model of another opset, an invalid one, a wrong dtype, a fixed batch axis or ``free`` axis."""
    declared = {entry.domain: entry.version for entry in proto.opset_import}.get("", None)
    if declared != options.chosen_opset:
        raise ExportError(
            f"the exporter returned opset {declared} instead of {options.chosen_opset}; choose another opset"
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto.graph.CopyFrom(onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True).graph)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the exported model is invalid: {str(error).splitlines()[0]}") from error
    for values, names, kind in ((proto.graph.input, options.input_names, "input"),
                                (proto.graph.output, options.output_names, "output")):
        _check_signature(values, list(names), kind, options.dtype, options.dynamic_batch, batch)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [axis for axis in free if not dims[axis].dim_param]
    if fixed:
        raise ExportError(f"input axis {fixed[0]} was exported at the fixed size {dims[fixed[0]].dim_value}; the "
                          "model's forward must not depend on that axis's size (or do not export it as dynamic)")


def _runs_at_other_sizes(proto: onnx.ModelProto, example: torch.Tensor, free: Sequence[int]) -> None:
    """Refuse a graph that declares ``free`` input axes of any size but fails at another size (an exporter that
    traced a size into a Reshape: torchscript does with nn.MultiheadAttention)."""
    if not free:
        return
    import onnxruntime  # only the exports with a free axis beyond the batch run the graph once

    shape = [size + 3 if axis in free else size for axis, size in enumerate(example.shape)]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(example.dtype).numpy()
    try:
        quiet = onnxruntime.SessionOptions()
        quiet.log_severity_level = 4  # the failure is reported below, once
        session = onnxruntime.InferenceSession(proto.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
        session.run(None, {proto.graph.input[0].name: x})
    except Exception as error:  # onnxruntime raises its own exception types, with no public base class
        first = str(error).splitlines()[0][:300]
        raise ExportError(f"the exported graph declares input axes {list(free)} of any size but fails at shape "
                          f"{shape} ({first}): the exporter fixed a size the model reads from its input; export "
                          "with exporter='dynamo', or without those dynamic axes") from error


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


def _set_metadata(proto: onnx.ModelProto, model: torch.nn.Module, options: ExportOptions,
                  example: torch.Tensor) -> None:
    props = {
        "zoo.version": _zoo_version(),
        "zoo.torch_version": torch.__version__,
        "zoo.onnx_version": onnx.__version__,
        "zoo.opset": str(options.chosen_opset),
        "zoo.exporter": options.exporter,
        "zoo.dtype": options.dtype,
        SAMPLE_SHAPE_KEY: json.dumps(list(example.shape[1:])),
    }
    if isinstance(getattr(model, "zoo_config", None), dict):
        props["zoo.config"] = json.dumps(model.zoo_config, sort_keys=True)
    if isinstance(getattr(model, "zoo_meta", None), dict):
        props["zoo.meta"] = json.dumps(model.zoo_meta, sort_keys=True)  # the task and input: what `zoo predict` prints
    if isinstance(getattr(model, "zoo_training", None), dict):
        training = {k: v for k, v in model.zoo_training.items() if k not in MACHINE_TRAINING_FIELDS}
        props["zoo.training"] = json.dumps(training, sort_keys=True)
    props.update({"zoo.compute": options.chosen_compute, **dict(options.metadata)})
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
