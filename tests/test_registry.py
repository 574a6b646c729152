"""The registry: discovery from real entry points, lazy loading, names, aliases, failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import builtin_names
from torch import nn

import zoo
from zoo.models import listed_input_shape
from zoo.registry import normalize

COURSE_NOTES = [
    "gelu", "elu", "leaky_relu", "prelu", "relu", "relu6", "selu", "celu", "sigmoid",
    "log_sigmoid", "tanh", "tanhshrink", "softplus", "softshrink",
]
REST_OF_TORCH_NN = [
    "hardshrink", "hardtanh", "hardsigmoid", "hardswish", "silu", "mish", "softsign", "threshold",
    "rrelu", "glu", "softmax", "log_softmax", "softmin",
]

SQUARE = """
from torch import nn

class Square(nn.Module):
    '''x squared, for tests.'''

    def forward(self, x):
        return x * x
"""


def test_builtins_are_found_through_entry_points():
    assert set(COURSE_NOTES + REST_OF_TORCH_NN) == set(builtin_names(zoo.activations))
    assert zoo.activations.names() == sorted(zoo.activations.names())
    assert builtin_names(zoo.layers) == ["einsum_linear", "linear", "param_linear"]
    assert builtin_names(zoo.models) == ["cnn", "cnn1d", "linear_regression", "logistic_regression", "mlp", "resnet",
                                         "transformer"]
    assert set(builtin_names(zoo.models)) <= set(zoo.list_models())
    assert builtin_names(zoo.datasets) == ["blobs", "digits", "linear", "nonlinear", "shapes", "signals", "sort"]
    info = zoo.activations.info("gelu")
    assert (info.target, info.distribution) == ("plugins.activations:GELU", "zoo-onnx")
    assert info.version == zoo.__version__


def test_listing_imports_no_plugin_and_no_torch():
    code = (
        "import sys, zoo\n"
        "names = [n for r in zoo.registries.values() for n in r.names()]\n"
        "assert len(names) > 30\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'plugins')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("spelling", ["LeakyReLU", "leaky_relu", "leaky-relu", "LEAKY_RELU", " leakyrelu "])
def test_one_normalisation_for_every_spelling(spelling):
    assert zoo.activations.get(spelling) is nn.LeakyReLU
    assert spelling in zoo.activations


def test_get_returns_the_class_and_create_builds_it_with_torch_defaults():
    assert zoo.activations.get("softplus") is nn.Softplus
    act = zoo.activations.create("gelu", approximate="tanh")
    assert isinstance(act, nn.GELU) and act.approximate == "tanh"
    softplus = zoo.activations.create("softplus")
    assert (softplus.beta, softplus.threshold) == (1.0, 20.0)


def test_aliases_resolve_with_their_keyword_arguments():
    assert isinstance(zoo.activations.create("swish"), nn.SiLU)
    assert zoo.activations.create("gelu_tanh").approximate == "tanh"
    assert zoo.activations.create("GELU-Tanh").approximate == "tanh"
    assert zoo.activations.resolve("swish") == ("silu", {})
    assert "gelu_tanh" in zoo.activations.info("gelu").aliases


def test_unknown_name_is_a_keyerror_with_suggestions():
    with pytest.raises(zoo.UnknownNameError) as caught:
        zoo.activations.get("gelu_tahn")
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "activation" in message and "'gelu_tahn'" in message and "did you mean" in message
    assert "gelu_tanh" in caught.value.suggestions


def test_bad_keyword_names_the_plugin_and_its_parameters():
    with pytest.raises(zoo.BadArgumentsError) as caught:
        zoo.activations.create("elu", alpah=2.0)
    message = str(caught.value)
    assert "'elu'" in message and "plugins.activations:ELU" in message and "alpha: float = 1.0" in message


def test_normalize_rejects_empty_names():
    assert normalize("Leaky-ReLU") == normalize("leaky_relu") == "leakyrelu"
    with pytest.raises(zoo.BadArgumentsError):
        normalize("  ")


def test_third_party_plugin_registers_like_a_builtin(third_party):
    third_party(
        "zoo-square",
        {"zoo.activations": {"square": "zoo_square_mod:Square"}},
        {"zoo_square_mod.py": SQUARE},
        version="2.5",
    )
    assert "square" in zoo.activations.names()
    assert "zoo_square_mod" not in sys.modules  # listed from metadata, not imported
    act = zoo.activations.create("square")
    assert act(torch.tensor([3.0])).item() == 9.0
    info = zoo.activations.info("square")
    assert (info.distribution, info.version, info.target) == ("zoo-square", "2.5", "zoo_square_mod:Square")
    assert info.doc == "x squared, for tests."
    model = zoo.create_model("mlp", activation="square", hidden=[4])
    assert isinstance(model.act0, nn.Module) and model.zoo_config["activation"] == "square"


def test_same_entry_point_seen_twice_is_one_plugin(third_party):
    eps = {"zoo.activations": {"square": "zoo_square_mod:Square"}}
    third_party("zoo-square", eps, {"zoo_square_mod.py": SQUARE})
    third_party("zoo-square", eps)  # an editable install exposing the same entry point again
    assert zoo.activations.names().count("square") == 1
    assert isinstance(zoo.activations.create("square"), nn.Module)


def test_two_targets_under_one_name_is_a_clear_conflict(third_party):
    third_party("first-dist", {"zoo.activations": {"square": "zoo_square_mod:Square"}},
                {"zoo_square_mod.py": SQUARE})
    third_party("second-dist", {"zoo.activations": {"Square": "zoo_square_two:Square"}},
                {"zoo_square_two.py": SQUARE})
    with pytest.raises(zoo.DuplicateNameError) as caught:
        zoo.activations.create("square")
    message = str(caught.value)
    for part in ("first-dist", "second-dist", "zoo_square_mod:Square", "zoo_square_two:Square"):
        assert part in message
    assert isinstance(zoo.activations.create("relu"), nn.ReLU)  # the others stay usable


BROKEN = {
    "import_error": ("zoo_broken_import:Thing", {"zoo_broken_import.py": "import no_such_module_zz\n"},
                     "ModuleNotFoundError"),
    "missing_attr": ("zoo_broken_attr:Nope", {"zoo_broken_attr.py": "X = 1\n"}, "AttributeError"),
    "not_callable": ("zoo_broken_value:X", {"zoo_broken_value.py": "X = 1\n"}, "not a class or callable"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_fails_alone_with_its_origin(third_party, case):
    target, modules, cause = BROKEN[case]
    third_party("zoo-broken", {"zoo.activations": {"broken": target}}, modules, version="0.3")
    assert "broken" in zoo.activations.names()
    for _ in range(2):  # the failure is remembered, and raised again on each use
        with pytest.raises(zoo.PluginLoadError) as caught:
            zoo.activations.get("broken")
        message = str(caught.value)
        assert f"broken = {target}" in message and "zoo-broken 0.3" in message and cause in message
    assert isinstance(zoo.activations.create("tanh"), nn.Tanh)


def test_a_plugin_that_builds_no_module_is_reported(third_party):
    third_party("zoo-notmodule", {"zoo.activations": {"notmodule": "zoo_notmodule:make"}},
                {"zoo_notmodule.py": "def make():\n    return 42\n"})
    with pytest.raises(zoo.PluginLoadError, match="notmodule = zoo_notmodule:make.*int, not a torch.nn.Module"):
        zoo.activations.create("notmodule")


def test_in_process_registration_and_explicit_override():
    @zoo.activations.register("Cube_Test")
    class Cube(nn.Module):
        def forward(self, x):
            return x**3

    try:
        assert "Cube_Test" in zoo.activations.names()
        assert isinstance(zoo.activations.create("cube-test"), Cube)
        with pytest.raises(zoo.DuplicateNameError, match="override=True"):
            zoo.activations.register("cube_test")(nn.Tanh)
        with pytest.raises(zoo.DuplicateNameError, match="plugins.activations:ReLU"):
            zoo.activations.register("relu")(nn.Tanh)
        zoo.activations.register("cube_test", override=True)(nn.Tanh)
        assert isinstance(zoo.activations.create("cube_test"), nn.Tanh)
    finally:
        zoo.activations.unregister("cube_test")
    assert "cube_test" not in zoo.activations


WIDE = """
import torch

SIZE = 3


def wide(input_shape=(None, 2 * SIZE), classes: int = 4, *, scale=1.5, act=torch.tanh, name="w"):
    '''A model builder, for tests.'''


class Net:
    def __init__(self, in_features=7, hidden=[8, 8]):
        pass
"""


def test_parameter_defaults_are_read_from_source_without_importing(third_party):
    third_party("wide", {"zoo.models": {"wide": "wide_model:wide", "net": "wide_model:Net"}},
                {"wide_model.py": WIDE})
    sources = dict(zoo.models.sources())
    # Literals only: 2 * SIZE and torch.tanh need the module run, so they are left out.
    assert sources["wide"][0].defaults() == {"classes": 4, "scale": 1.5, "name": "w"}
    assert sources["net"][0].defaults() == {"in_features": 7, "hidden": [8, 8]}
    assert listed_input_shape(sources["net"][0].defaults()) == [7] and listed_input_shape({}) is None
    assert "wide_model" not in sys.modules


def test_an_in_process_models_defaults_come_from_its_signature():
    @zoo.models.register("framed_test")
    def framed(input_shape=(None, 3), depth: int = 2):
        """A model registered in this process, for tests."""

    try:
        (source,) = dict(zoo.models.sources())["framed_test"]
        assert source.defaults() == {"input_shape": (None, 3), "depth": 2}
        assert listed_input_shape(source.defaults()) == [None, 3]
    finally:
        zoo.models.unregister("framed_test")


def test_datasets_are_deterministic_and_shaped_like_the_notes():
    data = zoo.datasets.create("linear", seed=0)
    assert data.x.shape == data.y.shape == (10_000, 1) and data.task == "regression"
    assert data.x.dtype == data.y.dtype == torch.float32
    assert torch.equal(data.x[:, 0], torch.arange(0, 100, 0.01))
    again = zoo.datasets.create("linear", seed=0)
    assert torch.equal(data.y, again.y)
    assert not torch.equal(data.y, zoo.datasets.create("linear", seed=1).y)
    residual = data.y - (10 * data.x + 5)
    assert abs(residual.mean().item()) < 0.05 and abs(residual.std().item() - 1) < 0.05
    blobs = zoo.datasets.create("blobs", seed=3)
    assert blobs.task == "binary_classification" and set(blobs.y.unique().tolist()) == {0.0, 1.0}
    assert json.dumps(blobs.params)


def test_datasets_reject_bad_arguments():
    with pytest.raises(zoo.BadArgumentsError, match="seed must be an integer"):
        zoo.datasets.create("nonlinear", seed="x")
    with pytest.raises(zoo.BadArgumentsError, match="even number"):
        zoo.datasets.create("blobs", n=3)
