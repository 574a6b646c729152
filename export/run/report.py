"""The report of a `zoo run`: report.json, report.md and the text tables the command prints."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import zoo
from export.run.rows import Row
from zoo.files import write_atomic
from zoo.text import plural


@dataclasses.dataclass
class Report:
    """The result of a zoo run: its rows, settings, pictures and wall time."""

    rows: list[Row]
    settings: dict[str, Any]
    seconds: float = 0.0
    pictures: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # e.g. a picture that could not be drawn

    @property
    def ok(self) -> bool:
        """Every row trained, exported and passed parity, every picture was drawn, and nothing interrupted it."""
        return not self.failed() and not self.problems and not self.interrupted

    @property
    def interrupted(self) -> bool:
        """The run was stopped (Ctrl-C) before every row finished: rows holds the ones that did."""
        return bool(self.settings.get("interrupted"))

    def failed(self) -> list[Row]:
        """The rows that did not pass."""
        return [row for row in self.rows if not row.ok]

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-able data; `models` has one entry per row."""
        return {
            "zoo_version": zoo.__version__,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            "models": [row.to_json() for row in self.rows],
            "pictures": self.pictures,
            "problems": self.problems,
        }


def write_report(report: Report, out: pathlib.Path) -> None:
    """Write OUT/report.json and OUT/report.md, each atomically."""
    write_atomic(out / "report.json", (json.dumps(report.to_json(), indent=2) + "\n").encode())
    write_atomic(out / "report.md", markdown(report).encode())


TABLE_HEADER = ("model", "activation", "layer", "norm", "train loss", "held-out", "computes", "worst/bound", "seconds",
                "status")
REGRESSION_HEADER = ("layer", "fit", "w", "b", "MSE (all rows)")
# (key in Row.regression, label, number format): the notes print two decimals and no MSE.
REGRESSION_FITS = (("default", "zoo default recipe", ".4f"), ("notes", "notes' recipe, run here", ".4f"),
                   ("notes_published", "notes' printed result", ".2f"), ("least_squares", "least squares", ".4f"))
CLASSIFIER_HEADER = ("model", "dataset", "rows (train/held-out)", "epochs", "torch", "onnx", "differ", "must reach")
TABLE_NOTE = ("`train loss` is the trained model's loss on all its training rows in eval mode (MSE, or cross-entropy "
              "for a classifier): the last point of its history in report.json and training.png. `held-out` is a "
              "classifier's accuracy on held-out rows (per position for sequences). "
              "Parity is judged on every probe (inputs up to +-3e38, infinities and NaN included) against the "
              "model's float64 value: each element must lie within the error bound that float arithmetic allows "
              "any correct evaluation (sums grow it with the size of their terms, each op adds its rounding). "
              "`worst/bound` is the largest error in units of that bound: at most 1 passes. `computes` is the "
              "dtype the exported graph computes in. `seconds` is the row's wall time; report.json splits it "
              "into train, regression, heldout (torch) and heldout_onnx, export and parity.")

REGRESSION_NOTE = ("`zoo default recipe` is the row exported above; `notes' recipe, run here` trains the same model "
                   "with the notes' recipe; `least squares` is the exact optimum (torch.linalg.lstsq).")
CLASSIFIER_NOTE = ("The classifiers train with the classify recipe sized for the run: fewer rows and epochs (and "
                   "24-pixel images) than `zoo train`'s defaults, and a higher learning rate; a row fails unless its "
                   "held-out accuracy reaches `must reach`. `torch` is the trained model's held-out accuracy, `onnx` "
                   "the exported model's in onnxruntime on the same rows, `differ` how many of its predictions "
                   "(one per row, per position for sequences) are not torch's. predictions.png draws sample inputs "
                   "with their predicted labels and each row's confusion matrix.")


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The summary table, header first: one line per row."""
    return [TABLE_HEADER, *((row.name, row.activation, row.layer, row.norm, _num(row.train_loss, ".4g"),
                             _percent((row.heldout or {}).get("accuracy")), row.compute or "-",
                             _num(row.worst_ratio, ".3g"), f"{row.total_seconds:.1f}", row.status())
                            for row in rows)]


def regression_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The notes' regression compared, header first; empty without regression rows."""
    cells = [(row.layer, label, _num(fit["w"], spec), _num(fit["b"], spec), _num(fit.get("mse"), ".4f"))
             for row in rows if row.regression
             for key, label, spec in REGRESSION_FITS if key in row.regression for fit in [row.regression[key]]]
    return [REGRESSION_HEADER, *cells] if cells else []


def classifier_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The classifiers on their held-out rows, torch next to ONNX, header first; empty without classifiers."""
    cells = [(row.name, row.dataset, f"{scores['train_rows']}/{scores['rows']}", _num(row.epochs, "d"),
              _percent(scores["accuracy"]), _percent(scores.get("onnx_accuracy")),
              f"{scores['differ']} of {scores['predictions']}" if "differ" in scores else "-",
              _percent(scores["required"], ".0%"))
             for row in rows if row.heldout for scores in [row.heldout]]
    return [CLASSIFIER_HEADER, *cells] if cells else []


def format_table(cells: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns separated by two spaces; the first line is the header."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(c, widths)).rstrip() for c in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def where_it_ran(settings: dict[str, Any]) -> str:
    """"2 worker processes", or "a Dask cluster of 2 workers at tcp://..." for a cluster run."""
    cluster = settings.get("cluster")
    if cluster:
        return f"a Dask cluster of {plural(cluster['workers'], 'worker', 'workers')} at {cluster['address']}"
    return plural(settings["jobs"], "worker process", "worker processes")


def markdown(report: Report) -> str:
    """report.md: the run's settings, the summary table, the regression comparison, failures and pictures."""
    s, failed = report.settings, report.failed()
    epochs = sorted({row.epochs for row in report.rows if row.epochs and not row.heldout})
    summary = (
        f"{len(report.rows)} models, {len(report.rows) - len(failed)} ok, {len(failed)} failed in "
        f"{report.seconds:.1f} s (seed {s['seed']}, device {s['device']}, opset {s['opset']}, "
        f"{where_it_ran(s)}). The regression and MLP rows train with zoo's default recipe (at most "
        f"{'/'.join(map(str, epochs)) or '-'} epochs: full-batch L-BFGS stops once the loss stops improving), "
        "the classifiers with the classify recipe sized for the run (below). Every model is exported as a "
        "bundle under `models/<model>/` and checked for parity with the full probe set."
    )
    lines = ["# zoo run", ""]
    if report.interrupted:
        lines += [f"**Interrupted**: {len(report.rows)} of {s['rows']} rows finished; this report holds those.", ""]
    lines += [summary, "", _md_table(table_rows(report.rows)), "", TABLE_NOTE]
    regression = regression_rows(report.rows)
    if regression:
        lines += ["", "## The course notes' regression (y = 10x + 5 + noise)", "", _md_table(regression), "",
                  REGRESSION_NOTE]
    classifiers = classifier_rows(report.rows)
    if classifiers:
        lines += ["", "## The classifiers on their held-out rows", "", _md_table(classifiers), "", CLASSIFIER_NOTE]
    if failed or report.problems:
        lines += ["", "## Failures", ""]
        lines += [f"- `{row.name}` {row.status()}: {row.error}" for row in failed]
        lines += [f"- {problem}" for problem in report.problems]
    if report.pictures:
        lines += ["", "## Pictures", *(f"\n![{p}]({p})" for p in report.pictures)]
    return "\n".join(lines) + "\n"


def _md_table(cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0]), *lines[1:]])


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(value: float | None, spec: str = ".1%") -> str:
    return _num(value, spec)
