"""`zoo run`'s classifier rows: cnn, resnet, cnn1d and transformer from registry names, trained on shapes,
signals and sort with the run's sizing, scored on held-out rows in torch and in onnxruntime, drawn."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_zoo
from test_pipeline import png_size
from torch import nn

import zoo
from export.run import heldout
from export.run.row import run_row
from export.run.rows import FAMILIES, Job, plan
from zoo.models import NAMED_PARTS

# The cheapest conv and attention rows, and a group norm after a convolution (its probes' constant images
# repeat values along the norm's rows, where roundings align: export.parity.bounds.norm._repeated_rows).
CLASSIFIERS = ("cnn-gelu-group_norm", "cnn1d-relu-batch_norm", "transformer-gelu-layer_norm")  # in the run's order


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """`zoo run` of two classifier rows, as a user runs it."""
    out = tmp_path_factory.mktemp("classifiers") / "zoo-out"
    result = run_zoo("run", "-o", str(out), *(a for name in CLASSIFIERS for a in ("--only", name)), "--jobs", "1")
    return out, result, json.loads((out / "report.json").read_text())


def sized(name: str) -> Job:
    return next(job for job in plan(only=[name]))


def test_classifier_rows_are_built_from_registered_names_with_a_stated_accuracy() -> None:
    jobs = [job for job in plan() if job.accuracy is not None]
    assert {job.model["name"] for job in jobs} == {"cnn", "resnet", "cnn1d", "transformer"}
    for job in jobs:
        parts = {key: value for key, value in job.model.items() if key in NAMED_PARTS}
        assert {"activation", "norm"} <= set(parts), job.name
        for key, value in parts.items():
            assert value in zoo.registries[NAMED_PARTS[key]].names(), (job.name, key, value)
        assert job.name == "-".join([job.model["name"], parts["activation"], parts["norm"]])
        assert 0 < job.accuracy < 1 and job.train["epochs"] > 0 and job.data["n"] > 0
    assert [f.prefix for f in FAMILIES if f.sizing] == ["cnn", "resnet", "cnn1d", "transformer"]


def test_classifier_rows_score_torch_and_onnx_on_the_held_out_rows(classifier_run) -> None:
    _, _, report = classifier_run
    rows = {row["name"]: row for row in report["models"]}
    assert list(rows) == list(CLASSIFIERS)
    for name, row in rows.items():
        job, scores = sized(name), row["heldout"]
        assert row["stage"] in ("done", "parity"), row  # trained, reached its accuracy, exported and scored
        assert row["data"] == job.data and row["epochs"] == job.train["epochs"] == len(row["history"])
        assert row["norm"] == job.model["norm"] and {"heldout", "heldout_onnx"} <= set(row["seconds"])
        assert scores["train_rows"] == job.data["n"] and 0 < scores["rows"] <= job.data["n_test"]
        assert scores["accuracy"] >= scores["required"] == job.accuracy
        confusion = scores["confusion"]
        assert sum(map(sum, confusion)) == scores["predictions"]
        assert sum(confusion[k][k] for k in range(len(confusion))) == round(scores["accuracy"] * scores["predictions"])
        # ONNX's accuracy moves by at most one prediction for each prediction that differs from torch's.
        assert abs(scores["onnx_accuracy"] - scores["accuracy"]) * scores["predictions"] <= scores["differ"] + 1e-9
        assert scores["differ"] <= 0.01 * scores["predictions"]
    assert rows["cnn1d-relu-batch_norm"]["heldout"]["predictions"] == rows["cnn1d-relu-batch_norm"]["heldout"]["rows"]
    sequences = rows["transformer-gelu-layer_norm"]["heldout"]
    assert sequences["predictions"] == 8 * sequences["rows"]  # one per position of each sorted string
    assert 0 < sequences["sequence_accuracy"] <= sequences["accuracy"]
    assert [len(sample) for sample in sequences["samples"]] == [8] * 8


def test_the_report_states_each_recipe_and_both_accuracies(classifier_run) -> None:
    out, result, report = classifier_run
    markdown = (out / "report.md").read_text()
    assert "## The classifiers on their held-out rows" in markdown
    assert "The classifiers on their held-out rows (torch, and the exported model in onnxruntime):" in result.stdout
    for row in report["models"]:
        scores = row["heldout"]
        line = (f"| {row['name']} | {row['dataset']} | {scores['train_rows']}/{scores['rows']} | {row['epochs']} | "
                f"{scores['accuracy']:.1%} | {scores['onnx_accuracy']:.1%} | {scores['differ']} of "
                f"{scores['predictions']} | {scores['required']:.0%} |")
        assert line in markdown
        assert f"| {row['name']} | {row['activation']} | linear | {row['norm']} | {row['train_loss']:.4g} | " \
               f"{scores['accuracy']:.1%} |" in markdown


def test_the_pictures_show_predictions_and_every_loss_curve(classifier_run) -> None:
    out, _, report = classifier_run
    assert {"training.png", "predictions.png"} <= set(report["pictures"])
    width, height = png_size(out / "predictions.png")
    assert width >= 1200 and height >= 2 * 200  # one line of samples and a confusion matrix per row
    assert png_size(out / "training.png")[0] >= 800


def test_classifier_rows_pass_parity(classifier_run) -> None:
    failed = [row for row in classifier_run[2]["models"] if not row["ok"]]
    assert not failed, failed[0]["error"] if failed else None


def test_a_row_below_its_stated_accuracy_fails_before_the_export() -> None:
    job = Job("cnn1d-too-short", {"name": "cnn1d", "widths": [4]}, "signals", {"n": 64, "n_test": 32},
              {"epochs": 1}, accuracy=1.0)
    finished = run_row(job)
    row = finished.row
    assert (row.ok, row.stage, finished.files) == (False, "accuracy", {})
    assert re.fullmatch(r"held-out accuracy \d+\.\d% is below the 100% this row must reach: .*", row.error)
    assert "onnx_accuracy" not in row.heldout and row.heldout["rows"] == 32


class TwoFaced(nn.Module):
    """tanh in torch, tanh + 1 once exported: a model whose parity must fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) + 1 if torch.onnx.is_in_onnx_export() else torch.tanh(x)


def test_a_row_failing_parity_still_has_the_onnx_models_scores() -> None:
    zoo.activations.register("two_faced_test")(TwoFaced)
    try:
        job = Job("cnn1d-two_faced", {"name": "cnn1d", "widths": [4], "activation": "two_faced_test"}, "signals",
                  {"n": 64, "n_test": 32}, {"epochs": 1})
        row = run_row(job).row
    finally:
        zoo.activations.unregister("two_faced_test")
    assert (row.ok, row.stage) == (False, "parity")
    assert {"accuracy", "onnx_accuracy", "differ"} <= set(row.heldout) and row.heldout["required"] is None


def test_only_classification_sets_with_held_out_rows_are_scored() -> None:
    assert heldout.scored(zoo.datasets.create("signals", seed=0, n=8, n_test=4))
    assert not heldout.scored(zoo.datasets.create("signals", seed=0, n=8, n_test=0))
    assert not heldout.scored(zoo.datasets.create("nonlinear", seed=0, n=8))
    plain = SimpleNamespace(name="plain", task="classification", x=torch.zeros(4, 2), y=torch.zeros(4, dtype=torch.long),
                            params={})
    assert not heldout.scored(plain)  # the dataset contract does not ask for held-out rows


def test_the_confusion_matrix_holds_a_class_the_dataset_never_names() -> None:
    data = zoo.datasets.create("signals", seed=0, n=8, n_test=4)
    extra = nn.Sequential(nn.Flatten(), nn.Linear(40, 12))  # 12 logits for 10 classes; class 11 always wins
    with torch.no_grad():
        extra[1].weight.zero_()
        extra[1].bias.copy_(torch.arange(12.0))
    scores, predicted = heldout.score(extra, data, required=None)
    assert predicted.tolist() == [11] * 4 and scores["accuracy"] == 0
    assert len(scores["confusion"]) == 12 and sum(row[11] for row in scores["confusion"]) == 4
