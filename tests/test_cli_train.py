"""`zoo train` and the pieces `zoo export` / `zoo run` reuse: options, summaries, errors, progress."""

from __future__ import annotations

import json
import os
import pathlib
import pty
import subprocess
import sys

import click
import pytest
import torch
from conftest import ROOT

import zoo
from zoo.cli import main
from zoo.options import model_training_options, train_from_options

ZOO = pathlib.Path(sys.executable).with_name("zoo")


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real `zoo` entry function in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_train_linear_regression_json_and_checkpoint(capsys, tmp_path):
    path = tmp_path / "linreg.pt"
    code, out, err = run(capsys, "train", "linreg", "--layer", "einsum_linear", "--json", "-o", str(path))
    assert code == 0 and err == ""
    report = json.loads(out)
    assert report["model"] == {"name": "linear_regression", "in_features": 1, "out_features": 1,
                               "layer": "einsum_linear", "seed": 0}
    assert report["dataset"]["name"] == "linear" and report["recipe"]["name"] == "default"
    assert abs(report["parameters"]["weight"][0][0] - 10) < 0.01 and abs(report["parameters"]["bias"][0] - 5) < 0.05
    assert report["checkpoint"] == str(path) and len(report["history"]) <= report["recipe"]["epochs"]
    loaded = zoo.load_checkpoint(path)
    assert loaded.weight.item() == report["parameters"]["weight"][0][0]


def test_summary_shows_the_notes_w_and_b(capsys):
    code, out, err = run(capsys, "train", "linear_regression", "--recipe", "notes")
    assert code == 0 and err == ""  # captured stderr is no terminal: no progress bar
    assert "recipe notes: 500 steps" in out and "final loss" in out and "(mse " in out
    assert "parameters: weight [[9.96" in out and "bias [8.6" in out


def test_logistic_regression_summary_has_accuracy(capsys):
    code, out, _ = run(capsys, "train", "logreg", "--quiet")
    assert code == 0 and "on blobs" in out and "accuracy 0.84" in out


def test_activation_hidden_and_dataset_arguments(capsys):
    code, out, _ = run(capsys, "train", "mlp", "--activation", "softplus:beta=2,threshold=5", "--hidden", "8,4",
                       "--dataset", "nonlinear:n=200,noise=0.2", "--epochs", "2", "--seed", "3", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["model"]["activation"] == {"name": "softplus", "beta": 2, "threshold": 5}
    assert report["model"]["hidden"] == [8, 4] and report["parameters"] is None  # too many to print
    assert report["dataset"] == {"name": "nonlinear", "task": "regression", "rows": 200, "heldout_rows": 0,
                                 "params": {"seed": 3, "n": 200, "noise": 0.2}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--activation", "softplus:beta"], "Invalid value for '--activation': 'softplus:beta': write name:key=value"),
        (["--activation", ":beta=2"], "has no name before ':'"),
        (["--activation", "softplus:beta=[1]"], "values must be numbers, true/false/null or words"),
        (["--hidden", "64,x"], "Invalid value for '--hidden': '64,x' is not a comma-separated list"),
        (["--hidden", "0"], "is not a comma-separated list of positive integers"),
        (["--hidden", "64,,64"], "'64,,64' is not a comma-separated list of positive integers"),
        (["--device", "cpu:1"], "'cpu:1' is not a device: use auto, cpu, cuda or cuda:N"),
        (["--device", "gpu"], "'gpu' is not a device"),
        (["--epochs", "many"], "Invalid value for '--epochs'"),
    ],
)
def test_bad_option_values_are_usage_errors(capsys, args, message):
    code, out, err = run(capsys, "train", "mlp", *args)
    assert code == 2 and out == ""
    assert err.startswith("zoo: error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["linear_regression", "--hidden", "8"], "model 'linear_regression'"),
        (["linear_regression", "--recipe", "nots"], "unknown recipe 'nots'; did you mean 'notes'?"),
        (["linear_regression", "--optimizer", "adamw", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["linear_regression", "--dataset", "blob"], "unknown dataset 'blob'; did you mean 'blobs'"),
        (["linear_regression", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["mlp", "--activation", "nope"], "unknown activation 'nope'"),
        (["perceptron"], "unknown model 'perceptron'"),
        (["linreg", "--optimizer", "adamm"], "did you mean 'adam', 'adamw'? (choose from adam, adamw, lbfgs, sgd)"),
        (["linreg", "--layer", "lineer"], "did you mean 'linear'"),
        (["linreg", "--layer", "lineer"], "(see `zoo list layers`)"),
        (["logistic_regression", "--dataset", "linear"], "is regression: train it on a binary_classification dataset"),
        (["linreg", "--dataset", "linear:noise=NaN"], "10000 values in y that are NaN or infinite, the first in row 0"),
    ],
)
def test_bad_requests_are_one_line_errors(capsys, tmp_path, args, message):
    path = tmp_path / "never.pt"
    code, out, err = run(capsys, "train", *args, "-o", str(path))
    assert code == 1 and out == "" and not path.exists()
    assert err.startswith("zoo: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_divergence_is_one_line_and_writes_nothing(capsys, tmp_path):
    path = tmp_path / "diverged.pt"
    code, out, err = run(capsys, "train", "linreg", "--recipe", "notes", "--optimizer", "sgd", "--lr", "1",
                         "--weight-decay", "0", "-o", str(path))
    assert code == 1 and out == "" and not path.exists() and list(tmp_path.iterdir()) == []
    assert "training diverged" in err and "at step" in err and "lower the learning rate" in err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("/proc/x.pt", "cannot write /proc/x.pt: cannot create files in /proc"),
        ("{tmp}/file.pt/x.pt", "file.pt is a file, not a directory"),
        ("{tmp}/lin", "a checkpoint file ends in .pt or .pth or .ckpt (e.g. lin.pt)"),
        ("{tmp}", "it is a directory; give a file name"),
    ],
)
def test_output_path_is_checked_before_training(capsys, tmp_path, output, message):
    (tmp_path / "file.pt").write_bytes(b"mine")
    code, out, err = run(capsys, "train", "mlp", "--hidden", "256,256,256", "-o", output.format(tmp=tmp_path))
    assert code == 1 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert ".tmp" not in err and sorted(os.listdir(tmp_path)) == ["file.pt"]


def test_missing_directories_are_created_and_one_step_is_singular(capsys, tmp_path):
    path = tmp_path / "new" / "dir" / "lin.pt"
    code, out, _ = run(capsys, "train", "linreg", "--optimizer", "lbfgs", "--epochs", "1", "-o", str(path))
    assert code == 0 and path.is_file()
    assert " 1 step in " in out


def test_steps_are_counted_as_the_readme_counts_them(capsys):
    code, out, _ = run(capsys, "train", "linear_regression")
    assert code == 0
    assert "recipe default: 2 steps in " in out and "(stopped after 2 of 10 epochs: the loss stopped improving)" in out
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "so `zoo train` reports 2 steps for `linear_regression`" in readme


def test_hidden_as_an_int_in_python_is_a_clear_error():
    with pytest.raises(zoo.BadArgumentsError, match=r"hidden must be a list of positive layer widths.*got 64"):
        zoo.create_model("mlp", hidden=64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    code, _, err = run(capsys, "train", "linreg", "--device", "cuda")
    assert code == 1 and "sees no CUDA GPU: use device cpu or auto" in err


def test_train_from_options_sizes_the_model_from_the_dataset():
    model, result = train_from_options("mlp", hidden=[8], dataset="blobs", epochs=2, progress=False)
    assert model.zoo_config["in_features"] == 2 and model.zoo_config["out_features"] == 1
    assert set(result.metrics) == {"bce", "accuracy"} and result.recipe["epochs"] == 2


def test_model_training_options_decorate_another_command(capsys):
    @click.command()
    @model_training_options
    def other(**options):
        click.echo(json.dumps(options, sort_keys=True))

    other.main(["--hidden", "3", "--activation", "gelu:approximate=tanh", "--lr", "0.5"], standalone_mode=False)
    options = json.loads(capsys.readouterr().out)
    assert options == {
        "activation": {"name": "gelu", "approximate": "tanh"}, "batch_size": None, "dataset": None,
        "device": "auto", "epochs": None, "hidden": [3], "layer": None, "lr": 0.5, "optimizer": None,
        "recipe": None, "seed": 0, "weight_decay": None,
    }


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run the installed `zoo` script with its stderr on a pseudo-terminal: (exit code, stdout, stderr)."""
    leader, follower = pty.openpty()
    with subprocess.Popen([str(ZOO), *args], stdout=subprocess.PIPE, stderr=follower, text=True) as process:
        os.close(follower)
        err = b""
        while chunk := _read(leader):
            err += chunk
        out = process.stdout.read()
    os.close(leader)
    return process.returncode, out, err.decode()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the pseudo-terminal closes with EIO once the child is gone
        return b""


def test_progress_bar_on_a_terminal_unless_quiet():
    code, out, err = run_on_terminal("train", "linreg", "--recipe", "notes", "--epochs", "2")
    assert code == 0 and "epoch 2/2" in err and "100% loss" in err and "final loss" in out
    code, out, err = run_on_terminal("train", "linreg", "--recipe", "notes", "--epochs", "2", "--quiet")
    assert code == 0 and err == "" and "final loss" in out


def test_cli_import_stays_light():
    code = "import sys, zoo.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
