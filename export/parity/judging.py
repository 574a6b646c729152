"""Probes with their float64 reference and tolerance, and the judgement of a runtime's outputs on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export.parity.probes import Probe
from export.runtime.compare import (
    OutputVerdict,
    Tolerance,
    batch_slices,
    compare_output,
    locate_batch,
    stack_batches,
)


@dataclass
class ProbeSet:
    """The probe batches of one model and, stacked (``stack_batches``), their float64 reference and tolerance
    per output."""

    batches: list[Probe]
    references: list[np.ndarray]  # per output: every batch's float64 value, stacked
    tolerances: list[Tolerance]
    shapes: list[list[tuple[int, ...]]] = field(default_factory=list)  # per output, each batch's; [] stacked by rows

    @classmethod
    def of(cls, batches: list[Probe], values: list[list[np.ndarray]], bounds: list[list[Tolerance]]) -> ProbeSet:
        """A probe set from each batch's reference and tolerance per output."""
        per_output = list(zip(*values))
        return cls(batches, [stack_batches(parts) for parts in per_output],
                   [Tolerance.stack(parts) for parts in zip(*bounds)],
                   [[part.shape for part in parts] for parts in per_output])

    @property
    def inputs(self) -> np.ndarray:
        """Every probe row, stacked (all batches hold samples of one shape)."""
        if len({p.data.shape[1:] for p in self.batches}) > 1:
            raise ValueError("the probe batches hold samples of several shapes; read them from .batches")
        return np.concatenate([p.data for p in self.batches])

    def stack(self, per_batch: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Each batch's outputs (one list per batch) as one array per output, stacked as the references are."""
        return [stack_batches(parts) for parts in zip(*per_batch)]

    def piece(self, output: int, batch: int) -> tuple[np.ndarray, Tolerance]:
        """One batch's reference and tolerance of one output, in the batch's own shape."""
        shapes = self._shapes(output)
        where, shape = batch_slices(shapes)[batch], shapes[batch]
        tolerance = self.tolerances[output].rows(where)
        return self.references[output][where].reshape(shape), Tolerance(
            *(getattr(tolerance, f).reshape(shape) for f in ("bound", "spread", "allowance")))

    def locate(self, output: int, index: list[int]) -> tuple[Probe, int]:
        """The probe batch and row of an element of a stacked output."""
        batch, row = locate_batch(self._shapes(output), index)
        return self.batches[batch], row

    def _shapes(self, output: int) -> list[tuple[int, ...]]:
        if self.shapes:
            return self.shapes[output]
        rest = self.references[output].shape[1:]
        return [(p.batch, *rest) for p in self.batches]


def judge(names: list[str], outputs: list[np.ndarray], probe_set: ProbeSet, dtype: str) -> list[OutputVerdict]:
    """Each output (stacked as ``probe_set.stack`` does) against its reference and tolerance (``export.runtime.compare``)."""
    return [compare_output(name, actual, reference, tolerance, dtype=dtype)
            for name, actual, reference, tolerance in zip(names, outputs, probe_set.references, probe_set.tolerances)]


def worst_row(outputs: list[OutputVerdict], probe_set: ProbeSet) -> tuple[Probe, int] | None:
    """The probe batch and row of the worst element of the first failing output, or None when all pass."""
    bad = next((k for k, o in enumerate(outputs) if not o.ok and o.worst), None)
    return None if bad is None else probe_set.locate(bad, outputs[bad].worst.index)
