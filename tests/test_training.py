"""zoo.train on the built-in models and datasets: recipes, optimum, safety, determinism, devices."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import BadArgumentsError, DeviceError, DivergenceError, TrainingError, UnknownNameError

LAYERS = ["einsum_linear", "param_linear", "linear"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def linear_data():
    return zoo.datasets.create("linear", seed=0)


def ols(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least squares with a bias column, in float64: (coefficients with the bias last, MSE)."""
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double()).solution
    return solution, ((design @ solution - y.double()) ** 2).mean().item()


@pytest.mark.parametrize("layer", LAYERS)
def test_default_recipe_reaches_least_squares(layer, linear_data):
    (w_ols, b_ols), mse_ols = ols(linear_data.x, linear_data.y)
    model = zoo.create_model("linear_regression", layer=layer, seed=0)
    result = zoo.train(model, linear_data, seed=0, epochs=1, progress=False)  # one step, as the README says
    assert abs(model.weight.item() - w_ols.item()) < 0.01
    assert abs(model.bias.item() - b_ols.item()) < 0.05
    assert result.final_loss <= 1.01 * mse_ols
    assert result.metrics == {"mse": result.final_loss}


@pytest.mark.parametrize("layer", LAYERS)
def test_notes_recipe_reproduces_the_notes(layer, linear_data):
    model = zoo.create_model("linear_regression", layer=layer, seed=0)
    result = zoo.train(model, linear_data, recipe="notes", progress=False)
    assert 9.94 < model.weight.item() < 9.98  # the notes: 9.95-9.97
    assert model.bias.item() - 5 > 2  # the notes: 8.1-9.0, far from the true 5
    assert result.steps == 500 and len(result.history) == 5
    assert result.recipe == {
        "name": "notes", "optimizer": "adam", "lr": 0.1, "weight_decay": 0.1, "epochs": 5,
        "batch_size": 100, "shuffle": False, "schedule": None, "seed": 0,
    }


def test_logistic_regression_reaches_the_bayes_accuracy():
    data = zoo.datasets.create("blobs", seed=0)
    bayes = ((data.x.sum(dim=1, keepdim=True) > 0).float() == data.y).float().mean().item()
    model = zoo.create_model("logistic_regression", seed=0)
    result = zoo.train(model, data, progress=False)
    assert set(result.metrics) == {"bce", "accuracy"}
    assert result.metrics["accuracy"] >= bayes - 0.01
    predicted = ((model(data.x) > 0).float() == data.y).float().mean().item()
    assert predicted == pytest.approx(result.metrics["accuracy"])


def test_mlp_beats_the_best_linear_fit_by_far():
    data = zoo.datasets.create("nonlinear", seed=0, n=1000)
    _, linear_mse = ols(data.x, data.y)
    model = zoo.create_model("mlp", hidden=[32, 32], seed=0)
    result = zoo.train(model, data, progress=False)
    assert result.final_loss < 0.1 * linear_mse
    assert result.final_loss < 0.03  # the noise floor is 0.01


def test_result_and_model_after_training(linear_data):
    model = zoo.create_model("linear_regression", seed=0)
    model.train()
    result = zoo.train(model, linear_data, epochs=3, progress=False)
    assert not model.training
    assert result.device == "cpu" and result.recipe["batch_size"] == len(linear_data) and result.seconds > 0
    # L-BFGS's first step lands on least squares, the second cannot improve it: training stops there
    assert result.steps == len(result.history) == 2 and result.history[0] == result.history[1] == result.final_loss
    assert json.loads(json.dumps(result.to_json()))["history"] == result.history
    summary = model.zoo_training
    assert summary == result.summary() and "history" not in summary
    assert summary["dataset"] == {"name": "linear", "task": "regression", "rows": 10000, "heldout_rows": 0,
                                  "params": linear_data.params}
    assert summary["heldout"] == {}  # linear has no held-out rows
    json.dumps(summary, allow_nan=False)


def test_history_is_the_loss_on_all_rows_after_each_epoch():
    """One loss, defined once: history[i] is what training for i + 1 epochs ends at; final_loss is the last."""
    data = zoo.datasets.create("nonlinear", seed=0, n=300)

    def run(epochs: int) -> tuple[nn.Module, zoo.TrainResult]:
        model = zoo.create_model("mlp", hidden=[8], activation="rrelu", seed=0)  # random slopes in training mode
        return model, zoo.train(model, data, recipe="notes", epochs=epochs, progress=False)

    model, result = run(3)
    assert result.final_loss == result.history[-1] == result.metrics["mse"] and len(result.history) == 3
    with torch.no_grad():
        assert result.final_loss == pytest.approx(nn.functional.mse_loss(model(data.x), data.y).item(), rel=1e-6)
    assert [run(epochs)[1].final_loss for epochs in (1, 2)] == result.history[:2]


def test_explicit_arguments_override_the_recipe(linear_data):
    model = zoo.create_model("linear_regression", seed=0)
    result = zoo.train(model, linear_data, recipe="notes", epochs=1, batch_size=1000, weight_decay=0.0, progress=False)
    assert (result.recipe["epochs"], result.recipe["batch_size"], result.recipe["weight_decay"]) == (1, 1000, 0.0)
    assert result.steps == 10 and result.recipe["lr"] == 0.1
    # another optimizer without an lr gets that optimizer's own rate, not the recipe's
    switched = zoo.train(model, linear_data, optimizer="sgd", epochs=1, batch_size=5000, progress=False)
    assert switched.recipe["optimizer"] == "sgd" and switched.recipe["lr"] == 0.01


def test_same_seed_gives_bit_identical_parameters_on_cpu(linear_data):
    def run(seed: int) -> list[torch.Tensor]:
        model = zoo.create_model("mlp", hidden=[8], seed=0)
        data = zoo.datasets.create("nonlinear", seed=0, n=300)
        zoo.train(model, data, optimizer="adam", lr=0.01, batch_size=32, epochs=3, seed=seed, progress=False)
        return [p.detach().clone() for p in model.parameters()]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))  # the seed orders the batches


def test_training_leaves_the_callers_random_state_alone(linear_data):
    model = zoo.create_model("linear_regression")
    state = torch.get_rng_state()
    zoo.train(model, linear_data, epochs=1, progress=False)
    assert torch.equal(state, torch.get_rng_state())


def test_prediction_target_shape_mismatch_is_an_error(linear_data):
    flat = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0))  # (N,) against targets (N, 1): the notes' bug
    with pytest.raises(TrainingError, match=r"predicts shape \(2,\) but the targets have shape \(2, 1\)"):
        zoo.train(flat, linear_data, progress=False)
    assert not hasattr(flat, "zoo_training")


class FlattensBigBatches(nn.Module):
    """Right shape on two rows, (N,) on more: only a check at every step catches it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out.flatten() if len(x) > 2 else out


def test_shape_is_checked_at_every_step(linear_data):
    with pytest.raises(TrainingError, match=r"predicts shape \(100,\) but the targets have shape \(100, 1\)"):
        zoo.train(FlattensBigBatches(), linear_data, recipe="notes", progress=False)


def test_model_that_cannot_take_the_inputs_is_a_training_error():
    data = zoo.datasets.create("blobs", seed=0)
    with pytest.raises(TrainingError, match=r"cannot take the dataset's inputs \(\(2,\) features"):
        zoo.train(zoo.create_model("mlp", hidden=[4]), data, progress=False)  # an mlp fits any task


def first_non_finite_step(x: torch.Tensor, y: torch.Tensor) -> int:
    """Replay SGD(lr 1, momentum 0.9) on batches of 100 in order by hand; the 1-based first NaN/inf step."""
    model = zoo.create_model("linear_regression", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    for step, start in enumerate(range(0, len(x), 100), start=1):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x[start : start + 100]), y[start : start + 100])
        if not torch.isfinite(loss):
            return step
        loss.backward()
        optimizer.step()
    raise AssertionError("did not diverge")


def test_divergence_names_the_first_bad_step_and_suggests_a_lower_lr(linear_data):
    expected = first_non_finite_step(linear_data.x, linear_data.y)
    model = zoo.create_model("linear_regression", seed=0)
    with pytest.raises(DivergenceError, match=rf"at step {expected}\b.*lower the learning rate \(it was 1, try 0.1\)"):
        zoo.train(model, linear_data, recipe="notes", optimizer="sgd", lr=1.0, weight_decay=0.0, progress=False)
    assert not hasattr(model, "zoo_training")


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model, copied."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value) and after[key].device == value.device, key


def test_a_diverged_run_leaves_the_model_as_it_was_so_a_lower_rate_can_retry(linear_data):
    model = zoo.create_model("linear_regression", seed=0).train()
    before = state(model)
    with pytest.raises(DivergenceError, match="the model was left as it was before training; lower the learning"):
        zoo.train(model, linear_data, optimizer="sgd", lr=1e6, progress=False)
    assert_same_state(model, before)
    assert model.training and model.weight.grad is None and not hasattr(model, "zoo_training")
    retried = zoo.train(model, linear_data, optimizer="sgd", lr=1e-4, progress=False)  # before: NaN at step 1
    assert len(retried.history) == 10 and all(math.isfinite(loss) for loss in retried.history)


@cuda
@pytest.mark.cuda
def test_a_failed_run_on_cuda_leaves_the_model_on_the_cpu(linear_data):
    model = zoo.create_model("linear_regression", seed=0)
    before = state(model)
    with pytest.raises(DivergenceError):
        zoo.train(model, linear_data, device="cuda", optimizer="sgd", lr=1e6, progress=False)
    assert_same_state(model, before)  # the same values, on the CPU again


class StopsAtForward(nn.Module):
    """Linear then BatchNorm1d (whose buffers training updates); raises `stop` on forward pass number `at`."""

    def __init__(self, stop: BaseException, at: int) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(1, 1), nn.BatchNorm1d(1)
        self.stop, self.at, self.calls = stop, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise self.stop
        return self.norm(self.fc(x))


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RuntimeError("a plugin's own failure")], ids=type)
def test_an_interrupted_run_leaves_weights_buffers_gradients_and_modes_as_they_were(linear_data, stop):
    model = StopsAtForward(stop, at=150)  # mid-way through the notes recipe's second epoch
    model.norm.eval()  # modes may differ per module: each is put back
    model.fc.weight.grad = torch.full_like(model.fc.weight, 3.0)
    parameters, before = list(model.parameters()), state(model)
    with pytest.raises(type(stop)):
        zoo.train(model, linear_data, recipe="notes", progress=False)
    assert model.calls == 150 and before["norm.num_batches_tracked"] == 0
    assert_same_state(model, before)
    assert model.training and model.fc.training and not model.norm.training
    assert list(model.parameters()) == parameters  # the same Parameter objects: a caller's optimizer still holds them
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 3.0)) and model.fc.bias.grad is None


def with_values(data, name: str, rows: list[int], value: float):
    """A copy of `data` whose tensor `name` holds `value` in the first column of `rows`."""
    tensor = getattr(data, name).clone()
    tensor[rows, 0] = value
    return dataclasses.replace(data, **{name: tensor})


@pytest.mark.parametrize(
    ("name", "rows", "value", "message"),
    [
        ("x", [17, 40], float("nan"), "dataset 'linear' has 2 values in x that are NaN or infinite, the first in row 17 (nan)"),
        ("y", [5], float("-inf"), "dataset 'linear' has 1 value in y that is NaN or infinite, the first in row 5 (-inf)"),
    ],
    ids=["nan-in-x", "inf-in-y"],
)
def test_nan_or_inf_in_the_data_is_named_before_any_step(linear_data, name, rows, value, message):
    model = zoo.create_model("linear_regression", seed=0)
    calls, before = [], state(model)
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(TrainingError, match=re.escape(message) + ": fix the data before training$") as caught:
        zoo.train(model, with_values(linear_data, name, rows, value), progress=False)
    assert not isinstance(caught.value, DivergenceError) and calls == []
    assert_same_state(model, before)


def test_binary_classification_targets_must_be_0_or_1():
    blobs = zoo.datasets.create("blobs", seed=0)
    with pytest.raises(TrainingError, match=re.escape(
            "dataset 'blobs' has 2 values in y that are neither 0 nor 1 (binary_classification targets), "
            "the first in row 3 (0.5)")):
        zoo.train(zoo.create_model("logistic_regression"), with_values(blobs, "y", [3, 8], 0.5), progress=False)


@pytest.mark.parametrize(
    ("model", "task", "dataset", "other", "suggested"),
    [("logistic_regression", "binary_classification", "linear", "regression", "blobs"),
     ("linear_regression", "regression", "blobs", "binary_classification", "linear")],
)
def test_a_model_is_not_trained_for_another_task(model, task, dataset, other, suggested):
    data = zoo.datasets.create(dataset, seed=0)
    with pytest.raises(TrainingError, match=re.escape(
            f"model {model!r} is for {task} but dataset {dataset!r} is {other}: "
            f"train it on a {task} dataset, such as {suggested!r}")):
        zoo.train(zoo.create_model(model, in_features=data.x.shape[1]), data, progress=False)


def test_divergence_in_the_last_update_is_caught_by_the_final_loss(linear_data):
    model = zoo.create_model("linear_regression", seed=0)  # one full-batch step: its own loss is still finite
    with pytest.raises(DivergenceError, match="the loss became inf after step 1; the model was left as it was before training; lower the learning rate") as caught:
        zoo.train(model, linear_data, optimizer="sgd", lr=1e30, epochs=1, progress=False)
    assert caught.value.step == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": 0}, BadArgumentsError, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, BadArgumentsError, "batch_size must be an integer >= 1"),
        ({"lr": -1.0}, BadArgumentsError, "lr must be a positive finite number"),
        ({"weight_decay": float("nan")}, BadArgumentsError, "weight_decay must be a non-negative"),
        ({"seed": -1}, BadArgumentsError, "seed must be an integer >= 0"),
        ({"recipe": "note"}, UnknownNameError, "unknown recipe 'note'; did you mean 'notes'"),
        ({"optimizer": "adma"}, UnknownNameError, "unknown optimizer 'adma'; did you mean 'adam'"),
        ({"weight_decay": 0.1}, BadArgumentsError, "'lbfgs' has no weight decay"),
        ({"device": "tpu"}, DeviceError, "unknown device 'tpu'"),
        ({"device": "meta"}, DeviceError, "device 'meta' is not supported"),
        ({"device": "cpu:1"}, DeviceError, "device 'cpu:1' does not exist: torch has one CPU device"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, error, message, linear_data):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        zoo.train(zoo.create_model("linear_regression"), linear_data, progress=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(linear_data):
    from zoo.training import resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="sees no CUDA GPU: use device cpu or auto"):
        zoo.train(zoo.create_model("linear_regression"), linear_data, device="cuda", progress=False)


def test_progress_bar_when_asked(linear_data, capsys):
    zoo.train(zoo.create_model("linear_regression"), linear_data, recipe="notes", progress=True)
    err = capsys.readouterr().err
    assert "epoch 5/5" in err and "100% loss" in err and err.endswith("\n")
    zoo.train(zoo.create_model("linear_regression"), linear_data, recipe="notes")  # captured stderr: no TTY
    assert capsys.readouterr().err == ""


@cuda
@pytest.mark.cuda
def test_training_on_cuda_reaches_least_squares():
    data = zoo.datasets.create("linear", seed=0, device="cuda")
    (w_ols, b_ols), _ = ols(data.x.cpu(), data.y.cpu())
    model = zoo.create_model("linear_regression", layer="einsum_linear", seed=0)
    result = zoo.train(model, data, device="cuda", progress=False)
    assert result.device.startswith("cuda") and model.weight.device.type == "cuda" and not model.training
    assert abs(model.weight.item() - w_ols.item()) < 0.01 and abs(model.bias.item() - b_ols.item()) < 0.05


@cuda
@pytest.mark.cuda
def test_training_on_cuda_is_deterministic_and_moves_cpu_data():
    data = zoo.datasets.create("nonlinear", seed=0, n=500)  # on the CPU: train moves it

    def run() -> list[torch.Tensor]:
        model = zoo.create_model("mlp", hidden=[16], seed=0)
        zoo.train(model, data, optimizer="adam", lr=0.01, batch_size=50, epochs=2, device="cuda", progress=False)
        return [p.detach().cpu() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["linear", "blobs", "nonlinear"])
def test_datasets_are_the_same_numbers_on_cuda(name):
    """One seed, one dataset: a CUDA generator would draw other numbers than the CPU's."""
    on_gpu, on_cpu = (zoo.datasets.create(name, seed=3, device=device) for device in ("cuda", "cpu"))
    assert on_gpu.x.device.type == "cuda" and on_gpu.y.device.type == "cuda"
    assert torch.equal(on_gpu.x.cpu(), on_cpu.x) and torch.equal(on_gpu.y.cpu(), on_cpu.y)


def _topology(root, cores: dict[int, tuple[int, int]]):
    """A throwaway sysfs cpu tree: cpu number -> (package, core)."""
    for cpu, (package, core) in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_hyperthreads_of_one_core_count_as_one_core(tmp_path):
    from zoo.cpus import physical_cores, usable_cores

    assert physical_cores([0, 1], sysfs=_topology(tmp_path / "smt", {0: (0, 0), 1: (0, 0)})) == 1
    assert physical_cores([0, 1], sysfs=_topology(tmp_path / "two", {0: (0, 0), 1: (0, 1)})) == 2
    assert physical_cores([0, 1], sysfs=tmp_path / "none") is None
    allowed = sorted(os.sched_getaffinity(0))
    smt = _topology(tmp_path / "all", {cpu: (0, 0) for cpu in allowed})
    assert usable_cores(sysfs=smt, cgroup=tmp_path / "no-cgroup") == 1


@pytest.mark.parametrize(("limit", "cpus"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None),
                                             ("", None)])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, limit, cpus):
    from zoo.cpus import cpu_quota, usable_cores

    (tmp_path / "cpu.max").write_text(limit)
    assert cpu_quota(tmp_path / "cpu.max") == cpus
    if cpus == 1:
        assert usable_cores(cgroup=tmp_path / "cpu.max") == 1


def test_default_threads_are_one_for_small_work_and_the_cores_for_large(monkeypatch):
    from zoo.cpus import usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small = zoo.train(zoo.create_model("mlp", hidden=[8], seed=0), zoo.datasets.create("nonlinear", n=100, seed=0),
                      epochs=1, progress=False)
    assert small.threads == 1
    large = zoo.train(zoo.create_model("mlp", hidden=[64, 64], seed=0), zoo.datasets.create("nonlinear", n=1000, seed=0),
                      epochs=1, progress=False)
    assert large.threads == min(torch.get_num_threads(), usable_cores())
    assert zoo.train(zoo.create_model("mlp", hidden=[8], seed=0), zoo.datasets.create("nonlinear", n=100, seed=0),
                     epochs=1, threads=2, progress=False).threads == 2
