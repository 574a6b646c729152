"""Where check_parity's localizer (export.parity.localize) puts a failure in the registry's ResNet, whose basic
block ends in an activation module after the residual Add (``act2(out + shortcut(x))``), and names the modules
of a node the exporter fused: a weight of one layer scaled by 1 + 1e-3 must be named at that layer under both
exporters, and every module before it must be compared with the node computing its output (within its bound).
"""

from __future__ import annotations

import pathlib

import onnx
import pytest
import torch
from test_parity_conv import with_statistics

import zoo
from bench.variants import scaled_initializer
from export import check_parity, to_onnx

# (the edited node's op, its index among them, the module named; dynamo's optimizer writes a conv and the batch
# norm after it as one Conv in the norm's scope, torchscript in the conv's, which check_parity tells by value)
LOCATED = {
    "head": ("Gemm", 0, {"torchscript": "torch module 'head' (Linear)", "dynamo": "torch module 'head' (Linear)"}),
    "conv": ("Conv", 4, {"torchscript": "torch module 'block1.conv2' (Conv2d)",
                         "dynamo": "torch modules 'block1.conv2' (Conv2d) + 'block1.norm2' (BatchNorm), folded into "
                                   "one node by the exporter (FuseBatchNormIntoConv"}),
}


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
    assert f"the output of {named[exporter]}" in report.culprit
