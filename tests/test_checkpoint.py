"""Checkpoints: one file, rebuilt from names, written atomically, bad files refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import CheckpointError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained():
    model = zoo.create_model("linear_regression", layer="einsum_linear", seed=0)
    result = zoo.train(model, zoo.datasets.create("linear", seed=0), recipe="notes", progress=False)
    return model, result


def assert_same_model(loaded: nn.Module, model: nn.Module) -> None:
    assert type(loaded) is type(model) and loaded.zoo_config == model.zoo_config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v.cpu()) for k, v in model.state_dict().items())


def test_round_trip_rebuilds_the_trained_model(trained, tmp_path):
    model, result = trained
    path = zoo.save_checkpoint(tmp_path / "linreg.pt", model, result)
    loaded = zoo.load_checkpoint(path)
    assert_same_model(loaded, model)
    assert not loaded.training and loaded.zoo_training == result.summary() == model.zoo_training
    x = torch.linspace(0, 100, 7).unsqueeze(1)
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["linreg.pt"]  # one file, no temporary left


def test_the_file_is_plain_data_loadable_with_weights_only(trained, tmp_path):
    model, result = trained
    record = torch.load(zoo.save_checkpoint(tmp_path / "m.pt", model, result), weights_only=True)
    assert record["format"] == "zoo.checkpoint" and record["version"] == 1
    assert record["config"] == {"name": "linear_regression", "in_features": 1, "out_features": 1,
                                "layer": "einsum_linear", "seed": 0}
    assert record["training"]["dataset"]["name"] == "linear" and record["training"]["recipe"]["name"] == "notes"
    assert record["training"]["metrics"] == result.metrics
    assert record["versions"] == {"zoo": zoo.__version__, "torch": torch.__version__}
    assert set(record["state_dict"]) == {"weight", "bias"}


def test_mlp_with_an_activation_variant_round_trips(tmp_path):
    model = zoo.create_model("mlp", hidden=[4, 3], activation={"name": "softplus", "beta": 2}, layer="param_linear",
                             seed=3)
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(tmp_path / "nested" / "dir" / "mlp.pt", model))
    assert_same_model(loaded, model)
    assert loaded.act0.beta == 2 and not hasattr(loaded, "zoo_training")  # never trained


def test_save_uses_the_models_training_summary_without_a_result(trained, tmp_path):
    model, _ = trained
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(tmp_path / "m.pt", model))
    assert loaded.zoo_training == model.zoo_training


def test_a_model_without_zoo_config_cannot_be_checkpointed(tmp_path):
    with pytest.raises(CheckpointError, match="no zoo_config to rebuild it from"):
        zoo.save_checkpoint(tmp_path / "m.pt", nn.Linear(1, 1))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_previous_file_whole(trained, tmp_path):
    model, result = trained
    path = zoo.save_checkpoint(tmp_path / "m.pt", model, result)
    before = path.read_bytes()
    broken = zoo.create_model("linear_regression", seed=1)
    broken.zoo_training = {"when": object()}  # not JSON: refused before anything is written
    with pytest.raises(CheckpointError, match="training summary is not plain JSON"):
        zoo.save_checkpoint(path, broken)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        zoo.load_checkpoint(tmp_path / "absent.pt")


def test_a_truncated_file_is_a_clear_error(trained, tmp_path):
    path = zoo.save_checkpoint(tmp_path / "m.pt", *trained)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is not a zoo checkpoint: truncated"):
        zoo.load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weights": torch.zeros(2)}, "is a torch file but not a zoo checkpoint"),
        ([1, 2, 3], "is a torch file but not a zoo checkpoint"),
        (nn.Linear(1, 1), "holds pickled Python objects, which zoo never loads$"),  # weights_only refuses it
        ({"format": "zoo.checkpoint", "version": 99}, "has checkpoint version 99; this zoo reads 1"),
        ({"format": "zoo.checkpoint", "version": 1, "config": {"name": "no_such_model"}, "state_dict": {}},
         "cannot rebuild its model .*unknown model 'no_such_model'"),
        ({"format": "zoo.checkpoint", "version": 1, "config": {"name": "linear_regression"},
          "state_dict": {"weight": torch.zeros(3, 3)}}, "cannot rebuild its model"),
    ],
)
def test_a_foreign_torch_file_is_a_clear_error(content, message, tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        zoo.load_checkpoint(path)


def test_a_text_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is not a zoo checkpoint: truncated, or not written by"):
        zoo.load_checkpoint(path)


def test_a_corrupt_checkpoint_is_one_short_line_without_torch_advice(tmp_path):
    model = zoo.create_model("linear_regression", seed=0)
    data = zoo.save_checkpoint(tmp_path / "whole.pt", model).read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as caught:
            zoo.load_checkpoint(path)
        message = str(caught.value)
        assert "\n" not in message and "weights_only" not in message and len(message) < 200 + len(str(path))


def test_an_onnx_model_is_named_as_such_not_as_a_bad_checkpoint(tmp_path):
    from export import to_onnx

    model = zoo.create_model("linear_regression", seed=0)
    onnx_path = to_onnx(model, tmp_path / "lin.onnx")
    for path in (onnx_path, tmp_path / "renamed.pt"):
        path.write_bytes(onnx_path.read_bytes())
        with pytest.raises(CheckpointError, match="is an ONNX model, not a checkpoint"):
            zoo.load_checkpoint(path)


def test_the_seed_is_in_zoo_config_and_rebuilds_the_same_weights():
    net = zoo.create_model("mlp", hidden=[4], seed=7)
    assert net.zoo_config["seed"] == 7
    rebuilt = zoo.create_model(**net.zoo_config)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), rebuilt.state_dict().values()))


@cuda
@pytest.mark.cuda
def test_round_trip_from_cuda(tmp_path):
    model = zoo.create_model("mlp", hidden=[8], seed=0)
    result = zoo.train(model, zoo.datasets.create("nonlinear", seed=0, n=200), device="cuda", epochs=2,
                       progress=False)
    assert next(model.parameters()).device.type == "cuda"
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(tmp_path / "gpu.pt", model, result))
    assert next(loaded.parameters()).device.type == "cpu"
    assert_same_model(loaded, model)
    assert loaded.zoo_training["device"].startswith("cuda")
