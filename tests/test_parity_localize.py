"""Where check_parity's localizer (export.parity.localize) puts a failure in the registry's ResNet, whose basic
block ends in an activation module after the residual Add (``act2(out + shortcut(x))``), and names the modules
of a node the exporter fused: a weight of one layer scaled by 1 + 1e-3 must be named at that layer under both
exporters, and every module before it must be compared with the node computing its output (within its bound),
the layer itself at a ratio that measures the change, not the gap to a value before the node's.
"""

from __future__ import annotations

import pathlib
import re

import onnx
import pytest
import torch
from test_parity_conv import with_statistics

import zoo
from bench.variants import scaled_initializer
from export import check_parity, to_onnx

# (the edited node's op, its index among them, the module named): either exporter folds the batch norm after
# the conv into one Conv node, dynamo's optimizer in the norm's scope, torchscript in the conv's
FOLDED = "torch modules 'block1.conv2' (Conv2d) + 'block1.norm2' (BatchNorm), folded into one node by the exporter"
LOCATED = {"head": ("Gemm", 0, "torch module 'head' (Linear)"), "conv": ("Conv", 4, FOLDED)}


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return with_statistics(zoo.create_model("resnet", seed=0, widths=(2, 4), input_shape=(1, 8, 8)))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("layer", list(LOCATED))
def test_a_mutant_is_named_at_its_layer(resnet, layer: str, exporter: str, tmp_path: pathlib.Path) -> None:
    op_type, index, named = LOCATED[layer]
    proto = onnx.load(str(to_onnx(resnet, tmp_path / "resnet.onnx", exporter=exporter)))
    weight = [node for node in proto.graph.node if node.op_type == op_type][index].input[1]
    scaled_initializer(weight, 1 + 1e-3)(proto)
    onnx.save(proto, str(tmp_path / "mutant.onnx"))
    report = check_parity(resnet, tmp_path / "mutant.onnx", strict=False, budget=2**12)
    print(f"LOCATED {layer} {exporter}: {report.culprit}")
    assert not report.ok and report.culprit.startswith("first node out of its bound"), report.culprit
    assert f"the output of {named}" in report.culprit
    # compared with the value the node computes: a change of 1e-3, not the gap to a value before it (1e4 and more)
    assert float(re.search(r"worst element at (\S+) of its worst-case bound", report.culprit)[1]) < 1e4
