"""Every registered model, as timm tests its zoo: forward, backward, config round trip, eval determinism,
export with both exporters and dynamic axes. Each model is read through its zoo_meta, never by name.

The models run with their defaults; VARIANTS add one model per part no default uses, so every
registered conv, norm and pool is built, run backward and exported by both exporters here.
"""

from __future__ import annotations

import copy
from typing import Any

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import zoo
from export import check_parity, to_onnx
from export.onnx_export import dynamic_axes
from zoo.models import NAMED_PARTS, example_shape, listed_input_shape

VARIANTS = [
    ("cnn", {"conv": "param_conv", "norm": "group_norm", "pool": "avg_pool", "global_pool": "global_max_pool"}),
    ("cnn1d", {"conv": "im2col_conv", "norm": "layer_norm", "activation": "gelu"}),  # F.unfold, on images of height 1
]
CASES = [(name, {}) for name in zoo.list_models()] + VARIANTS
# Sizes other than the example's (batch 2, any-length axes EXAMPLE_LENGTH) that the exports must take.
OTHER_SIZES = [(1, 2), (5, 7)]
# Probe input elements per export: every probe value still appears (export.parity.probes), in seconds.
PARITY_BUDGET = 2**13


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = case
    return "-".join([name, *(str(value) for value in kwargs.values())])


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def model(request) -> nn.Module:
    name, kwargs = request.param
    return zoo.create_model(name, seed=0, **kwargs)


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported(request, model, tmp_path_factory) -> tuple[nn.Module, onnxruntime.InferenceSession, onnx.ModelProto, Any]:
    """The model as exported (a copy: training elsewhere moves its running statistics), its session, graph and path."""
    frozen = copy.deepcopy(model).eval()
    path = to_onnx(frozen, tmp_path_factory.mktemp("suite") / "model.onnx", exporter=request.param)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return frozen, session, onnx.load(path), path


def batch(model: nn.Module, size: int = 3, length: int = 4, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch of ``size`` samples, any-length axes ``length`` long."""
    shape = example_shape(model.zoo_meta["input_shape"], size, length)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def output_shape(model: nn.Module, size: int, length: int) -> tuple[int, ...]:
    """What the model's task says its output is: logits per class (per position), else out_features columns."""
    meta = model.zoo_meta
    if meta["task"] == "classification":
        return size, meta["classes"]
    if meta["task"] == "sequence_classification":
        return size, length, meta["classes"]
    return size, model.zoo_config.get("out_features", 1)


def test_forward_gives_the_tasks_shape_and_finite_values(model):
    for size, length in [(3, 4), *OTHER_SIZES]:
        with torch.no_grad():
            y = model.eval()(batch(model, size, length))
        assert y.shape == output_shape(model, size, length) and torch.isfinite(y).all()


def test_backward_reaches_every_parameter(model):
    model.train()
    model.zero_grad()
    model(batch(model)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    model.zero_grad()
    assert not missing


def test_config_rebuilds_the_same_model_and_weights(model):
    rebuilt = zoo.create_model(**model.zoo_config)
    assert rebuilt.zoo_config == model.zoo_config and rebuilt.zoo_meta == model.zoo_meta
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    # Forward and backward passes leave the parameters as built (running statistics may have moved).
    pairs = zip(rebuilt.named_parameters(), model.named_parameters())
    assert all(name == other and torch.equal(a, b) for (name, a), (other, b) in pairs)


def test_eval_is_deterministic_and_each_sample_its_own(model):
    x = batch(model, 4)
    with torch.no_grad():
        first, second = model.eval()(x), model(x)
        alone = model(x[1:2])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone[0], first[1], rtol=1e-5, atol=1e-6)


def test_zoo_list_reads_the_input_shape_the_model_has(model):
    source = dict(zoo.models.sources())[model.zoo_config["name"]][0]
    assert listed_input_shape(source.defaults()) == zoo.create_model(model.zoo_config["name"]).zoo_meta["input_shape"]


def test_exports_run_in_onnxruntime_at_other_sizes(exported):
    model, session, proto, _ = exported
    names = dynamic_axes(model)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [names.get(axis, size) for axis, size in enumerate(example_shape(model.zoo_meta["input_shape"]))]
    for size, length in OTHER_SIZES:
        got = session.run(None, {"input": batch(model, size, length, seed=1).numpy()})[0]
        assert got.shape == output_shape(model, size, length)


def test_exports_pass_parity(exported):
    """check_parity on probes of several batch sizes and sequence lengths: every registered model's ops have rules."""
    model, _, _, path = exported
    report = check_parity(model, path, strict=False, explain=False, budget=PARITY_BUDGET)
    assert report.ok, report.summary()


def test_every_registered_part_is_in_the_suite():
    used = {(kind, value if isinstance(value, str) else value["name"])
            for name, kwargs in CASES for key, value in zoo.create_model(name, **kwargs).zoo_config.items()
            if (kind := NAMED_PARTS.get(key)) and value is not None}
    every = {(kind, name) for kind in ("convs", "norms", "pools") for name in zoo.registries[kind].names()}
    assert every <= used, f"add a VARIANT using {sorted(every - used)}"
