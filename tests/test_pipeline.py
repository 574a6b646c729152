"""`zoo run` end to end: real training, real bundles, real parity, report files and pictures."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_zoo, write_distribution

import zoo
from export.run import rows as run_rows
from export.runtime import verify_bundle
from zoo.cli import main
from zoo.errors import BadArgumentsError

SELECTION = ("linreg-linear", "mlp-relu*")  # one regression row and two MLPs (relu, relu6)

BROKEN = {  # third-party activations that fail at each stage of a row
    "broken_import": "no_such_module_anywhere:Thing",
    "nan_act": "zoo_test_broken:NaNAct",
    "no_export": "zoo_test_broken:NoExport",
    "two_faced": "zoo_test_broken:TwoFaced",
    "killer": "zoo_test_broken:Killer",
}
BROKEN_MODULE = """
    import os
    import signal

    import torch
    from torch import nn

    class NaNAct(nn.Module):
        def forward(self, x):
            return x * float("nan")

    class NoExport(nn.Module):
        def forward(self, x):
            if torch.onnx.is_in_onnx_export():
                raise RuntimeError("this activation refuses to be exported")
            return torch.tanh(x)

    class Killer(nn.Module):
        def forward(self, x):  # takes its worker process down, as a crashing extension would
            os.kill(os.getpid(), signal.SIGKILL)

    class TwoFaced(nn.Module):
        def forward(self, x):  # computes another function once exported: parity must catch it
            return torch.tanh(x) + 1 if torch.onnx.is_in_onnx_export() else torch.tanh(x)
"""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """`zoo run --json --jobs 1` on a small selection, as a user would run it."""
    out = tmp_path_factory.mktemp("run") / "zoo-out"
    args = [a for pattern in SELECTION for a in ("--only", pattern)]
    result = run_zoo("run", "-o", str(out), *args, "--jobs", "1", "--json")
    return out, result, json.loads(result.stdout) if result.stdout else {}


@pytest.fixture(scope="module")
def broken_run(cli_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """`zoo run --jobs 2 --force` with a third-party distribution whose activations fail at each stage.

    OUT already holds an earlier run (cli_run's), with a bundle named like a failing row besides.
    """
    site = write_distribution(tmp_path_factory.mktemp("site"), "zoo-test-broken", {"zoo.activations": BROKEN},
                              {"zoo_test_broken.py": BROKEN_MODULE})
    out = tmp_path_factory.mktemp("broken") / "zoo-out"
    shutil.copytree(cli_run[0], out)
    shutil.copytree(cli_run[0] / "models" / "mlp-relu", out / "models" / "mlp-two_faced")
    args = [a for name in ("linreg-linear", "mlp-relu", *(f"mlp-{n}" for n in BROKEN)) for a in ("--only", name)]
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_zoo("run", "-o", str(out), *args, "--jobs", "2", "--force", env=env)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return out, result, report


def test_plan_has_every_regression_layer_activation_and_variant() -> None:
    names = [job.name for job in run_rows.plan()]
    assert names[:3] == ["linreg-einsum_linear", "linreg-param_linear", "linreg-linear"]
    expected = [f"mlp-{name}" for name in zoo.activations.names()] + ["mlp-gelu_tanh"]
    assert names[3 : 3 + len(expected)] == expected
    assert [name.split("-")[0] for name in names[3 + len(expected) :]] == ["cnn"] * 2 + ["resnet"] * 2 + ["cnn1d"] * 2 + [
        "transformer"] * 2
    assert [job.name for job in run_rows.plan(only=SELECTION)] == ["linreg-linear", "mlp-relu", "mlp-relu6"]
    with pytest.raises(BadArgumentsError, match="'nosuch' matches no row"):
        run_rows.plan(only=["mlp-relu", "nosuch"])


def test_plan_includes_third_party_activations(third_party) -> None:
    third_party("cubic-act", {"zoo.activations": {"cubic": "cubic_act:Cubic"}})
    assert "mlp-cubic" in [job.name for job in run_rows.plan()]


def test_plan_has_a_row_for_every_registered_layer(third_party) -> None:
    third_party("wide-layer", {"zoo.layers": {"zz_linear": "torch.nn:Linear"}})
    names = [job.name for job in run_rows.plan(only=["linreg-*"])]
    assert names == ["linreg-einsum_linear", "linreg-param_linear", "linreg-linear", "linreg-zz_linear"]


def test_rows_record_seconds_per_stage(cli_run) -> None:
    report = cli_run[2]
    for row in report["models"]:
        seconds = row["seconds"]
        assert {"train", "export", "parity", "total"} <= set(seconds), seconds
        assert all(value > 0 for value in seconds.values())
        assert sum(v for k, v in seconds.items() if k != "total") <= seconds["total"]
    assert "regression" in report["models"][0]["seconds"]
    assert report["settings"]["interrupted"] is False and report["settings"]["cluster"] is None


def test_run_succeeds_and_writes_report_bundles_and_pictures(cli_run) -> None:
    out, result, report = cli_run
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress display (not a terminal), no warnings
    assert report["ok"] is True and report["settings"]["jobs"] == 1
    rows = {row["name"]: row for row in report["models"]}
    assert list(rows) == ["linreg-linear", "mlp-relu", "mlp-relu6"]
    for name, row in rows.items():
        for field in ("name", "ok", "worst_ratio", "max_abs_error", "train_loss", "onnx", "history"):
            assert field in row, (name, field)
        assert row["ok"] is True and row["status"] == "ok" and row["error"] is None
        assert row["onnx"] == f"models/{name}/model.onnx"
        bundle = out / "models" / name
        for part in ("model.onnx", "manifest.json", "test_data_set_0/input_0.pb", "test_data_set_0/output_0.pb"):
            assert (bundle / part).is_file(), part
        verify_bundle(bundle)  # re-checked with onnxruntime alone
    assert rows["mlp-relu"]["train_loss"] < 0.02  # the noise floor of `nonlinear` is 0.01
    assert (json.loads((out / "report.json").read_text()) | {"seconds": 0}) == (report | {"seconds": 0})
    markdown = (out / "report.md").read_text()
    assert "| mlp-relu6 | relu6 | linear |" in markdown and "least squares" in markdown
    assert png_size(out / "activations.png")[0] >= 2 * 250  # two panels
    assert png_size(out / "training.png")[0] >= 800
    assert not list(out.glob(".*")), "temporary files left behind"


def test_train_loss_is_the_last_point_of_the_history(cli_run) -> None:
    """One loss in the table, report.json and training.png (drawn from the histories)."""
    out, _, report = cli_run
    markdown = (out / "report.md").read_text()
    for row in report["models"]:
        assert row["train_loss"] == row["history"][-1], row["name"]
        assert (f"| {row['name']} | {row['activation']} | {row['layer']} | {row['norm']} | {row['history'][-1]:.4g} | "
                "- |") in markdown  # no held-out accuracy: not a classifier
    assert "`train loss` is the trained model's loss on all its training rows in eval mode" in markdown


def test_regression_row_compares_with_the_notes_and_least_squares(cli_run) -> None:
    _, _, report = cli_run
    fits = report["models"][0]["regression"]
    ols, default, notes = fits["least_squares"], fits["default"], fits["notes"]
    assert abs(default["w"] - ols["w"]) < 0.01 and abs(default["b"] - ols["b"]) < 0.05
    assert default["mse"] <= ols["mse"] * 1.01
    assert abs(notes["b"] - 5) > 1  # the notes' recipe ends far from b = 5, as in the notes
    assert fits["notes_published"] == {"w": 9.95, "b": 8.7}
    assert len(notes["history"]) == 5


def test_worker_processes_give_the_same_numbers(cli_run, broken_run) -> None:
    single = {row["name"]: row for row in cli_run[2]["models"]}
    parallel = {row["name"]: row for row in broken_run[2]["models"]}
    assert broken_run[2]["settings"]["jobs"] == 2
    keys = ("train_loss", "history", "worst_ratio", "max_abs_error", "regression")
    for name in ("linreg-linear", "mlp-relu"):
        assert {k: single[name][k] for k in keys} == {k: parallel[name][k] for k in keys}, name


def test_failing_plugins_become_failed_rows_not_a_crash(broken_run) -> None:
    out, result, report = broken_run
    assert_one_line_error(result, "5 of 7 models failed", "report.md")
    rows = {row["name"]: row for row in report["models"]}
    assert rows["mlp-relu"]["ok"] is True and rows["linreg-linear"]["ok"] is True
    expected = {"mlp-broken_import": ("build", "failed to load"), "mlp-nan_act": ("train", "diverged"),
                "mlp-no_export": ("export", "refuses to be exported"), "mlp-two_faced": ("parity", "FAIL"),
                "mlp-killer": ("crash", "worker process died")}
    for name, (stage, fragment) in expected.items():
        row = rows[name]
        assert not row["ok"] and row["stage"] == stage and fragment in row["error"], row
        assert "\n" not in row["error"]
        assert not (out / "models" / name).exists()  # nothing half-written, no stale bundle passing for this run
    assert rows["mlp-two_faced"]["worst_ratio"] > 1
    assert sorted(p.name for p in (out / "models").iterdir()) == ["linreg-linear", "mlp-relu"]  # no mlp-relu6 of before
    assert "mlp-no_export failed (export): " in result.stdout
    assert "`mlp-broken_import` failed (build): " in (out / "report.md").read_text()
    assert png_size(out / "activations.png")  # drawn for the activations that built


@pytest.mark.parametrize("args, fragment", [
    (["--only", "nosuch"], "matches no row"),
    (["--opset", "5"], "opset 5 is not supported"),
    (["--device", "tpu"], "device"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     args: list[str], fragment: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code != 0 and len(err) == 1 and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_list_prints_row_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--list", "--only", "linreg-*"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.split() == ["linreg-einsum_linear", "linreg-param_linear", "linreg-linear"]


def test_progress_is_drawn_on_a_terminal_only(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        result = subprocess.run([sys.executable, "-m", "zoo", "run", "-o", str(tmp_path), "--only", "linreg-linear"],
                                stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL, timeout=300,
                                check=False)
        os.close(follower)
        drawn = terminal.read(4096).decode()
    assert result.returncode == 0
    assert "[1/1] linreg-linear: ok" in drawn
    assert "[1/1]" not in result.stdout.decode() and "1/1 ok in" in result.stdout.decode()


def test_ctrl_c_writes_the_report_of_the_finished_rows(tmp_path: Path) -> None:
    """SIGINT after the first bundle is in place: exit 130, one line, a partial report, nothing half-written."""
    out = tmp_path / "zoo-out"
    only = ["linreg-linear", "mlp-*"]  # a minute of rows left after the first
    args = [*(a for pattern in only for a in ("--only", pattern)), "--jobs", "1"]
    # Ctrl-C as a terminal sends it, to a command that handles SIGINT: a suite run in the background of a
    # non-interactive shell has SIGINT ignored (bash does that), and an ignored signal stays ignored across
    # exec, where a handled one is reset to its default action
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, "-m", "zoo", "run", "-o", str(out), *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 240
    while not (out / "models" / "linreg-linear" / "manifest.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no bundle before the deadline"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "report.md" in lines[0], stderr
    report = json.loads((out / "report.json").read_text())
    rows = report["settings"]["rows"]
    assert report["ok"] is False and report["settings"]["interrupted"] is True and rows == len(run_rows.plan(only=only))
    names = [row["name"] for row in report["models"]]
    assert names and names[0] == "linreg-linear" and len(names) < rows and all(row["ok"] for row in report["models"])
    assert "Interrupted" in (out / "report.md").read_text()
    assert sorted(p.name for p in (out / "models").iterdir()) == names  # no staged or half-written bundle
    assert not list(out.rglob(".*")), "temporary files left behind"


LATE_MODULE = """
    import os

    from torch import nn

    class LateTanh(nn.Tanh):
        def __init__(self):
            super().__init__()
            self.origin = os.environ["ZOO_TEST_LATE"]  # a KeyError where the worker has a stale environment
"""


def test_workers_see_a_plugin_installed_after_their_server_started(third_party, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers fork from a server that imported torch once; they still take this process's sys.path and environment."""
    from export.run import pool as run_pool
    from export.run.pipeline import run_zoo as run

    run_pool.warm_up()
    third_party("zoo-test-late", {"zoo.activations": {"late_tanh": "zoo_test_late:LateTanh"}},
                {"zoo_test_late.py": LATE_MODULE})
    monkeypatch.setenv("ZOO_TEST_LATE", "set after the server started")
    report = run(tmp_path / "out", only=["mlp-late_tanh", "linreg-linear"], jobs=2)
    assert {row.name: row.status() for row in report.rows} == {"linreg-linear": "ok", "mlp-late_tanh": "ok"}
