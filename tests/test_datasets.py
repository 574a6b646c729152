"""The classification datasets: shapes, signals, sort (and digits with scikit-learn), drawn from a seed."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

import zoo

SMALL = {"n": 48, "n_test": 16}


def digest(data) -> str:
    """sha256 of the training and held-out tensors' bytes."""
    h = hashlib.sha256()
    for tensor in (data.x, data.y, data.test.x, data.test.y):
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parity  # run again under torch's scalar kernels (make test): the bits must not change
@pytest.mark.parametrize(("name", "expected"), [
    ("shapes", "35674f437d4c0fdc"), ("signals", "4bc1adda45da09ec"), ("sort", "c078d9e88032c2e1"),
])
def test_same_bits_on_every_machine(name, expected):
    """Integer and uniform draws and exactly rounded arithmetic only: the digest holds on any CPU (and
    under any ATEN_CPU_CAPABILITY); a change here changes every accuracy the README quotes."""
    assert digest(zoo.datasets.create(name, seed=7, **SMALL)) == expected


@pytest.mark.parametrize(("name", "x_shape", "x_dtype", "y_shape", "task", "classes"), [
    ("shapes", (48, 1, 32, 32), torch.float32, (48,), "classification", 4),
    ("signals", (48, 1, 40), torch.float32, (48,), "classification", 10),
    ("sort", (48, 8), torch.int64, (48, 8), "sequence_classification", 10),
])
def test_shapes_tasks_and_held_out_rows(name, x_shape, x_dtype, y_shape, task, classes):
    data = zoo.datasets.create(name, seed=0, **SMALL)
    assert (tuple(data.x.shape), data.x.dtype, tuple(data.y.shape), data.y.dtype) == (x_shape, x_dtype, y_shape,
                                                                                       torch.int64)
    assert data.task == task and data.params["classes"] == classes and len(data) == 48
    assert data.test.x.shape[1:] == data.x.shape[1:] and len(data.test) == 16 and data.test.test is None
    assert 0 <= int(data.y.min()) and int(data.y.max()) < classes
    assert json.dumps(data.params) and f"test={len(data.test)} rows" in repr(data)
    again, other = zoo.datasets.create(name, seed=0, **SMALL), zoo.datasets.create(name, seed=1, **SMALL)
    assert torch.equal(data.x, again.x) and torch.equal(data.test.y, again.test.y)
    assert not torch.equal(data.x, other.x)
    assert zoo.datasets.create(name, seed=0, n=48, n_test=0).test is None


def test_shapes_lie_anywhere_in_every_class():
    data = zoo.datasets.create("shapes", seed=0, n=400, n_test=0, noise=0.0)
    assert set(data.y.tolist()) == {0, 1, 2, 3}
    ink = data.x[:, 0] > 0
    assert ink.any(dim=(1, 2)).all()  # no empty image
    columns = (ink.sum(dim=1) * torch.arange(32)).sum(dim=1) / ink.sum(dim=(1, 2))
    assert columns.min() < 10 and columns.max() > 21  # centres spread across the image
    values = data.x[:, 0][ink]
    assert values.min() >= 0.5 and values.max() < 1  # one brightness per shape, no noise asked for
    areas = ink.sum(dim=(1, 2)).float()
    circle, square = (areas[data.y == label].mean() for label in (0, 1))
    assert circle > square  # a square inscribed in the same circle covers 2/pi of it


def test_signals_are_standardised_on_the_training_rows():
    data = zoo.datasets.create("signals", seed=0, n=500, n_test=100)
    assert abs(data.x.mean().item()) < 1e-4 and abs(data.x.std().item() - 1) < 1e-3
    assert set(data.y.tolist()) == set(range(10))


def test_sort_targets_are_the_sorted_inputs_and_held_out_strings_are_new():
    data = zoo.datasets.create("sort", seed=0, n=300, n_test=300, length=4, digits=5)  # 625 strings: repeats
    assert torch.equal(data.y, data.x.sort(dim=1).values) and torch.equal(data.test.y, data.test.x.sort(dim=1).values)
    seen = {tuple(row) for row in data.x.tolist()}
    assert 0 < len(data.test) < 300 and not any(tuple(row) in seen for row in data.test.x.tolist())


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("shapes", {"n": 0}, "n must be an integer >= 1"),
    ("shapes", {"n_test": -1}, "n_test must be an integer >= 0"),
    ("shapes", {"size": 8}, "size must be an integer >= 12"),
    ("shapes", {"noise": 2.0}, r"noise must be in \[0, 1\]"),
    ("signals", {"length": 1}, "length must be an integer >= 2"),
    ("sort", {"digits": 1}, "digits must be an integer >= 2"),
    ("sort", {"seed": 1.5}, "seed must be an integer"),
])
def test_bad_arguments_are_one_clear_error(name, kwargs, message):
    with pytest.raises(zoo.BadArgumentsError, match=message):
        zoo.datasets.create(name, **kwargs)


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # what an environment without it gives: ImportError
    with pytest.raises(zoo.PluginLoadError, match=r"needs scikit-learn.*pip install 'zoo-onnx\[digits\]'"):
        zoo.datasets.create("digits")


def test_digits_with_scikit_learn():
    pytest.importorskip("sklearn", reason="the digits extra (scikit-learn) is not installed")
    data = zoo.datasets.create("digits", seed=0)
    assert tuple(data.x.shape) == (1438, 1, 8, 8) and len(data.test) == 359 and data.params["classes"] == 10
    assert data.x.min() == 0 and data.x.max() == 1 and data.y.dtype == torch.int64
    assert not torch.equal(data.y, zoo.datasets.create("digits", seed=1).y)  # the seed draws the split


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_held_out_rows_move_with_the_dataset():
    data = zoo.datasets.create("sort", seed=0, device="cuda", **SMALL)
    assert data.x.is_cuda and data.test.x.is_cuda
    assert torch.equal(data.test.x.cpu(), zoo.datasets.create("sort", seed=0, **SMALL).test.x)
