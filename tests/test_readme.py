"""The README is executable: every Python block and every `zoo` command it shows runs as written.

All of them run in order in one temporary directory, so a command may use what an earlier one
wrote (the Python block writes lin.pt). Where the README's command is too slow for a test, needs
hardware this machine may lack, or is written with a placeholder, SUBSTITUTES says what runs
instead; MENTIONS are commands named in prose (`zoo verify` re-checks...), not run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, run_zoo

README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)

# The README's command (whitespace folded) -> what the test runs instead.
SUBSTITUTES = {
    "zoo run": "zoo run --only linreg-* -o zoo-out",  # the whole zoo takes a minute or more
    "zoo run --device cuda": "zoo run --device auto --only linreg-linear -o zoo-cuda",  # no GPU needed
    "zoo run --jobs N": "zoo run --jobs 1 --only linreg-linear -o zoo-jobs",
    "zoo run --cluster local --jobs 2": "zoo run --cluster local --jobs 2 --only linreg-linear -o zoo-cluster",
    "zoo run --only 'mlp-[a-g]*'": "zoo run --only 'mlp-[a-g]*' -o zoo-share",  # zoo-out holds the first run
    "zoo export -o m.onnx": "zoo export lin.pt -o m.onnx",
    "zoo export --test-data -o DIR": "zoo export lin.pt --test-data -o DIR",
    "zoo export --compute float64": "zoo export lin.pt --compute float64 -o lin64.onnx",
    "zoo verify DIR": "zoo verify DIR",
    "zoo verify OUT --runtime onnxruntime|openvino|tract": "zoo verify DIR --runtime onnxruntime",
}
MENTIONS = {"zoo verify", "zoo train"}


def python_blocks() -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == "python"]


def zoo_commands() -> list[str]:
    """Every inline `zoo ...` command of the README, in order, whitespace folded, each once."""
    prose = FENCE.sub("", README)
    found = (" ".join(span.split()) for span in re.findall(r"`(zoo(?:\s[^`]*)?)`", prose))
    return [command for command in dict.fromkeys(found) if command not in MENTIONS]


def test_every_substitute_and_mention_is_still_in_the_readme():
    shown = {" ".join(span.split()) for span in re.findall(r"`(zoo(?:\s[^`]*)?)`", FENCE.sub("", README))}
    assert set(SUBSTITUTES) | MENTIONS <= shown, "the README changed: update SUBSTITUTES / MENTIONS"


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory):
    """`pip install ./examples/zoo-example-plugin`, as the README's plugin section has it (into a directory)."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "examples" / "zoo-example-plugin")],
                   check=True, capture_output=True, text=True)
    return {"PYTHONPATH": str(target)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory where the README's Python blocks ran, in order, as a user would paste them."""
    where = tmp_path_factory.mktemp("readme")
    for block in python_blocks():
        result = subprocess.run([sys.executable, "-c", block], cwd=where, capture_output=True, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, f"README Python block failed:\n{block}\n{result.stderr}"
    return where


def test_python_blocks_run(workdir):
    assert (workdir / "lin.pt").is_file() and (workdir / "mlp.onnx").is_file()


def test_zoo_commands_run(workdir, example_plugin, monkeypatch):
    monkeypatch.chdir(workdir)
    for command in zoo_commands():
        run = SUBSTITUTES.get(command, command).replace("DIR", "lin-bundle")
        result = run_zoo(*shlex.split(run)[1:], env=example_plugin)
        assert result.returncode == 0, f"README command {command!r} (ran {run!r}) failed:\n{result.stderr}"
