"""The rows of a `zoo run`: which rows there are (asked of the registries) and what each one records.

Every model family the run trains is listed once in ``FAMILIES`` with the datasets it suits and the
registry it takes one row per entry of: the course notes' regression once per registered linear
layer, one MLP per registered activation (and per alias that changes the function, like gelu_tanh).
A plugin that adds a layer or an activation adds a row, with no change here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import zoo
from zoo.errors import BadArgumentsError

# The course notes' printed (w, b) per layer after their 5 epochs; the truth is w = 10, b = 5. Their
# three layers come first, in the notes' order; any other registered layer follows by name.
NOTES_PUBLISHED = {"einsum_linear": (9.97, 8.1), "param_linear": (9.96, 9.0), "linear": (9.95, 8.7)}


def layer_names() -> list[str]:
    """Every registered linear layer: the notes' three in the notes' order, then the others by name."""
    notes = list(NOTES_PUBLISHED)
    return sorted(zoo.layers.names(), key=lambda name: (notes.index(name) if name in notes else len(notes), name))


def activation_names() -> list[str]:
    """Every registered activation, then each alias that changes the function (e.g. gelu_tanh)."""
    from zoo.plots import activation_specs

    return activation_specs()


@dataclasses.dataclass(frozen=True)
class Family:
    """One model trained once per entry of a registry, on each dataset it suits."""

    prefix: str  # row names are "<prefix>-<entry>", plus "-<dataset>" when it suits more than one
    model: str
    datasets: tuple[str, ...]
    varies: str  # the model argument that takes each entry
    entries: Callable[[], list[str]]


FAMILIES = (
    Family("linreg", "linear_regression", ("linear",), "layer", layer_names),
    Family("mlp", "mlp", ("nonlinear",), "activation", activation_names),
)


@dataclasses.dataclass(frozen=True)
class Job:
    """One row to run: the model's zoo config and the dataset it trains on."""

    name: str
    model: dict[str, Any]
    dataset: str

    def row(self, **fields: Any) -> Row:
        """A fresh row for this job."""
        activation = self.model.get("activation", "-")
        return Row(self.name, self.model["name"], activation, self.model.get("layer", "linear"), self.dataset,
                   **fields)


@dataclasses.dataclass
class Row:
    """What happened to one job: the verdict, the figures, and the error if it failed."""

    name: str
    model: str
    activation: str  # as listed: an alias for alias variants, "-" for the regression
    layer: str
    dataset: str
    ok: bool = False
    stage: str = "build"  # the step that failed (build, train, export, parity, crash), or "done"
    error: str | None = None
    train_loss: float | None = None  # zoo.train's final_loss: the last point of history
    worst_ratio: float | None = None  # the largest parity error in units of its float error bound (<= 1 passes)
    max_abs_error: float | None = None
    onnx: str | None = None  # the exported model, relative to the output directory
    compute: str | None = None  # the dtype the exported graph computes in
    epochs: int | None = None  # the recipe's epochs; len(history) is how many ran
    # Wall seconds per stage: train, regression (the notes' comparison, regression rows only), export
    # (to_onnx, parity check and bundle replay: write_bundle does them in one call) and total.
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[float] = dataclasses.field(default_factory=list)  # the loss on all rows after each epoch
    regression: dict[str, Any] | None = None  # learned vs notes vs least squares (regression rows)
    warnings: list[str] = dataclasses.field(default_factory=list)  # distinct warnings raised while it ran

    def status(self) -> str:
        """"ok", or "failed (<stage>)"."""
        return "ok" if self.ok else f"failed ({self.stage})"

    @property
    def total_seconds(self) -> float:
        """The row's wall time, start to finish (0 for a row that never ran)."""
        return self.seconds.get("total", 0.0)

    def to_json(self) -> dict[str, Any]:
        """This row as JSON-able data (non-finite floats become "nan", "inf", "-inf")."""
        from export.runtime.verify import jsonable

        return jsonable({**dataclasses.asdict(self), "status": self.status()})


def plan(*, only: Sequence[str] = ()) -> list[Job]:
    """Every row of a zoo run (family by family, as the registries list them), kept if it matches a pattern.

    Raises BadArgumentsError for a pattern in `only` that matches no row.
    """
    jobs = []
    for family in FAMILIES:
        for entry in family.entries():
            for dataset in family.datasets:
                suffix = f"-{dataset}" if len(family.datasets) > 1 else ""
                jobs.append(Job(f"{family.prefix}-{entry}{suffix}", {"name": family.model, family.varies: entry},
                                dataset))
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(job.name, p) for job in jobs)]
    if unmatched:
        raise BadArgumentsError(
            f"--only {unmatched[0]!r} matches no row; rows are named like 'linreg-linear' and 'mlp-relu' "
            "(see `zoo run --list`)"
        )
    return [job for job in jobs if not only or any(fnmatch.fnmatchcase(job.name, p) for p in only)]
