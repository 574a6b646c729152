"""The distributions as a user installs them: every `pip install` line of the READMEs, in new venvs.

Nothing here installs torch or reaches an index. A venv that "sees the project" reads the project
venv's packages through a .pth file; the venv for zoo-onnx-runtime sees numpy and onnxruntime (and
what they require) and nothing else: no torch, no click, no zoo. Each line runs there with OFFLINE
added, so pip must resolve it against what the venv has: a name only an index has (PyPI's
unrelated `zoo`) fails instead of being installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, one_line_error, run_zoo
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import zoo
from export.runtime import OnnxModel

# No index; the build backend (hatchling, which pip's build isolation would download) is the project
# venv's, from its test extra. Measured here: 35-270 s a line through the index, a few seconds offline.
OFFLINE = ("--no-index", "--no-build-isolation")
EXAMPLE = ROOT / "examples" / "zoo-example-plugin"
READMES = [ROOT / "README.md", EXAMPLE / "README.md"]
PIP_LINE = re.compile(r"^pip install [^`#\n]*", re.MULTILINE)

# Every `pip install` line of the READMEs -> how it is checked: "resolve" runs it with --dry-run,
# "install" runs it for real (test_example_plugin_* and test_zoo_onnx_runtime_*), "declared" checks that the
# extra is zoo-onnx's and requires something (scikit-learn is in no test venv: tests/test_datasets.py skips then).
INSTALL_LINES = {
    "pip install -c constraints.txt -e .": "resolve",
    "pip install -c constraints.txt -e '.[openvino]'": "resolve",
    "pip install 'zoo-onnx[openvino]'": "resolve",
    "pip install 'zoo-onnx[tract]'": "resolve",
    "pip install 'zoo-onnx[dask]'": "resolve",
    "pip install 'zoo-onnx[digits]'": "declared",
    "pip install ./examples/zoo-example-plugin": "install",
    "pip install ./export/runtime": "install",
}


def readme_install_lines() -> set[str]:
    """The `pip install ...` commands of the READMEs: inline code spans and lines of code blocks."""
    found = set()
    for readme in READMES:
        text = readme.read_text(encoding="utf-8")
        snippets = re.findall(r"`([^`\n]+)`", text) + re.findall(r"```\w*\n(.*?)```", text, re.DOTALL)
        found |= {" ".join(line.split()) for snippet in snippets for line in PIP_LINE.findall(snippet)}
    return found


# -- venvs ----------------------------------------------------------------------------------------
def make_venv(where: Path) -> tuple[Path, Path]:
    """A new venv without pip (this interpreter's pip drives it, as ``pip --python``): (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return python, Path(site)


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    """``pip --python PYTHON ARGS`` in the checkout, as the READMEs' relative paths expect."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def run_in(python: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def metadata_in(python: Path, expression: str) -> Any:
    """What ``expression`` (over importlib's ``metadata``) is in the venv of ``python``, through JSON."""
    code = f"import json; from importlib import metadata; print(json.dumps({expression}))"
    result = run_in(python, "-c", code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def requirement_closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, what they require (extras aside)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in found:
            found[name] = metadata.distribution(name)
            for requirement in map(Requirement, found[name].requires or []):
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    todo.append(requirement.name)
    return list(found.values())


def expose(distributions: list[metadata.Distribution], folder: Path, site: Path) -> Path:
    """Link the files of ``distributions`` into ``folder``, put it on the venv's path; return the .pth file."""
    folder.mkdir()
    for distribution in distributions:
        tops = {PurePosixPath(file).parts[0] for file in distribution.files or []} - {".."}  # not bin/ scripts
        for top in tops:
            if not (folder / top).exists():
                (folder / top).symlink_to(Path(distribution.locate_file(top)).resolve())
    pth = site / f"{folder.name}.pth"
    pth.write_text(f"{folder}\n")
    return pth


@pytest.fixture(scope="module")
def project_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv that sees the project venv's packages (zoo-onnx and torch among them) as installed."""
    python, site = make_venv(tmp_path_factory.mktemp("sees-project") / "venv")
    project_site = sysconfig.get_paths()["purelib"]
    # addsitedir, not a plain path line: the project venv's own .pth files (its editable zoo-onnx) must run.
    (site / "project.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    return python


def tree(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, ignored ones included (git status would hide build/)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if "__pycache__" not in path.parts)


# -- zoo-onnx: its name, its install lines ----------------------------------------------------------
def test_the_distribution_is_zoo_onnx_and_no_zoo_is_installed() -> None:
    assert metadata.version(zoo.DISTRIBUTION) == zoo.__version__
    assert "zoo.commands" in {ep.group for ep in metadata.distribution(zoo.DISTRIBUTION).entry_points}
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("zoo")  # PyPI's zoo is an RPC framework; a stale one would claim every plugin twice


def test_every_install_line_of_the_readmes_is_checked() -> None:
    assert readme_install_lines() == set(INSTALL_LINES), "a README install line changed: update INSTALL_LINES"


def test_the_install_hints_of_errors_are_checked_lines_too() -> None:
    from export.run.cluster import INSTALL_HINT
    from export.runtime.backends import DISTRIBUTION

    hints = {INSTALL_HINT, *(f"pip install '{DISTRIBUTION}[{runtime}]'" for runtime in ("openvino", "tract"))}
    assert hints <= set(INSTALL_LINES)


@pytest.mark.parametrize("line", [line for line, how in INSTALL_LINES.items() if how == "resolve"])
def test_an_install_line_resolves_to_this_project(project_venv: Path, tmp_path: Path, line: str) -> None:
    args = shlex.split(line)[2:]
    report = tmp_path / "report.json"
    result = pip(project_venv, "install", *OFFLINE, "--dry-run", "--quiet", "--report", str(report), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    wanted = Requirement(zoo.DISTRIBUTION + args[-1][1:] if args[-1].startswith(".") else args[-1])
    for item in json.loads(report.read_text())["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        if name == zoo.DISTRIBUTION:  # only from this checkout (`-e .`), never from an index
            assert item["download_info"]["url"] == ROOT.as_uri(), item["download_info"]
            assert wanted.extras <= set(item["metadata"].get("provides_extra", [])), item["metadata"]
        else:  # an extra's requirement that the project venv lacks
            assert name in extra_requirements(wanted.extras), f"{line} installs {item['download_info']['url']}"


@pytest.mark.parametrize("line", [line for line, how in INSTALL_LINES.items() if how == "declared"])
def test_a_declared_extra_is_this_projects(line: str) -> None:
    wanted = Requirement(shlex.split(line)[-1])
    assert canonicalize_name(wanted.name) == zoo.DISTRIBUTION and extra_requirements(wanted.extras), line


def extra_requirements(extras: set[str]) -> set[str]:
    """The names of what zoo-onnx's ``extras`` add to its requirements."""
    requirements = map(Requirement, metadata.requires(zoo.DISTRIBUTION) or [])
    return {canonicalize_name(r.name) for r in requirements
            if r.marker is not None and any(r.marker.evaluate({"extra": extra}) for extra in extras)}


def test_example_plugin_installs_with_its_readme_line_and_leaves_its_folder_as_it_was(project_venv: Path) -> None:
    before = tree(EXAMPLE)
    result = pip(project_venv, "install", *OFFLINE, "--quiet", "./examples/zoo-example-plugin")  # with its dependencies
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree(EXAMPLE) == before, "building the example plugin left files in its source folder"
    listed = run_in(project_venv, "-m", "zoo", "list", "activations", "squareplus", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["distribution"] for row in json.loads(listed.stdout)] == ["zoo-example-plugin 0.2.0"]
    assert "zoo-onnx" in metadata_in(project_venv, "metadata.requires('zoo-example-plugin')")


# -- zoo-onnx-runtime: verify and predict without torch -----------------------------------------------
@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with numpy and onnxruntime only, then `pip install ./export/runtime` as the README says."""
    where = tmp_path_factory.mktemp("torch-free")
    python, site = make_venv(where / "venv")
    expose(requirement_closure(["numpy", "onnxruntime"]), where / "numpy-and-onnxruntime", site)
    backend = expose(requirement_closure(["hatchling"]), where / "build-backend", site)
    before = tree(ROOT / "export" / "runtime")
    result = pip(python, "install", *OFFLINE, "--quiet", "./export/runtime")
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree(ROOT / "export" / "runtime") == before, "building zoo-onnx-runtime left files in export/runtime"
    backend.unlink()  # it only built the wheel, as in pip's build isolation
    return python


@pytest.mark.slow
def test_zoo_onnx_runtime_verifies_and_predicts_without_torch(runtime_venv: Path, mlp3_bundle: Path,
                                                               tmp_path: Path) -> None:
    bundle = mlp3_bundle
    importable = run_in(runtime_venv, "-c", "import importlib.util as u; print([m for m in ('torch', 'click', 'zoo', "
                        "'export', 'onnx') if u.find_spec(m)])", cwd=tmp_path)  # not in the checkout: no export
    assert importable.stdout.strip() == "[]", importable.stdout + importable.stderr
    command = runtime_venv.parent / "zoo-onnx-runtime"
    passed = subprocess.run([str(command), "verify", str(bundle)], capture_output=True, text=True, check=False)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.strip().splitlines()[-1].startswith(f"PASS {bundle} [onnxruntime, ")

    x = np.array([[1.0, -2.5, 3.0], [0.0, -0.5, 7.0]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    wrote = run_in(runtime_venv, "-m", "zoo_onnx_runtime", "predict", str(bundle / "model.onnx"),
                   "--input", "x.npy", "-o", "y.npy", cwd=tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    expected = OnnxModel(bundle / "model.onnx").run(x)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    shown = subprocess.run([str(command), "predict", str(bundle), "1", "-2.5", "3", "0", "-0.5", "7"],
                           capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    np.testing.assert_array_equal(np.loadtxt(shown.stdout.splitlines(), dtype=np.float32, ndmin=2), expected)

    damaged = shutil.copytree(bundle, tmp_path / "damaged")
    (damaged / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-1] + b"\0")
    for args in (["verify", str(damaged)], ["verify", str(tmp_path / "nowhere")], ["predict", str(bundle), "1", "2"]):
        failed = subprocess.run([str(command), *args], capture_output=True, text=True, check=False)
        twin = run_zoo(*args)  # `zoo verify` / `zoo predict`, in the project venv
        assert (failed.returncode, one_line_error(failed)) == (twin.returncode, one_line_error(twin)), args
    no_openvino = subprocess.run([str(command), "verify", str(bundle), "--runtime", "openvino"], capture_output=True,
                                 text=True, check=False)
    assert "pip install 'zoo-onnx-runtime[openvino]'" in one_line_error(no_openvino)


@pytest.mark.slow
def test_zoo_onnx_runtime_installs_its_own_files_only(runtime_venv: Path) -> None:
    files = metadata_in(runtime_venv, "[str(file) for file in metadata.files('zoo-onnx-runtime')]")
    tops = {PurePosixPath(file).parts[0] for file in files}
    assert tops == {"zoo_onnx_runtime", f"zoo_onnx_runtime-{zoo.__version__}.dist-info", ".."}, tops  # "..": bin/
    assert metadata_in(runtime_venv, "metadata.version('zoo-onnx-runtime')") == zoo.__version__  # released together
    requires = map(Requirement, metadata_in(runtime_venv, "metadata.requires('zoo-onnx-runtime')"))
    assert {r.name for r in requires if r.marker is None} == {"numpy", "onnxruntime"}  # openvino, tract: extras
