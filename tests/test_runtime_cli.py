"""`zoo-onnx-runtime verify|predict` (argparse, torch-free) against `zoo verify|predict` (click): the same
output, the same one-line errors, the same exit statuses. tests/test_packaging.py runs it in a venv without torch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import numpy as np
import pytest
from conftest import one_line_error

import export.options
import export.runtime
from export.runtime import cli as runtime_cli
from zoo import cli as zoo_cli


def run(main: Callable[[list[str]], object], capsys: pytest.CaptureFixture, *args: str
        ) -> subprocess.CompletedProcess:
    """One command line through ``main`` in this process, as its script runs it."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def both(capsys: pytest.CaptureFixture, *args: str
         ) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """(`zoo ARGS`, `zoo-onnx-runtime ARGS`)."""
    return run(zoo_cli.main, capsys, *args), run(runtime_cli.main, capsys, *args)


def test_both_commands_offer_the_same_runtimes():
    assert export.options.RUNTIMES == export.runtime.RUNTIMES


@pytest.mark.parametrize(
    "args",
    [
        ("verify", "{bundle}"),
        ("verify", "{bundle}/model.onnx", "--json"),
        ("predict", "{bundle}", "1", "-2.5", "3", "0", "-0.5", "7"),
        ("predict", "{bundle}/model.onnx", "nan", "-inf", "inf", "--json"),
        ("predict", "--json", "{bundle}", "-1e5", "2", "-0"),
        ("predict", "{bundle}", "--input", "{tmp}/x.npy", "--json"),
        ("predict", "{bundle}", "--input", "{bundle}/test_data_set_0/input_0.pb"),
    ],
)
def test_the_same_output(capsys, mlp3_bundle, tmp_path, args):
    np.save(tmp_path / "x.npy", np.array([[1.0, -2.5, 3.0]], np.float32))
    ours, theirs = both(capsys, *(arg.format(bundle=mlp3_bundle, tmp=tmp_path) for arg in args))
    assert ours.returncode == 0, ours.stderr
    assert (theirs.returncode, theirs.stdout, theirs.stderr) == (0, ours.stdout, ours.stderr)


def test_the_same_files(capsys, mlp3_bundle, tmp_path):
    for main, name in ((zoo_cli.main, "zoo"), (runtime_cli.main, "runtime")):
        for suffix in (".npy", ".npz"):
            out = tmp_path / name / f"y{suffix}"
            result = run(main, capsys, "predict", str(mlp3_bundle), "1", "2", "3", "-o", str(out))
            assert result.returncode == 0, result.stderr
    for suffix in (".npy", ".npz"):
        assert (tmp_path / "zoo" / f"y{suffix}").read_bytes() == (tmp_path / "runtime" / f"y{suffix}").read_bytes()
    assert sorted(p.name for p in (tmp_path / "runtime").iterdir()) == ["y.npy", "y.npz"]  # no temporary left


@pytest.mark.parametrize(
    "args",
    [
        ("predict", "{tmp}/missing.onnx", "1"),
        ("predict", "{tmp}/truncated.onnx", "1"),
        ("predict", "{bundle}", "1", "2"),
        ("predict", "{bundle}", "--input", "{tmp}/wrong.npy"),
        ("predict", "{bundle}", "--input", "{tmp}/truncated.onnx"),
        ("predict", "{bundle}", "--input", "{tmp}/none.npy"),
        ("predict", "{bundle}", "--input", "{tmp}/empty.npy"),
        ("predict", "{bundle}", "1", "2", "3", "-o", "{tmp}/wrong.npy/y.npy"),
        ("predict", "{bundle}", "1", "2", "3", "-o", "{tmp}/adir"),
        ("predict", "{bundle}", "1", "2", "3", "-o", "{tmp}/y.txt"),
        ("predict", "{bundle}", "1", "2", "3", "--input", "{tmp}/wrong.npy"),
        ("predict", "{bundle}"),
        ("verify", "{tmp}"),
        ("verify", "{tmp}/nowhere"),
    ],
)
def test_the_same_one_line_errors_and_exit_statuses(capsys, mlp3_bundle, tmp_path, args):
    (tmp_path / "truncated.onnx").write_bytes((mlp3_bundle / "model.onnx").read_bytes()[:300])
    np.save(tmp_path / "wrong.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    ours, theirs = both(capsys, *(arg.format(bundle=mlp3_bundle, tmp=tmp_path) for arg in args))
    assert ours.returncode in (1, 2) and theirs.returncode == ours.returncode
    assert one_line_error(theirs) == one_line_error(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "adir").iterdir())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("predict", "{bundle}", "1", "--jsno"), "'--jsno' is not a valid float"),
        (("verify", "{bundle}", "--runtime", "nope"), "invalid choice: 'nope'"),
        (("verify", "{bundle}", "extra"), "unrecognized arguments: extra"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(capsys, mlp3_bundle, args, fragment):
    result = run(runtime_cli.main, capsys, *(arg.format(bundle=mlp3_bundle) for arg in args))
    assert result.returncode == 2 and fragment in one_line_error(result), result.stderr
    assert result.stderr.rstrip().endswith("--help')")


def test_bare_command_prints_its_help(capsys):
    result = run(runtime_cli.main, capsys)
    assert result.returncode == 0 and "verify" in result.stdout and "predict" in result.stdout
