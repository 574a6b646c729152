"""Every command that takes a path refuses a bad one before torch is imported, and `zoo run -o` guards its folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from export.run.outdir import OutputDirError, check_out_dir, clear_run

ONE_ROW = ("--only", "linreg-linear")  # should a run start, it ends in seconds (and the test fails)
# (the command, a fragment of its one-line error); {tmp} is a folder prepared by `paths` below.
BAD_PATHS = [
    (["export", "{tmp}/missing.pt", "-o", "{tmp}/m.onnx"], "no checkpoint file at"),
    (["export", "mlp", "-o", "{tmp}/a_file/m.onnx"], "a_file is a file, not a directory"),
    (["export", "mlp", "-o", "{tmp}/m.txt"], "ends in .onnx"),
    (["export", "mlp", "-o", "{tmp}/old.onnx"], "old.onnx already exists; pass --force to replace it"),
    (["export", "mlp", "-o", "{tmp}/notes", "--test-data", "--force"], "is not a zoo bundle"),
    (["train", "mlp", "-o", "{tmp}/m.onnx"], "a checkpoint file ends in .pt"),
    (["predict", "{tmp}/missing.onnx", "1"], "no such ONNX model file"),
    (["predict", "{tmp}/old.onnx", "1", "-o", "{tmp}/y.txt"], "ends in .npy or .npz"),
    (["verify", "{tmp}/nowhere"], "no such bundle"),
    (["run", "-o", "{tmp}/notes", *ONE_ROW], "notes is not empty and holds no zoo run (no report.json)"),
    (["run", "-o", "{tmp}/notes", *ONE_ROW, "--force"], "--force replaces only an earlier zoo run"),
    (["run", "-o", "{tmp}/a_file/out", *ONE_ROW], "a_file is a file, not a directory"),
    (["run", "-o", "{tmp}/earlier", *ONE_ROW], "holds an earlier zoo run; pass --force to replace it, or choose"),
    (["run", "-o", "{tmp}/earlier", *ONE_ROW, "--force"], "also holds notes.txt, which no zoo run writes"),
    (["plot", "activations", "relu", "-o", "{tmp}/a.jpg"], "cannot write"),
]

# Runs each command through the `zoo` script's main() in one fresh interpreter; records its exit
# status, its stderr and whether torch had been imported by then.
CHECK_EACH = """
import contextlib, io, json, sys
from zoo.cli import main

results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    results.append({"args": args, "code": code, "stderr": err.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


def earlier_run(folder: Path, *, pictures: tuple[str, ...] = ("training.png",)) -> Path:
    """What a `zoo run` leaves in `folder`: report.json naming its pictures, report.md, pictures, models/."""
    (folder / "models" / "mlp-relu").mkdir(parents=True)
    (folder / "models" / "mlp-relu" / "model.onnx").write_bytes(b"onnx")
    report = {"zoo_version": "0", "ok": True, "settings": {}, "models": [], "pictures": list(pictures)}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text("# zoo run\n")
    for picture in pictures:
        (folder / picture).write_bytes(b"png")
    return folder


@pytest.fixture
def paths(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("a file where a folder is expected")
    (tmp_path / "old.onnx").write_bytes(b"an earlier export")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    earlier_run(tmp_path / "earlier")
    (tmp_path / "earlier" / "notes.txt").write_text("mine, put beside the run")
    return tmp_path


def test_bad_paths_are_refused_before_torch_is_imported(paths: Path) -> None:
    cases = [[arg.format(tmp=paths) for arg in args] for args, _ in BAD_PATHS]
    before = sorted(str(p.relative_to(paths)) for p in paths.rglob("*"))
    result = subprocess.run([sys.executable, "-c", CHECK_EACH, json.dumps(cases)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    for (_, fragment), done in zip(BAD_PATHS, json.loads(result.stdout), strict=True):
        lines = done["stderr"].strip().splitlines()
        assert done["code"] != 0 and len(lines) == 1 and lines[0].startswith("zoo: error: "), done
        assert fragment in lines[0], done
        assert not done["torch"], f"zoo {' '.join(done['args'])} imported torch before refusing its path"
    assert sorted(str(p.relative_to(paths)) for p in paths.rglob("*")) == before  # nothing written, nothing cleared


def test_force_clears_only_what_the_earlier_run_wrote(tmp_path: Path) -> None:
    out = earlier_run(tmp_path / "out", pictures=("training.png", "activations.png"))
    with pytest.raises(OutputDirError, match="pass --force"):
        check_out_dir(out, force=False)
    assert check_out_dir(out, force=True) is True
    clear_run(out)
    assert list(out.iterdir()) == []
    assert check_out_dir(out, force=False) is False  # an empty folder is fine, as is a missing one
    assert check_out_dir(tmp_path / "new", force=False) is False


def test_a_report_cannot_make_force_remove_anything_else(tmp_path: Path) -> None:
    """A report.json naming files outside the run (a hand-edited or hostile one) clears nothing but the run's own."""
    (tmp_path / "sibling.png").write_bytes(b"not the run's")
    out = earlier_run(tmp_path / "out")
    report = json.loads((out / "report.json").read_text())
    report["pictures"] += ["../sibling.png", "..", str(tmp_path / "sibling.png")]
    (out / "report.json").write_text(json.dumps(report))
    (out / "extra.png").write_bytes(b"a picture the report does not name")
    with pytest.raises(OutputDirError, match="extra.png, which no zoo run writes"):
        check_out_dir(out, force=True)
    (out / "extra.png").unlink()
    assert check_out_dir(out, force=True)
    clear_run(out)
    assert list(out.iterdir()) == [] and (tmp_path / "sibling.png").read_bytes() == b"not the run's"


def test_a_folder_that_merely_holds_a_report_json_is_no_run(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"title": "someone else's report"}))
    with pytest.raises(OutputDirError, match="holds no zoo run"):
        check_out_dir(tmp_path, force=True)
    assert (tmp_path / "report.json").exists()
