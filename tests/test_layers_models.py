"""The notes' three linear layers, and models built from registry names."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import zoo

STYLES = ["einsum_linear", "param_linear", "linear"]


@pytest.mark.parametrize("bias", [True, False])
def test_three_styles_compute_the_same_function_and_gradients(bias):
    torch.manual_seed(0)
    reference = nn.Linear(5, 3, bias=bias)
    x = torch.randn(7, 5, dtype=torch.float64) * 10
    results = []
    for style in STYLES:
        layer = zoo.layers.create(style, 5, 3, bias=bias).double()
        layer.load_state_dict(reference.double().state_dict())
        y = layer(x)
        (y.sin().sum()).backward()
        grads = [layer.weight.grad] + ([layer.bias.grad] if bias else [])
        results.append((y.detach(), grads))
    for y, grads in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=1e-12, atol=1e-12)
        for grad, expected in zip(grads, results[0][1]):
            torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("style", STYLES)
def test_initialisation_is_nn_linears(style):
    torch.manual_seed(1)
    expected = nn.Linear(300, 200)
    torch.manual_seed(1)
    layer = zoo.layers.create(style, 300, 200)
    assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.bias, expected.bias)
    bound = 1 / math.sqrt(300)  # kaiming_uniform(a=sqrt(5)) and the bias share this bound
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
    assert layer.bias.abs().max() <= bound


@pytest.mark.parametrize("style", STYLES)
def test_layers_take_any_leading_dimensions_and_optional_bias(style):
    layer = zoo.layers.create(style, 4, 2, bias=False)
    assert layer.bias is None and dict(layer.named_parameters()).keys() == {"weight"}
    assert layer(torch.ones(3, 5, 4)).shape == (3, 5, 2)


@pytest.mark.parametrize("sizes", [(0, 3), (3, 0), (-1, 3), (2.5, 3), (True, 3)])
def test_bad_sizes_are_rejected_by_every_style(sizes):
    for style in STYLES:
        with pytest.raises(zoo.BadArgumentsError, match="must be a positive integer"):
            zoo.layers.create(style, *sizes)


def test_mlp_from_names_records_a_config_that_rebuilds_it():
    net = zoo.create_model(
        "mlp", in_features=1, out_features=1, hidden=[64, 64],
        activation={"name": "softplus", "beta": 2, "threshold": 5}, layer="param_linear", seed=0,
    )
    assert [type(m).__name__ for m in net] == ["ParamLinear", "Softplus", "ParamLinear", "Softplus", "ParamLinear"]
    assert (net.act0.beta, net.act0.threshold) == (2, 5)
    config = json.loads(json.dumps(net.zoo_config))
    assert config == {
        "name": "mlp", "in_features": 1, "out_features": 1, "hidden": [64, 64],
        "activation": {"name": "softplus", "beta": 2, "threshold": 5}, "layer": "param_linear",
        "output_activation": None, "seed": 0,
    }
    rebuilt = zoo.create_model(**config)  # the seed is in the config: the same initial weights
    assert rebuilt.zoo_config == config
    for a, b in zip(net.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)


def test_seed_fixes_initial_weights_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a = zoo.create_model("mlp", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = zoo.create_model("mlp", seed=3)
    c = zoo.create_model("mlp", seed=4)
    assert torch.equal(a.fc0.weight, b.fc0.weight) and not torch.equal(a.fc0.weight, c.fc0.weight)


def test_aliases_are_canonical_in_the_config():
    net = zoo.create_model("mlp", activation="gelu_tanh", layer="dense", output_activation="logistic")
    assert net.zoo_config["activation"] == {"name": "gelu", "approximate": "tanh"}
    assert net.zoo_config["layer"] == "linear" and net.zoo_config["output_activation"] == "sigmoid"
    assert isinstance(net.out_act, nn.Sigmoid)


def test_glu_halves_the_width_and_the_next_layer_follows():
    net = zoo.create_model("mlp", in_features=3, hidden=[8, 6], activation="glu")
    assert (net.fc1.in_features, net.out.in_features) == (4, 3)
    assert net(torch.randn(5, 3)).shape == (5, 1)


def test_regression_models_are_one_layer_of_the_chosen_style():
    lin = zoo.create_model("linear_regression", layer="einsum_linear")
    assert type(lin).__name__ == "EinsumLinear" and lin.weight.shape == (1, 1)
    logreg = zoo.create_model("logistic_regression", in_features=3)
    assert isinstance(logreg, nn.Linear) and logreg(torch.zeros(2, 3)).shape == (2, 1)
    assert logreg.zoo_config == {"name": "logistic_regression", "in_features": 3, "layer": "linear"}


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"activation": "nope"}, zoo.UnknownNameError, "unknown activation 'nope'"),
        ({"layer": "linaer"}, zoo.UnknownNameError, "did you mean 'linear'"),
        ({"activation": {"name": "elu", "alpah": 2}}, zoo.BadArgumentsError, "alpha: float = 1.0"),
        ({"activation": 3}, zoo.BadArgumentsError, "a name or a dict with a 'name' key"),
        ({"hidden": [0]}, zoo.BadArgumentsError, "positive layer widths, e.g. [64, 64], got [0]"),
        ({"hidden": 64}, zoo.BadArgumentsError, "positive layer widths, e.g. [64, 64], got 64"),
        ({"hidden": [5], "activation": "glu"}, zoo.BadArgumentsError, "GLU cannot follow a layer of width 5"),
        ({"hiden": [5]}, zoo.BadArgumentsError, "unexpected keyword argument 'hiden'"),
        ({"in_features": 2.5}, zoo.BadArgumentsError, "must be a positive integer, got 2.5"),
        ({"in_features": float("nan")}, zoo.BadArgumentsError, "arguments must be JSON values"),
    ],
)
def test_bad_model_arguments_are_clear(kwargs, error, fragment):
    with pytest.raises(error) as caught:
        zoo.create_model("mlp", **kwargs)
    assert fragment in str(caught.value)
