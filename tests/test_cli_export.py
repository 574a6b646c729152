"""`zoo export`, `zoo verify` and `zoo predict` as a user runs them, and every bad input as one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, reseal, run_zoo

import zoo
from export.bundle import write_tensor
from export.runtime import OnnxModel, read_tensor
from zoo.cli import main

TRAIN_FAST = ("--activation", "tanh", "--hidden", "8", "--epochs", "2")

FLIP_PLUGIN = """
from torch import nn


class Flip(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x):
        y = self.fc(x)
        return y if bool(x.sum() > 0) else -y  # tracing keeps one branch: not torch's function


def flip(in_features: int = 1, out_features: int = 1):
    return Flip(in_features, out_features)
"""


def zoo_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """Run `zoo ARGS` in this process (torch already loaded), through the same main() as the script."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) 3-feature, 2-output MLP checkpoint."""
    model = zoo.create_model("mlp", in_features=3, out_features=2, hidden=[8], activation="tanh", seed=0)
    return zoo.save_checkpoint(tmp_path_factory.mktemp("checkpoints") / "mlp3.pt", model)


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    """`zoo export CHECKPOINT -o DIR --test-data`, run once as a user would."""
    out = tmp_path_factory.mktemp("cli-bundles") / "mlp3"
    result = run_zoo("export", str(checkpoint), "-o", str(out), "--test-data")
    assert result.returncode == 0, result.stderr
    assert f"wrote bundle {out} (opset 17, torchscript, float32, dynamic batch)" in result.stdout
    assert "parity: ok" in result.stdout
    return out


# -- the happy paths -------------------------------------------------------------------------------
def test_export_a_model_name_trains_it_first(tmp_path):
    out = tmp_path / "mlp.onnx"
    result = run_zoo("export", "mlp", *TRAIN_FAST, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["path"] == str(out) and summary["bundle"] is False and summary["opset"] == 17
    assert summary["parity"]["ok"] is True and summary["parity"]["max_abs_error"] < 1e-3
    assert summary["training"]["recipe"]["epochs"] == 2 and summary["training"]["final_loss"] > 0
    assert OnnxModel(out).metadata["zoo.config"]["activation"] == "tanh"
    assert os.listdir(tmp_path) == ["mlp.onnx"]


def test_export_computing_in_float64(checkpoint, tmp_path):
    out = tmp_path / "wide.onnx"
    result = run_zoo("export", str(checkpoint), "-o", str(out), "--compute", "float64")
    assert result.returncode == 0, result.stderr
    assert "(opset 17, torchscript, float32 computed in float64, dynamic batch)" in result.stdout
    model = OnnxModel(out)
    assert model.metadata["zoo.compute"] == "float64" and model.dtype == np.float32
    assert model.run(np.ones((2, 3), np.float32)).dtype == np.float32


def test_verify_a_bundle(bundle):
    result = run_zoo("verify", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"PASS {bundle}")
    report = json.loads(run_zoo("verify", str(bundle / "model.onnx"), "--json").stdout)
    assert report["ok"] is True and len(report["outputs"]) == 1 and report["runtime"] == "onnxruntime"
    assert 0 < report["worst_ratio"] <= 1 and report["outputs"][0]["counts"]["nan"] > 0


def test_predict_values_and_files(bundle, tmp_path):
    model = OnnxModel(bundle / "model.onnx")
    x = np.array([[1.0, -2.5, 3.0], [0.0, -0.5, 7.0]], dtype=np.float32)
    expected = model.run(x)

    shown = run_zoo("predict", str(bundle / "model.onnx"), "1", "-2.5", "3", "0", "-0.5", "7")
    assert shown.returncode == 0, shown.stderr
    rows = [[float(v) for v in line.split()] for line in shown.stdout.strip().splitlines()]
    np.testing.assert_array_equal(np.array(rows, dtype=np.float32), expected)

    np.save(tmp_path / "x.npy", x)
    written = run_zoo(
        "predict", str(bundle), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")
    )
    assert written.returncode == 0, written.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)

    as_json = json.loads(run_zoo("predict", str(bundle), "nan", "inf", "-inf", "--json").stdout)
    assert set(as_json["outputs"]) == {"output"} and len(as_json["outputs"]["output"]) == 1

    probes = next(p for p in sorted(bundle.glob("test_data_set_*/input_0.pb")) if np.isnan(read_tensor(p).array).any())
    replayed = run_zoo("predict", str(bundle), "--input", str(probes), "--json")
    outputs = np.array(json.loads(replayed.stdout)["outputs"]["output"], dtype=object).astype(np.float32)
    assert np.isnan(outputs).any()  # written as "nan", read back as NaN
    np.testing.assert_array_equal(outputs, model.run(read_tensor(probes).array))


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """A CNN trained briefly on shapes (whose classes have names) and a transformer over tokens, exported; inputs."""
    from export import to_onnx

    where = tmp_path_factory.mktemp("classifiers")
    cnn = zoo.create_model("cnn", input_shape=[1, 12, 12], widths=[4], seed=0)
    shapes = zoo.datasets.create("shapes", seed=0, n=8, n_test=5, size=12)
    zoo.train(cnn, shapes, epochs=1, progress=False)
    np.save(where / "images.npy", shapes.test.x.numpy())  # (N, C, H, W)
    np.save(where / "ids.npy", np.random.default_rng(0).integers(0, 10, (3, 6)))  # (N, L) token ids
    np.save(where / "bad_ids.npy", np.array([[1, 2, 12]]))
    sequences = zoo.create_model("transformer", width=8, depth=1, heads=2, seed=0)
    return where, to_onnx(cnn, where / "cnn.onnx"), to_onnx(sequences, where / "seq.onnx")


def test_predict_names_the_class_of_each_image_and_sequence(capsys, classifiers):
    where, cnn, sequences = classifiers
    images, ids = np.load(where / "images.npy"), np.load(where / "ids.npy")
    logits = OnnxModel(cnn).run(images)
    labels = ["circle", "square", "triangle", "cross"]
    shown = zoo_here(capsys, "predict", str(cnn), "--input", str(where / "images.npy"))
    assert shown.stdout.splitlines() == [f"{k} {labels[k]}" for k in logits.argmax(axis=1)], shown.stderr
    as_json = json.loads(zoo_here(capsys, "predict", str(cnn), "--input", str(where / "images.npy"), "--json").stdout)
    assert as_json["predictions"] == logits.argmax(axis=1).tolist() and as_json["labels"] == labels
    np.testing.assert_array_equal(np.array(as_json["outputs"]["output"], dtype=np.float32), logits)

    shown = zoo_here(capsys, "predict", str(sequences), "--input", str(where / "ids.npy"))
    expected = OnnxModel(sequences).run(ids).argmax(axis=-1)  # one class per position, any length
    assert shown.stdout.splitlines() == [" ".join(map(str, row)) for row in expected]
    written = zoo_here(capsys, "predict", str(sequences), "--input", str(where / "ids.npy"), "-o",
                       str(where / "logits.npy"))
    assert written.returncode == 0 and np.load(where / "logits.npy").shape == (3, 6, 10)  # -o keeps the logits
    assert_one_line_error(zoo_here(capsys, "predict", str(sequences), "--input", str(where / "bad_ids.npy")),
                          "token id 12 is not one of the model's 10 tokens (0 to 9)")


def test_verify_and_predict_never_import_torch_or_onnx(bundle):
    code = (
        "import sys\n"
        "from zoo.cli import main\n"
        f"for args in (['verify', {str(bundle)!r}], ['predict', {str(bundle)!r}, '1', '2', '3']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit_:\n"
        "        assert exit_.code == 0, exit_.code\n"
        "print('heavy:', sorted(m for m in ('torch', 'onnx') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy: []"


# -- failures: non-zero exit, one line, nothing on disk ---------------------------------------------
def test_a_parity_failure_prints_the_worst_inputs_and_writes_nothing(third_party, tmp_path):
    third_party("zoo-flip", {"zoo.models": {"flip": "flip_plugin:flip"}}, {"flip_plugin.py": FLIP_PLUGIN})
    out = tmp_path / "out"
    out.mkdir()
    result = run_zoo(
        "export", "flip", "--dataset", "nonlinear", "--epochs", "1", "-o", str(out / "flip.onnx")
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"zoo: error: FAIL {out / 'flip.onnx'}") and "worst:" in lines[-1]
    assert "bound" in lines[-1] and ("first node out of its bound" in lines[-1] or "output node" in lines[-1])
    assert "Traceback" not in result.stderr and os.listdir(out) == []


def test_another_models_expectations_fail_verification(bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    for stem in ("output_0", "reference_0"):  # another model's expectations, float64 reference included
        y = read_tensor(copy / "test_data_set_1" / f"{stem}.pb").array
        write_tensor(copy / "test_data_set_1" / f"{stem}.pb", y + 0.5, name="output")
    result = run_zoo("verify", str(reseal(copy)))
    assert_one_line_error(result, "FAIL", "worst (finite) of output 'output'", "at row")
    assert "FAIL output 'output'" in result.stdout and "of its worst-case bound and" in result.stdout
    assert "of its worst-case bound and" not in result.stderr  # the details once, on stdout; the verdict once, on stderr


def test_a_damaged_bundle_is_one_line_and_json(capsys, bundle, tmp_path):
    copy = shutil.copytree(bundle, tmp_path / "copy")
    (copy / "test_data_set_3" / "output_0.pb").unlink()
    line = f"bundle damaged: test_data_set_3/output_0.pb missing ({copy} "
    assert_one_line_error(zoo_here(capsys, "verify", str(copy)), line)
    as_json = zoo_here(capsys, "verify", str(copy), "--json")
    assert_one_line_error(as_json, line)
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["summary"].startswith(line)
    assert report["damaged"] == [{"path": "test_data_set_3/output_0.pb", "problem": "missing"}]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("export", "mpl", "-o", "{tmp}/m.onnx"), ("unknown model 'mpl'", "did you mean 'mlp'")),
        (("export", "mlp", "-o", "{tmp}/m.onnx", "--opset", "99"), ("opset 99", "13..")),
        (("export", "mlp", "-o", "{tmp}/m.onnx", "--exporter", "dynamo", "--opset", "17"), ("choose an opset in 18..",)),
        (("export", "mlp", "-o", "{tmp}/no/such/dir/m.onnx", "--opset", "99"), ("opset 99",)),  # no dir left
        (("export", "{ckpt}", "-o", "{tmp}/existing/m.onnx"), ("existing is a file, not a directory",)),
        (("export", "{ckpt}", "-o", "{tmp}/m"), ("an ONNX model file ends in .onnx (e.g. m.onnx)",)),
        (("export", "{tmp}/nope.pt", "-o", "{tmp}/m.onnx"), ("no checkpoint file",)),
        (("export", "{ckpt}", "-o", "{tmp}/m.onnx", "--epochs", "3"), ("--epochs", "apply to a model name")),
        (("export", "{ckpt}", "-o", "{tmp}/notes/keep.txt"), ("ends in .onnx",)),
        (("export", "{ckpt}", "-o", "{tmp}/notes", "--test-data"), ("is not a zoo bundle",)),
        (
            ("export", "mlp", "-o", "{tmp}/m.onnx", "--dtype", "float16", "--compute", "float32"),
            ("compute must be 'float16' or 'float64' for a float16 export",),
        ),
        (("export", "no_such_package.nets:make", "-o", "{tmp}/m.onnx", "--input-shape", "4"),
         ("cannot import 'no_such_package.nets' for no_such_package.nets:make", "ModuleNotFoundError")),
        (("export", "torch.nn:Nope", "-o", "{tmp}/m.onnx", "--input-shape", "4"), ("'torch.nn' has no 'Nope'",)),
        (("export", "collections:OrderedDict", "-o", "{tmp}/m.onnx", "--input-shape", "4"),
         ("collections:OrderedDict returned a OrderedDict, not a torch.nn.Module",)),
        (("export", "torch.nn:Linear", "--arg", "in_features=4", "-o", "{tmp}/m.onnx", "--input-shape", "4"),
         ("torch.nn:Linear(in_features=4) raised TypeError", "out_features")),
        (("export", "torch.nn:Tanh", "-o", "{tmp}/m.onnx"), ("--input-shape is needed", "builds a Tanh")),
        (("export", "torch.nn:Tanh", "--input-shape", "4", "--epochs", "3", "-o", "{tmp}/m.onnx"),
         ("--epochs", "apply to a model name, not to a factory")),
        (("export", "mlp", "--input-shape", "4", "-o", "{tmp}/m.onnx"), ("apply to a factory (package.module:function)",)),
        (("export", "torch.nn:Tanh", "--arg", "oops", "--input-shape", "4", "-o", "{tmp}/m.onnx"),
         ("'oops' is not key=value",)),
        (("export", "torch.nn:Tanh", "--input-shape", "4", "--dynamic-axis", "2", "-o", "{tmp}/m.onnx"),
         ("dynamic axis 2 is not an axis of the example input of shape [2, 4]",)),
        (("export", "torch.nn:PixelShuffle", "--arg", "upscale_factor=2", "--input-shape", "4,2,2", "-o", "{tmp}/m.onnx"),
         ("no parity rule for aten.pixel_shuffle.default, called by the model itself (PixelShuffle)",)),
    ],
)
def test_bad_export_input_is_one_line(capsys, monkeypatch, checkpoint, tmp_path, args, fragments):
    monkeypatch.setattr(sys, "path", list(sys.path))  # a factory's import may add the working directory
    (tmp_path / "existing").write_bytes(b"precious")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    args = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    assert_one_line_error(zoo_here(capsys, *args), *fragments)
    assert sorted(os.listdir(tmp_path)) == ["existing", "notes"]
    assert (tmp_path / "existing").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("predict", "{tmp}/missing.onnx", "1"), ("no such ONNX model file",)),
        (("predict", "{tmp}/truncated.onnx", "1"), ("truncated or not an ONNX model",)),
        (("predict", "{tmp}/x.npy", "1"), ("not an ONNX model",)),
        (("predict", "{model}", "1", "2"), ("got 2 values, not a multiple of the model's 3 input features",)),
        (
            ("predict", "{model}", "--input", "{tmp}/x.npy"),
            ("expected input of shape (batch, 3) float32, got (4, 2)",),
        ),
        (("predict", "{model}", "--input", "{tmp}/words.npy"), ("(batch, 3) float32", "dtype <U")),
        (("predict", "{model}", "--input", "{tmp}/truncated.onnx"), ("truncated.onnx is not a .npy file",)),
        (("predict", "{model}", "--input", "{tmp}/none.npy"), ("no such input file",)),
        (("predict", "{model}", "1", "2", "3", "-o", "{tmp}/x.npy/y.npy"), ("x.npy is a file, not a directory",)),
        (("predict", "{model}", "1", "2", "3", "-o", "{tmp}/adir"), ("cannot write", "adir: it is a directory")),
        (("predict", "{model}", "1", "2", "3", "-o", "{tmp}/y.txt"), ("ends in .npy or .npz (e.g. y.npy)",)),
        (("predict", "{model}", "--input", "{tmp}/empty.npy"), ("empty.npy holds no rows (shape (0, 3))",)),
        (
            ("predict", "{model}", "1", "2", "3", "--input", "{tmp}/x.npy"),
            ("either as VALUES or with --input",),
        ),
        (("predict", "{model}"), ("either as VALUES or with --input",)),
        (("predict", "{model}", "1", "--jsno"), ("'--jsno' is not a valid float",)),
        (("predict", "{ckpt}", "1"), ("is a torch checkpoint", "export it first with `zoo export", "-o mlp3.onnx`")),
        (("predict", "{model}", "--input", "{tmp}/rows.txt"), ("rows.txt is not a .npy file", "numpy.save(")),
        (("verify", "{tmp}"), ("is not a bundle: no manifest.json",)),
        (("verify", "{tmp}/nowhere"), ("no such bundle",)),
    ],
)
def test_bad_predict_and_verify_input_is_one_line(capsys, bundle, checkpoint, tmp_path, args, fragments):
    (tmp_path / "truncated.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:300])
    (tmp_path / "rows.txt").write_text("1 2 3\n4 5 6\n")
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    np.save(tmp_path / "words.npy", np.array([["a", "b", "c"]]))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    (tmp_path / "adir").mkdir()
    before = sorted(os.listdir(tmp_path))
    args = [a.format(tmp=tmp_path, model=bundle / "model.onnx", ckpt=checkpoint) for a in args]
    assert_one_line_error(zoo_here(capsys, *args), *fragments)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "adir") == []


NETS = """
from torch import nn


def tokens(width=8):
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 6))
"""


def test_export_a_factory_with_a_dynamic_length(tmp_path, monkeypatch):
    """`zoo export nets:tokens` from the working directory: any length, parity at every length, same bytes as the API."""
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    result = run_zoo("export", "nets:tokens", "--arg", "width=4", "--input-shape", "8,6", "--dynamic-axis", "1",
                     "--test-data", "-o", "tokens", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parity"]["ok"] and summary["source"] == "nets:tokens" and summary["training"] is None
    assert [8, 6] in summary["parity"]["sample_shapes"] and [17, 6] in summary["parity"]["sample_shapes"]
    model = OnnxModel(tmp_path / "tokens" / "model.onnx")
    assert model.input_shape == ("batch", "sequence", 6) and model.run(np.zeros((3, 5, 6), np.float32)).shape == (3, 5, 6)
    monkeypatch.syspath_prepend(str(tmp_path))
    from export.factory import build
    from export.onnx_export import seeded_example, to_onnx

    again = to_onnx(build("nets:tokens", {"width": 4}), tmp_path / "again.onnx", example_input=seeded_example([8, 6]),
                    dynamic_axes=(1,))
    assert again.read_bytes() == (tmp_path / "tokens" / "model.onnx").read_bytes()


def test_export_creates_missing_directories_and_replaces_only_with_force(capsys, checkpoint, tmp_path):
    out = tmp_path / "new" / "dir" / "m.onnx"
    assert zoo_here(capsys, "export", str(checkpoint), "-o", str(out)).returncode == 0 and out.is_file()
    again = zoo_here(capsys, "export", str(checkpoint), "-o", str(out))
    assert_one_line_error(again, f"{out} already exists; pass --force to replace it")
    assert "overwrite=True" not in again.stderr
    assert zoo_here(capsys, "export", str(checkpoint), "-o", str(out), "--force").returncode == 0


def test_static_batch_says_its_size_and_takes_the_one_asked_for(capsys, checkpoint, tmp_path):
    shown = zoo_here(capsys, "export", str(checkpoint), "-o", str(tmp_path / "two.onnx"), "--static-batch")
    assert "(opset 17, torchscript, float32, static batch of 2 rows)" in shown.stdout, shown.stderr
    assert OnnxModel(tmp_path / "two.onnx").input_shape == (2, 3)
    chosen = zoo_here(capsys, "export", str(checkpoint), "-o", str(tmp_path / "five.onnx"), "--static-batch", "5",
                      "--json")
    summary = json.loads(chosen.stdout)
    assert summary["dynamic_batch"] is False and summary["static_batch"] == 5 and summary["parity"]["ok"] is True
    assert OnnxModel(tmp_path / "five.onnx").input_shape == (5, 3)
    assert "at N rows (2 when N is not given)" in " ".join(zoo_here(capsys, "export", "--help").stdout.split())
    assert_one_line_error(zoo_here(capsys, "export", str(checkpoint), "-o", str(tmp_path / "z.onnx"),
                                   "--static-batch", "0"), "--static-batch")


def test_export_of_an_onnx_file_says_it_is_no_checkpoint(capsys, bundle, tmp_path):
    shutil.copy(bundle / "model.onnx", tmp_path / "model.onnx")
    result = zoo_here(capsys, "export", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "again.onnx"))
    assert_one_line_error(result, "model.onnx is an ONNX model, not a checkpoint")
    assert len(result.stderr) < 200 + len(str(tmp_path))


def test_help_states_the_values_rule(capsys):
    shown = zoo_here(capsys, "predict", "--help").stdout
    assert "N*F values make" in shown and "N rows of F" in shown
    assert "--test-data" in zoo_here(capsys, "export", "--help").stdout
