"""The pictures of a `zoo run`: every activation that built, the training loss of every row, and what the
classifiers predict (sample inputs with their labels, confusion matrices)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from export.run.rows import Row
from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo import plots

MLP_NOTE = ("A curve that ends before the others stopped early: its loss no longer fell. A high, flat one is a net "
            "that stopped learning: units sitting where their activation is flat (zero gradient, as threshold below "
            "its threshold or hardshrink near 0: see activations.png) never move again.")


def draw_pictures(rows: Sequence[Row], out: pathlib.Path, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Write activations.png (activations that built and did not crash), training.png and, when classifiers
    ran, predictions.png; return (written, problems)."""
    from zoo import plots

    activations = [row.activation for row in rows if row.model == "mlp" and row.stage not in ("build", "crash")]
    regression: dict[str, list[float]] = {}
    for recipe, history in (("default recipe", lambda r: r.history),
                            ("notes' recipe", lambda r: r.regression["notes"]["history"])):
        same: dict[tuple[float, ...], list[str]] = {}  # the layers compute the same numbers: one curve each
        for row in rows:
            if row.regression:
                same.setdefault(tuple(history(row)), []).append(row.layer)
        regression.update({f"{recipe}: {', '.join(layers)}": list(h) for h, layers in same.items()})
    mlp = {row.activation: row.history for row in rows if row.model == "mlp" and row.history}
    mlp_title = f"mlp on {_datasets(rows, 'mlp')}, one curve per activation"
    classifiers = [row for row in rows if row.heldout]
    panels = {f"linear_regression on {_datasets(rows, 'linear_regression')}": regression, mlp_title: mlp,
              "classifiers (cross-entropy), one curve per row": {row.name: row.history for row in classifiers}}
    pictures = {
        "activations.png": (lambda path: plots.plot_activations(activations, path, seed=seed), activations),
        "training.png": (lambda path: plots.plot_training(panels, path, notes={mlp_title: MLP_NOTE}),
                         regression or mlp or classifiers),
        "predictions.png": (lambda path: plots.plot_predictions(_predictions(classifiers, seed), path), classifiers),
    }
    written, problems = [], []
    for filename, (draw, wanted) in pictures.items():
        try:
            if wanted:
                draw(out / filename)
                written.append(filename)
        except ZooError as exc:
            problems.append(f"{filename} not drawn: {exc}")
    return written, problems


def _predictions(rows: Sequence[Row], seed: int) -> list[plots.Predictions]:
    """What each classifier row predicted for its first held-out inputs, those inputs drawn again from the seed."""
    import zoo
    from zoo import plots

    drawn: dict[str, Any] = {}  # rows that share a dataset and its parameters share one draw
    panels = []
    for row in rows:
        key = json.dumps([row.dataset, row.data], sort_keys=True)
        if key not in drawn:
            drawn[key] = zoo.datasets.create(row.dataset, seed=seed, **row.data)
        data, scores = drawn[key], row.heldout
        samples = len(scores["samples"])
        classes = len(scores["confusion"])
        labels = [str(label) for label in data.params.get("labels") or range(classes)]
        title = f"{row.name}: held-out accuracy {scores['accuracy']:.1%} ({scores['rows']} {row.dataset} rows)"
        panels.append(plots.Predictions(title, data.test.x[:samples].numpy(), data.test.y[:samples].numpy(),
                                        scores["samples"], scores["confusion"], labels))
    return panels


def _datasets(rows: Sequence[Row], model: str) -> str:
    """The datasets rows of `model` trained on, quoted: "'linear'"."""
    return ", ".join(f"'{name}'" for name in dict.fromkeys(row.dataset for row in rows if row.model == model)) or "-"
