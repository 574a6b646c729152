"""The only parity excuses: inputs where torch eager itself is mathematically wrong.

Each entry names a torch module class (the plugin's implementation), the non-finite or
overflowing inputs where torch returns a wrong value, and the true limit. During a parity check
the torch reference is corrected at exactly those inputs (a forward hook on the module), so the
ONNX model must produce the mathematically right value there and torch's value everywhere else.
tests/test_parity.py shows both sides of every entry: torch really returns the wrong value, and
the exported model returns the right one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Excuse:
    """At ``inputs`` torch returns ``torch_gives`` where the true value is ``truth``."""

    module: type[torch.nn.Module]
    plugin: str
    inputs: str
    torch_gives: str
    truth: str
    why: str
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input, torch output) -> truth
    examples: tuple[float, ...]  # float32 inputs where torch is wrong (tests show both sides)

    def describe(self) -> str:
        """One line for parity reports."""
        return f"{self.plugin}: at {self.inputs} torch gives {self.torch_gives}, the true value is {self.truth}"


def _gelu_truth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where((x > 0) & ~torch.isfinite(y), x, y)


def _hardswish_truth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x) & (x >= 3) & torch.isinf(y), x, y)


EXCUSES: tuple[Excuse, ...] = (
    Excuse(
        torch.nn.GELU, "gelu", "x = +inf and finite x > 1.7e38 (float32, tensors of 2+ elements)",
        "NaN at +inf, +inf above max/2", "x (GELU(x) = x * Phi(x) and Phi(x) = 1 in float32 beyond 6)",
        "torch's vectorised float32 kernel multiplies before halving (x * (1 + erf) overflows) and its "
        "erf path returns NaN at +inf; a one-element tensor takes the scalar path and gets it right",
        _gelu_truth,
        (float("inf"), 2e38, 3e38, float(torch.finfo(torch.float32).max)),
    ),
    Excuse(
        torch.nn.Hardswish, "hardswish", "finite x > max/6 = 5.7e37 (float32)", "+inf",
        "x (hardswish(x) = x for x >= 3)",
        "torch computes x * clamp(x + 3, 0, 6) / 6, and x * 6 overflows before the division",
        _hardswish_truth,
        (6e37, 1e38, 3e38, float(torch.finfo(torch.float32).max)),
    ),
)


def excuses_for(model: torch.nn.Module) -> list[Excuse]:
    """The excuses that apply to some submodule of ``model``."""
    return [e for e in EXCUSES if any(isinstance(m, e.module) for m in model.modules())]


@contextlib.contextmanager
def corrected(model: torch.nn.Module) -> Iterator[list[Excuse]]:
    """Within this block the model's excused modules return the true limits at their inputs."""
    handles = []
    used = excuses_for(model)
    for excuse in used:
        for module in model.modules():
            if isinstance(module, excuse.module):
                handles.append(module.register_forward_hook(_hook(excuse)))
    try:
        yield used
    finally:
        for handle in handles:
            handle.remove()


def _hook(excuse: Excuse) -> Callable:
    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return excuse.correct(inputs[0], output)

    return hook
