"""The rows of a `zoo run`: which rows there are (asked of the registries) and what each one records.

Every model family the run trains is listed once in ``FAMILIES`` with the datasets it suits and the
registry names each of its rows gives the model: the course notes' regression once per registered
linear layer, one MLP per registered activation (and per alias that changes the function, like
gelu_tanh), and for the classifiers (cnn, resnet, cnn1d, transformer) a few activations and norms
each. A plugin that adds a layer or an activation adds a regression or MLP row, with no change here.

The classifiers train on their datasets with a recipe sized for the run (``Sizing``: fewer rows and
epochs than `zoo train`'s defaults, so that the whole zoo takes about a minute on 2 cores), and a
row fails unless it reaches the held-out accuracy its sizing states.
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

Entry = dict[str, str]  # model argument -> registry name, e.g. {"activation": "gelu", "norm": "group_norm"}


def layer_names() -> list[str]:
    """Every registered linear layer: the notes' three in the notes' order, then the others by name."""
    notes = list(NOTES_PUBLISHED)
    return sorted(zoo.layers.names(), key=lambda name: (notes.index(name) if name in notes else len(notes), name))


def activation_names() -> list[str]:
    """Every registered activation, then each alias that changes the function (e.g. gelu_tanh)."""
    from zoo.plots import activation_specs

    return activation_specs()


def each(argument: str, names: Callable[[], list[str]]) -> Callable[[], list[Entry]]:
    """One entry per name the registry lists, given to the model as `argument`."""
    return lambda: [{argument: name} for name in names()]


def parts(*entries: Entry) -> Callable[[], list[Entry]]:
    """These entries, as they are."""
    return lambda: [dict(entry) for entry in entries]


@dataclasses.dataclass(frozen=True)
class Sizing:
    """A family's recipe in a zoo run: smaller data and fewer epochs than its defaults, and the held-out
    accuracy each of its rows must reach with them (a row below it fails)."""

    data: dict[str, Any]  # dataset parameters (rows, image size)
    model: dict[str, Any]  # model arguments that fit that data (input shape, widths)
    train: dict[str, Any]  # zoo.train overrides (epochs, learning rate)
    accuracy: float  # held-out accuracy (per position for sequences) every row must reach


@dataclasses.dataclass(frozen=True)
class Family:
    """One model trained once per entry, on each dataset it suits."""

    prefix: str  # row names are "<prefix>-<entry's names>", plus "-<dataset>" when it suits more than one
    model: str
    datasets: tuple[str, ...]
    entries: Callable[[], list[Entry]]
    sizing: Sizing | None = None  # None: the model's and the dataset's defaults, zoo.train's recipe


# Images of 24 pixels (the default is 32) and 2,000 of them: a CNN with batch norm reaches about 89%
# held out in 5-6 epochs (the defaults reach 95% and more, in `make bench`), at 3 to 5 s a row on one thread.
SHAPES = {"n": 2000, "n_test": 500, "size": 24}
FAST = {"lr": 1e-2}  # the classify recipe's cosine schedule from a higher rate: fewer epochs reach as far

FAMILIES = (
    Family("linreg", "linear_regression", ("linear",), each("layer", layer_names)),
    Family("mlp", "mlp", ("nonlinear",), each("activation", activation_names)),
    Family("cnn", "cnn", ("shapes",),
           parts({"activation": "relu", "norm": "batch_norm"}, {"activation": "gelu", "norm": "group_norm"}),
           Sizing(SHAPES, {"input_shape": [1, 24, 24], "widths": [8, 16, 32]}, {"epochs": 6, **FAST}, 0.7)),
    Family("resnet", "resnet", ("shapes",),
           parts({"activation": "relu", "norm": "batch_norm"}, {"activation": "mish", "norm": "group_norm"}),
           Sizing(SHAPES, {"input_shape": [1, 24, 24]}, {"epochs": 5, **FAST}, 0.7)),
    Family("cnn1d", "cnn1d", ("signals",),
           parts({"activation": "relu", "norm": "batch_norm"}, {"activation": "silu", "norm": "group_norm"}),
           Sizing({"n": 2000, "n_test": 500}, {}, {"epochs": 4, **FAST}, 0.8)),
    Family("transformer", "transformer", ("sort",),
           parts({"activation": "gelu", "norm": "layer_norm"}, {"activation": "silu", "norm": "group_norm"}),
           Sizing({"n": 2000, "n_test": 500}, {}, {"epochs": 4, **FAST}, 0.95)),
)


@dataclasses.dataclass(frozen=True)
class Job:
    """One row to run: the model's zoo config, the dataset it trains on and how (a family's Sizing, if any)."""

    name: str
    model: dict[str, Any]
    dataset: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # dataset parameters
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # zoo.train overrides
    accuracy: float | None = None  # the held-out accuracy the row must reach

    def row(self, **fields: Any) -> Row:
        """A fresh row for this job."""
        activation = self.model.get("activation", "-")
        return Row(self.name, self.model["name"], activation, self.model.get("layer", "linear"), self.dataset,
                   norm=self.model.get("norm") or "-", data=dict(self.data), **fields)


@dataclasses.dataclass
class Row:
    """What happened to one job: the verdict, the figures, and the error if it failed."""

    name: str
    model: str
    activation: str  # as listed: an alias for alias variants, "-" for the regression
    layer: str
    dataset: str
    norm: str = "-"  # "-" for a model without norms
    ok: bool = False
    stage: str = "build"  # the step that failed (build, train, accuracy, export, parity, crash), or "done"
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
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the parameters the run gave the dataset, seed aside
    heldout: dict[str, Any] | None = None  # torch's and the ONNX model's held-out scores (classifiers, export.run.heldout)
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
    jobs = [_job(family, entry, dataset) for family in FAMILIES for entry in family.entries()
            for dataset in family.datasets]
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(job.name, p) for job in jobs)]
    if unmatched:
        raise BadArgumentsError(
            f"--only {unmatched[0]!r} matches no row; rows are named like 'linreg-linear', 'mlp-relu' and "
            "'cnn-relu-batch_norm' (see `zoo run --list`)"
        )
    return [job for job in jobs if not only or any(fnmatch.fnmatchcase(job.name, p) for p in only)]


def _job(family: Family, entry: Entry, dataset: str) -> Job:
    """The job of one entry of a family on one of its datasets."""
    suffix = f"-{dataset}" if len(family.datasets) > 1 else ""
    name = "-".join([family.prefix, *entry.values()]) + suffix
    sizing = family.sizing
    if sizing is None:
        return Job(name, {"name": family.model, **entry}, dataset)
    return Job(name, {"name": family.model, **sizing.model, **entry}, dataset, dict(sizing.data), dict(sizing.train),
               sizing.accuracy)
