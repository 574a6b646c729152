"""Roundings that many values share, and the sums after them that add them coherently.

A group norm's mean and variance round once per row, and that rounding moves every value of the row. A
convolution with weights of one sign and a global pool add it up coherently where they average independent
roundings, so the bound carries it signed through the model (``norm.Drawn``). Each evaluation here is honest,
and the check flagged the first three before (at 3.3 to 6.2 of the statistical bound); a kernel that errs
with the same sign over whole intervals (onnxruntime's Mish averages 1.7 ulps high on [-4, -1]) passes too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from parity_judging import Judged, passed
from parity_models import seeded
from torch import nn

from bench.variants import scaled_initializer
from export.parity.bounds.core import UNIT

SIZE = 24  # a global pool over 576 positions


class Smoothed(nn.Module):
    """conv - group norm (rows whose mean is 10 times their deviation) - activation - a conv and a head with
    weights of one sign (a blur, a sum of evidence) - a global pool."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.norm = nn.GroupNorm(4, 16)
        self.act = activation
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.conv1.bias.fill_(10.0)
            self.conv2.weight.abs_()
            self.head.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv2(self.act(self.norm(self.conv1(x))))).flatten(1))


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict[str, Judged]:
    example = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return {name: Judged(seeded(lambda act=act: Smoothed(act)), example, tmp_path_factory.mktemp(name), budget=2**14)
            for name, act in (("identity", nn.Identity()), ("mish", nn.Mish()))}


def float32_run(model: nn.Module, hooks: dict[str, object]) -> object:
    """The model in float32 torch, with the modules named in ``hooks`` computed as their hook says."""
    model = copy.deepcopy(model)
    for name, hook in hooks.items():
        model.get_submodule(name).register_forward_hook(hook)

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [model(torch.from_numpy(x)).numpy()]
    return run


def one_pass(module: nn.GroupNorm, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Group norm with each row's variance as E[x^2] - mean^2, in float32 (onnxruntime's LayerNormalization way)."""
    x = inputs[0]
    rows = x.reshape(len(x), module.num_groups, -1)
    mean = rows.sum(-1, keepdim=True) / rows.shape[-1]
    var = (rows * rows).sum(-1, keepdim=True) / rows.shape[-1] - mean * mean
    y = ((rows - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape)
    return y * module.weight.reshape(1, -1, 1, 1) + module.bias.reshape(1, -1, 1, 1)


def biased_mish(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Mish 1.5 ulps high everywhere, rounded once to float32: a kernel within a few ulps whose error keeps its sign
    (onnxruntime's Mish averages 1.7 ulps high on [-4, -1])."""
    exact = nn.functional.mish(inputs[0].double())
    return (exact * (1 + 1.5 * UNIT["float32"])).float()


@pytest.mark.parametrize(("name", "hooks"), [
    ("identity", {}),
    ("identity", {"norm": one_pass}),
    ("mish", {}),
    ("mish", {"act": biased_mish}),
], ids=["torch-float32", "one-pass-group-norm", "torch-float32-mish", "biased-mish"])
def test_honest_float32_evaluations_pass(judged, name, hooks):
    model = judged[name]
    verdicts = model.verdicts(float32_run(model.model, hooks), "float32")
    assert passed(verdicts), [v.describe() for v in verdicts]


@pytest.mark.parametrize("name", ["identity", "mish"])
def test_onnxruntime_passes(judged, name):
    """Before the norms' statistics were carried signed, onnxruntime read 6.2 of the statistical bound here."""
    report = judged[name].report("torchscript", "float32")
    assert report.ok, report.explain()


@pytest.mark.parametrize("weight", ["conv2.weight", "conv2.bias", "head.weight"])
def test_a_wrong_weight_still_fails(judged, weight):
    """A weight after the norm 1e-4 off: 2 to 3.4 of the statistical bound, where honest evaluations reach 0.12.
    (One of conv1's moves each row's deviations by a zero-mean pattern that the norm and the global pool take out.)"""
    assert not passed(judged["identity"].mutant(scaled_initializer(weight, 1 + 1e-4)))
