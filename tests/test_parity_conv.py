"""Parity for convolutional models written in plain torch: convolutions 1d/2d (groups, depthwise, stride,
padding and its modes, dilation, transposed), batch norm in eval, max, average, adaptive and global pooling,
residual adds, concatenation, dropout in eval, and the registry's cnn, cnn1d (im2col too) and resnet.

Each model is exported with both exporters in float32 and float16; its torchscript export goes through
``parity_run`` (``check_parity``'s verdict, with the float64 reference and both tiers on every probe) and
every other evaluation is judged on the same probes: the dynamo export, onnxruntime at every
optimisation level (ORT_DISABLE_ALL keeps a BatchNormalization node, the others fold it into the
Conv or Gemm weights) and thread count, the highest opsets, the dynamo export without its optimizer
(which keeps BatchNormalization: the exporters fold it at export), OpenVINO and tract where they
compute the function. Mutants (a conv weight or bias, a batch norm's epsilon, scale or running variance,
a pooling window or divisor) are those exports edited with the onnx API, and must fail; a failing conv or
batch norm node names its module. Real torch, onnx and onnxruntime.
"""

from __future__ import annotations

import importlib.util
import pathlib
import time
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import zoo
from bench.variants import LEVELS, initializer, ort_session, runtime_rows
from export import ExportError, check_parity, to_onnx
from export.lowerings.passes import propagate_nan
from export.onnx_export import NAN_DROPPING_OPS
from export.parity import ParityReport, ProbeSet, judge, parity_run
from export.parity.bounds import BoundError, bounded_run
from export.runtime.backends import load_runner

Edit = Callable[[onnx.ModelProto], None]
HIGHEST = {"torchscript": 20, "dynamo": 23}
# Probe input elements per check: every probe value still appears (export.parity.probes), in a few seconds.
BUDGET = 2**14
# Models a runtime computes another function for, and why (the verdict catches it: test_runtime_divisor_differs).
DIFFERENT = {("pools", "openvino"): "OpenVINO divides a ceil_mode window that hangs past the padding by the whole "
                                    "kernel; ONNX, onnxruntime, tract and torch by its elements in the padded input"}


# ---------------------------------------------------------------------------- models, in plain torch


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN, plus the input, then ReLU (the Add joins the second conv's sum)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class Branches(nn.Module):
    """Inception's idea: a 1x1 and a 3x3 convolution of the same input, concatenated along the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(channels, 2, 1)
        self.wide = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.narrow(x), self.wide(x)], dim=1)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv-relu-linear": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)),
                         (1, 8, 8)),
    "conv-bn-gap": (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), (1, 8, 8)),
    "depthwise-separable": (lambda: nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 4, 1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)), (2, 8, 8)),
    "strided-dilated-padded": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(2, 2, 4, padding="same"), nn.ReLU(), nn.ConvTranspose2d(2, 1, 3, stride=2, padding=1),
        nn.Flatten(), nn.Linear(49, 2)), (1, 8, 8)),
    "conv1d": (lambda: nn.Sequential(
        nn.Conv1d(1, 2, 5, padding=2, padding_mode="replicate"), nn.BatchNorm1d(2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(2, 2, 3), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(6, 2)), (1, 16)),
    "pools": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Flatten(), nn.Linear(8, 2)), (1, 8, 8)),
    "linear-bn": (lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)), (4,)),
    "residual": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), BasicBlock(2), nn.AdaptiveAvgPool2d(1),
                                       nn.Flatten(), nn.Linear(2, 2)), (1, 8, 8)),
    "concat-dropout": (lambda: nn.Sequential(Branches(1), nn.ReLU(), nn.Dropout2d(0.2), nn.MaxPool2d(2), nn.Flatten(),
                                             nn.Dropout(0.5), nn.Linear(36, 2)), (1, 6, 6)),
}
NORMED = ["conv-bn-gap", "depthwise-separable", "conv1d", "linear-bn", "residual"]  # a BatchNorm after a conv/linear


def with_statistics(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` in eval mode with seeded running statistics and affine parameters in every batch norm (not 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.eval()


# ---------------------------------------------------------------------------- one model's exports and probes, cached


class Case:
    """One model: its exports (by exporter, dtype, opset) and, per dtype, its probes with their reference."""

    def __init__(self, name: str, model: nn.Module, shape: tuple[int, ...], root: pathlib.Path) -> None:
        self.name, self.model, self.root = name, model, root
        self.example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        self.exports: dict[tuple, pathlib.Path] = {}
        self.checks: dict[str, tuple[ParityReport, ProbeSet, float]] = {}

    def export(self, exporter: str = "torchscript", dtype: str = "float32", opset: int | None = None) -> pathlib.Path:
        key = (exporter, dtype, opset)
        if key not in self.exports:
            path = self.root / f"{self.name}-{exporter}-{dtype}-{opset}.onnx"
            self.exports[key] = to_onnx(self.model, path, example_input=self.example, exporter=exporter, dtype=dtype,
                                        opset=opset)
        return self.exports[key]

    def unoptimized(self) -> pathlib.Path:
        """The dynamo exporter's graph without its optimizer: BatchNormalization kept (both exporters fold it)."""
        path = self.root / f"{self.name}-unoptimized.onnx"
        if not path.exists():
            program = torch.onnx.export(self.model, (self.example,), dynamo=True, optimize=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            onnx.save(propagate_nan(program.model_proto, NAN_DROPPING_OPS), str(path))  # NaN through MaxPool as in our exports
        return path

    def check(self, dtype: str) -> tuple[ParityReport, ProbeSet, float]:
        """parity_run of the torchscript export (check_parity's report), its probe set, and its seconds."""
        if dtype not in self.checks:
            path = self.export("torchscript", dtype)
            start = time.perf_counter()
            report, probes = parity_run(self.model, path, explain=False, budget=BUDGET)
            self.checks[dtype] = (report, probes, time.perf_counter() - start)
        return self.checks[dtype]


class Cases:
    def __init__(self, root: pathlib.Path) -> None:
        self.root, self.cache = root, {}

    def get(self, name: str) -> Case:
        if name not in self.cache:
            factory, shape = MODELS[name]
            torch.manual_seed(0)
            self.cache[name] = Case(name, with_statistics(factory()), shape, self.root)
        return self.cache[name]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    return Cases(tmp_path_factory.mktemp("conv"))


# ---------------------------------------------------------------------------- running and judging


def run(model: onnx.ModelProto | pathlib.Path, x: np.ndarray, **options: object) -> np.ndarray:
    chosen = ort_session(model, **options)
    return chosen.run(None, {chosen.get_inputs()[0].name: x})[0]


def verdict(probes: ProbeSet, actual: np.ndarray, dtype: str = "float32", rows: np.ndarray | None = None):
    """The one output's verdict on every probe (or on ``rows``), as check_parity judges it."""
    if rows is None:
        return judge(["output"], [actual], probes, dtype)[0]
    kept = ProbeSet(probes.batches, [probes.references[0][rows]], [probes.tolerances[0].rows(rows)])
    return judge(["output"], [actual[rows]], kept, dtype)[0]


def runtime_outputs(runtime: str, path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    """The one output of ``runtime`` (OpenVINO, tract) on every row of ``x``, in batches it takes."""
    runner = load_runner(runtime, path)
    return np.concatenate([runner(x[i:i + 4096])[0] for i in range(0, len(x), 4096)])


# ---------------------------------------------------------------------------- every model passes


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_both_exporters_pass(name: str, dtype: str, cases: Cases) -> None:
    case = cases.get(name)
    report, probes, seconds = case.check(dtype)
    dynamo = verdict(probes, run(case.export("dynamo", dtype), probes.inputs), dtype)
    print(f"PARITY {name} {dtype}: check {seconds:.1f} s, {len(probes.inputs)} rows; torchscript worst element at "
          f"{report.worst_statistical:.3g} of its statistical bound, dynamo {dynamo.worst_statistical:.3g}")
    assert report.ok, report.summary()
    assert dynamo.ok, dynamo.describe()


@pytest.mark.parametrize("name", list(MODELS))
def test_honest_evaluations_pass(name: str, cases: Cases) -> None:
    """onnxruntime at every level and 1 or 2 threads on both exports, the highest opsets, BatchNormalization
    kept (unfolded at ORT_DISABLE_ALL, folded by onnxruntime above it), OpenVINO and tract."""
    case = cases.get(name)
    _, probes, _ = case.check("float32")
    x = probes.inputs
    graphs = {exporter: case.export(exporter) for exporter in HIGHEST}
    if name in ("conv-bn-gap", "residual"):
        graphs.update({f"{exporter} opset {opset}": case.export(exporter, opset=opset)
                       for exporter, opset in HIGHEST.items()})
    if name in NORMED:
        graphs["dynamo unoptimized"] = case.unoptimized()
    outcomes = {f"{label} {level}": verdict(probes, run(graph, x, level=level))
                for label, graph in graphs.items() for level in LEVELS}
    outcomes.update({f"torchscript, {n} thread(s)": verdict(probes, run(graphs["torchscript"], x, threads=n))
                     for n in (1, 2)})
    rows = runtime_rows(x)
    for runtime in ("openvino", "tract"):
        if importlib.util.find_spec(runtime) is not None and (name, runtime) not in DIFFERENT:
            outcomes[runtime] = verdict(probes, runtime_outputs(runtime, graphs["torchscript"], x), rows=rows)
    print(f"HONEST {name}: " + ", ".join(f"{label} {v.worst_statistical:.3g}" for label, v in outcomes.items()))
    failing = {label: v.describe() for label, v in outcomes.items() if not v.ok}
    assert not failing, failing


# ---------------------------------------------------------------------------- mutants fail


def _node(proto: onnx.ModelProto, op_type: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in proto.graph.node if n.op_type == op_type][index]


def _scaled(proto: onnx.ModelProto, name: str, factor: float, at: tuple[int, ...] | None = None) -> None:
    """Multiply initializer ``name`` (its largest element, or the one ``at``) by ``factor``."""
    array = numpy_helper.to_array(initializer(proto, name)).astype(np.float64)
    at = np.unravel_index(np.argmax(np.abs(array)), array.shape) if at is None else at
    array[at] *= factor
    dtype = numpy_helper.to_array(initializer(proto, name)).dtype
    initializer(proto, name).CopyFrom(numpy_helper.from_array(array.astype(dtype), name))


def _attribute(proto: onnx.ModelProto, op_type: str, name: str, change: Callable[[float], float],
               index: int = 0) -> None:
    """Change attribute ``name`` of the ``index``-th ``op_type`` node (added with change(0) when absent)."""
    node = _node(proto, op_type, index)
    found = next((a for a in node.attribute if a.name == name), None)
    if found is None:
        node.attribute.append(helper.make_attribute(name, change(0)))
    elif found.type == onnx.AttributeProto.FLOAT:
        found.f = change(found.f)
    else:
        found.i = int(change(found.i))


def _ints(proto: onnx.ModelProto, op_type: str, name: str, values: list[int]) -> None:
    """Set the ints attribute ``name`` of the first ``op_type`` node to ``values`` (a window moved or resized)."""
    next(a for a in _node(proto, op_type).attribute if a.name == name).ints[:] = values


def _conv_weight(proto: onnx.ModelProto) -> None:
    _scaled(proto, _node(proto, "Conv").input[1], 1 + 1e-4)


def _conv_bias(proto: onnx.ModelProto) -> None:
    _scaled(proto, _node(proto, "Conv").input[2], 1 + 1e-4)


MUTANTS: list[tuple[str, str, str, Edit]] = [  # (id, model, export, edit)
    ("conv-weight-x(1+1e-4)", "conv-relu-linear", "torchscript", _conv_weight),
    ("depthwise-weight-x(1+1e-4)", "depthwise-separable", "dynamo", _conv_weight),
    ("conv1d-weight-x(1+1e-4)", "conv1d", "torchscript", _conv_weight),
    ("dilated-weight-x(1+1e-4)", "strided-dilated-padded", "dynamo", _conv_weight),
    ("residual-conv-weight-x(1+1e-4)", "residual", "torchscript",
     lambda p: _scaled(p, _node(p, "Conv", 2).input[1], 1 + 1e-4)),
    ("batch-norm-epsilon-x10", "conv-bn-gap", "unoptimized",
     lambda p: _attribute(p, "BatchNormalization", "epsilon", lambda eps: eps * 10)),
    ("batch-norm-scale-x(1+1e-4)", "conv-bn-gap", "unoptimized",
     lambda p: _scaled(p, _node(p, "BatchNormalization").input[1], 1 + 1e-4)),
    ("batch-norm-1d-epsilon-x10", "linear-bn", "unoptimized",
     lambda p: _attribute(p, "BatchNormalization", "epsilon", lambda eps: eps * 10)),
    ("batch-norm-running-var-x(1+1e-4)", "conv-bn-gap", "unoptimized",
     lambda p: _scaled(p, _node(p, "BatchNormalization").input[4], 1 + 1e-4)),
    ("batch-norm-1d-running-var-x(1+1e-4)", "linear-bn", "unoptimized",
     lambda p: _scaled(p, _node(p, "BatchNormalization").input[4], 1 + 1e-4)),
    ("conv-bias-x(1+1e-4)", "conv-relu-linear", "dynamo", _conv_bias),
    ("conv1d-bias-x(1+1e-4)", "conv1d", "dynamo", _conv_bias),
    ("max-pool-window-2x1", "pools", "torchscript", lambda p: _ints(p, "MaxPool", "kernel_shape", [2, 1])),
    ("avg-pool-window-shifted", "pools", "dynamo", lambda p: _ints(p, "AveragePool", "pads", [2, 2, 0, 0])),
    ("avg-pool-divisor-counts-padding", "pools", "torchscript",
     lambda p: _attribute(p, "AveragePool", "count_include_pad", lambda flag: 1 - flag)),
    ("ceil-mode-avg-pool-divisor-counts-outside", "pools", "dynamo",
     lambda p: _attribute(p, "AveragePool", "count_include_pad", lambda flag: 1 - flag, index=1)),
]


@pytest.mark.parametrize(("name", "source", "edit"), [pytest.param(m, s, e, id=i) for i, m, s, e in MUTANTS])
def test_mutant_fails(name: str, source: str, edit: Edit, cases: Cases) -> None:
    case = cases.get(name)
    _, probes, _ = case.check("float32")
    proto = onnx.load(str(case.unoptimized() if source == "unoptimized" else case.export(source)))
    edit(proto)
    outcome = verdict(probes, run(proto, probes.inputs))
    print(f"MUTANT {name}: {outcome.describe()}")
    assert not outcome.ok


# ---------------------------------------------------------------------------- semantic choices, made explicit


def test_max_pool_judges_nan(cases: Cases) -> None:
    """NaN in a window is NaN out, as torch's max pooling gives (the export keeps it: test_fixes)."""
    report, _, _ = cases.get("pools").check("float32")
    assert report.ok and report.outputs[0].counts["nan"] > 0


def test_runtime_divisor_differs(cases: Cases) -> None:
    """A ceil_mode window that hangs past the padding divides by its elements in the padded input
    (count_include_pad) or in the input, as torch's and ONNX's AveragePool do (onnx/onnx#5276), and a
    window that would start in the right padding is dropped: the rules and both exports mean it
    (test_both_exporters_pass), a divisor flipped fails (the mutants), and so does OpenVINO's whole kernel."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO is not installed")
    case = cases.get("pools")
    _, probes, _ = case.check("float32")
    outcome = verdict(probes, runtime_outputs("openvino", case.export(), probes.inputs), rows=runtime_rows(probes.inputs))
    assert not outcome.ok, DIFFERENT[("pools", "openvino")]


LOCATED = [  # (model, export, edit, the modules the failure names: torchscript folds bn2 into conv2's node)
    ("residual", "torchscript", lambda p: _scaled(p, _node(p, "Conv", 2).input[1], 1 + 1e-3),
     "torch modules '1.conv2' (Conv2d) + '1.bn2' (BatchNorm2d)"),
    ("conv-bn-gap", "unoptimized", lambda p: _attribute(p, "BatchNormalization", "epsilon", lambda eps: eps * 100),
     "torch module '1' (BatchNorm2d)"),
]


@pytest.mark.parametrize(("name", "source", "edit", "module"), LOCATED, ids=["conv", "batch-norm"])
def test_failure_names_its_module(name: str, source: str, edit: Edit, module: str, cases: Cases,
                                  tmp_path: pathlib.Path) -> None:
    case = cases.get(name)
    proto = onnx.load(str(case.unoptimized() if source == "unoptimized" else case.export(source)))
    edit(proto)
    onnx.save(proto, str(tmp_path / "mutant.onnx"))
    report = check_parity(case.model, tmp_path / "mutant.onnx", strict=False, budget=BUDGET)
    print(f"LOCATED {name}: {report.culprit}")
    assert not report.ok and module in report.culprit


def test_adaptive_pool_to_a_size_that_does_not_divide(tmp_path: pathlib.Path) -> None:
    """Windows of unequal sizes: the dynamo exporter writes them as gathers, which pass; torchscript refuses."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(18, 2)).eval()
    example = torch.randn(2, 1, 8, 8)
    with pytest.raises(ExportError, match="not factor of input size"):
        to_onnx(model, tmp_path / "torchscript.onnx", example_input=example)
    report, _ = parity_run(model, to_onnx(model, tmp_path / "dynamo.onnx", example_input=example, exporter="dynamo"),
                           budget=BUDGET)
    assert report.ok, report.summary()


def test_batch_norm_with_batch_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(BoundError, match="batch statistics"):
        bounded_run(model, np.ones((2, 1, 4, 4)), dtype="float32")


# ---------------------------------------------------------------------------- the registry's families


FAMILIES = {  # small, with batch norms that are not the identity (test_model_suite runs the defaults)
    "cnn": {"input_shape": (1, 8, 8)},
    "cnn1d": {"input_shape": (1, 16)},
    "resnet": {"input_shape": (1, 8, 8)},
    "cnn1d-im2col": {"name": "cnn1d", "input_shape": (1, 16), "conv": "im2col_conv"},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_registry_families_pass(family: str, tmp_path: pathlib.Path) -> None:
    config = {"name": family, **FAMILIES[family]}
    model = with_statistics(zoo.create_model(config.pop("name"), seed=0, widths=(2, 4), **config))
    start = time.perf_counter()
    report, probes = parity_run(model, to_onnx(model, tmp_path / "torchscript.onnx"), explain=False, budget=BUDGET)
    seconds = time.perf_counter() - start
    dynamo = verdict(probes, run(to_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo"), probes.inputs))
    print(f"FAMILY {family}: check {seconds:.1f} s; worst element at {report.worst_statistical:.3g} (torchscript), "
          f"{dynamo.worst_statistical:.3g} (dynamo) of its statistical bound")
    assert report.ok, report.summary()
    assert dynamo.ok, dynamo.describe()
