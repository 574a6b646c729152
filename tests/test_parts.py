"""Convolutions, norms and pools as plugins: three convolutions with one function, norms and pools against
torch's, names resolved like activations, None for no layer, and third-party parts in the models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo

CONVS = ["conv", "param_conv", "im2col_conv"]


def test_parts_are_found_through_entry_points():
    assert zoo.convs.names() == ["conv", "im2col_conv", "param_conv"]
    assert zoo.norms.names() == ["batch_norm", "group_norm", "layer_norm"]
    assert zoo.pools.names() == ["avg_pool", "global_avg_pool", "global_max_pool", "max_pool"]
    assert zoo.convs.info("unfold_conv").target == "plugins.convs:Im2colConv"
    assert zoo.norms.get("BN") is zoo.norms.get("batch-norm")
    assert {"convs", "norms", "pools"} <= set(zoo.registries)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize(("stride", "padding", "bias"), [(1, 1, True), (2, 0, False), (3, 2, True)])
def test_three_convolutions_compute_the_same_function_and_gradients(dims, stride, padding, bias):
    torch.manual_seed(0)
    reference = (nn.Conv1d if dims == 1 else nn.Conv2d)(3, 5, 3, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(4, 3, *[11] * dims, dtype=torch.float64) * 10
    results = []
    for style in CONVS:
        conv = zoo.convs.create(style, 3, 5, 3, stride, padding, bias, dims).double()
        conv.load_state_dict(reference.state_dict())
        xi = x.clone().requires_grad_()
        y = conv(xi)
        y.sin().sum().backward()
        grads = [xi.grad, conv.weight.grad] + ([conv.bias.grad] if bias else [])
        results.append((y.detach(), grads))
    assert results[0][0].shape == reference(x).shape
    for y, grads in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=1e-12, atol=1e-12)
        for grad, expected in zip(grads, results[0][1]):
            torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("style", CONVS)
@pytest.mark.parametrize("dims", [1, 2])
def test_convolutions_start_from_nn_convs_initialisation(style, dims):
    torch.manual_seed(1)
    expected = (nn.Conv1d if dims == 1 else nn.Conv2d)(16, 8, 3)
    torch.manual_seed(1)
    conv = zoo.convs.create(style, 16, 8, 3, dims=dims)
    assert torch.equal(conv.weight, expected.weight) and torch.equal(conv.bias, expected.bias)
    bound = 1 / math.sqrt(16 * 3**dims)  # kaiming_uniform(a=sqrt(5)) and the bias share this bound
    assert 0.95 * bound < conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound


@pytest.mark.parametrize(
    ("args", "fragment"),
    [((0, 4, 3), "in_channels must be a positive integer, got 0"),
     ((2, 4, 2.5), "kernel_size must be a positive integer, got 2.5"),
     ((2, 4, 3, 0), "stride must be a positive integer, got 0"),
     ((2, 4, 3, 1, -1), "padding must be a non-negative integer, got -1"),
     ((2, 4, 3, 1, 0, True, 3), "dims must be 1 (signals: N, C, L) or 2 (images: N, C, H, W), got 3")],
)
def test_bad_convolution_sizes_are_rejected_by_every_style(args, fragment):
    for style in CONVS:
        with pytest.raises(zoo.BadArgumentsError) as caught:
            zoo.convs.create(style, *args)
        assert fragment in str(caught.value)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 9), (6, 4, 5, 7)])
def test_batch_norm_is_torchs_at_every_rank(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    ours = zoo.norms.create("batch_norm", 4)
    theirs = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(4)
    for mode in (True, False):  # batch statistics, then the running ones they updated
        torch.testing.assert_close(ours.train(mode)(x), theirs.train(mode)(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    with pytest.raises(ValueError, match="expects \\(N, C, \\*\\) input, got 1"):
        ours(torch.randn(4))


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 9), (6, 4, 5, 7)])
def test_layer_norm_normalises_the_channels_at_each_position(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    norm = zoo.norms.create("layer_norm", 4).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, unbiased=False, keepdim=True)
    scale = [1, 4] + [1] * (len(shape) - 2)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(scale) + norm.bias.view(scale)
    torch.testing.assert_close(norm(x), expected)


def test_group_norm_is_torchs_with_groups_given_second():
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(zoo.norms.create("group_norm", 8, num_groups=2)(x), nn.GroupNorm(2, 8)(x))
    assert zoo.norms.create("gn", 16).num_groups == 4
    with pytest.raises(zoo.BadArgumentsError, match="divisible by num_groups"):
        zoo.norms.create("group_norm", 6)


@pytest.mark.parametrize("dims", [1, 2])
def test_pools_are_torchs_for_signals_and_images(dims):
    x = torch.randn(2, 3, *[8] * dims)
    functions = {"max_pool": (F.max_pool1d, F.max_pool2d), "avg_pool": (F.avg_pool1d, F.avg_pool2d)}
    for name, (one, two) in functions.items():
        torch.testing.assert_close(zoo.pools.create(name)(x), (one if dims == 1 else two)(x, 2, 2))
        torch.testing.assert_close(zoo.pools.create(name, 3, 1)(x), (one if dims == 1 else two)(x, 3, 1))
    axes = tuple(range(2, 2 + dims))
    torch.testing.assert_close(zoo.pools.create("gap")(x), x.mean(dim=axes))
    torch.testing.assert_close(zoo.pools.create("global_max_pool")(x), x.amax(dim=axes))


@pytest.mark.parametrize("name", ["max_pool", "avg_pool", "global_avg_pool", "global_max_pool"])
def test_pools_refuse_inputs_without_spatial_axes(name):
    with pytest.raises(ValueError, match="expects \\(N, C, L\\) or \\(N, C, H, W\\) input, got 2 dimensions"):
        zoo.pools.create(name)(torch.randn(2, 3))


def test_none_means_no_layer():
    plain = zoo.create_model("cnn", norm=None, pool=None)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.MaxPool2d)) or "Pool" in type(m).__name__
                   for m in plain.block0) and plain.block0[0].bias is not None
    assert zoo.create_model("cnn").block0[0].bias is None  # a norm's shift replaces the bias
    assert plain(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    flat = zoo.create_model("cnn1d", global_pool=None, widths=[4])  # no global pool: flattened features
    assert isinstance(flat.pool, nn.Flatten) and flat.head.in_features == 4 * 20
    resnet = zoo.create_model("resnet", norm=None)
    assert isinstance(resnet.block1.norm1, nn.Identity) and resnet.block1.conv1.bias is not None
    assert zoo.create_model("transformer", norm=None).norm.norm is None
    assert resnet.zoo_config["norm"] is None and zoo.create_model(**resnet.zoo_config).zoo_config == resnet.zoo_config


def test_part_names_and_aliases_are_canonical_in_the_config():
    model = zoo.create_model("cnn", conv="unfold_conv", norm={"name": "gn", "num_groups": 2}, pool="avg_pool",
                             global_pool="gmp", activation="swish")
    assert {key: model.zoo_config[key] for key in ("conv", "norm", "pool", "global_pool", "activation")} == {
        "conv": "im2col_conv", "norm": {"name": "group_norm", "num_groups": 2}, "pool": "avg_pool",
        "global_pool": "global_max_pool", "activation": "silu"}
    assert type(model.block0[0]).__name__ == "Im2colConv" and model.block0[1].num_groups == 2


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "fragment"),
    [
        ("cnn", {"conv": "conv3d"}, zoo.UnknownNameError, "unknown conv 'conv3d'; did you mean 'conv2d', 'conv'"),
        ("cnn", {"norm": "batchnorm2d"}, zoo.UnknownNameError, "(see `zoo list norms`)"),
        ("resnet", {"global_pool": "mean_pool"}, zoo.UnknownNameError, "unknown pool 'mean_pool'"),
        ("resnet", {"global_pool": "avg_pool"}, zoo.BadArgumentsError, "global pool gives shape (2, 32, 4, 4)"),
        ("cnn", {"input_shape": [1, 32]}, zoo.BadArgumentsError, "3 positive sizes (channels, height, width)"),
        ("cnn1d", {"input_shape": [1, 32, 32]}, zoo.BadArgumentsError, "2 positive sizes (channels, length)"),
        ("cnn", {"widths": [16, 0]}, zoo.BadArgumentsError, "widths must be a list of positive layer widths"),
        ("cnn", {"classes": 1}, zoo.BadArgumentsError, "classes must be an integer >= 2, got 1"),
        ("cnn", {"activation": "glu"}, zoo.BadArgumentsError, "GLU changes the shape of (N, C, *) features"),
        ("cnn", {"widths": [8] * 6}, zoo.BadArgumentsError, "input_shape [1, 32, 32] is too small"),
        ("resnet", {"widths": []}, zoo.BadArgumentsError, "widths must hold at least one width"),
        ("transformer", {"width": 30, "heads": 4}, zoo.BadArgumentsError, "width 30 must be a multiple of heads 4"),
        ("transformer", {"input_shape": [10]}, zoo.BadArgumentsError, "(length or None, vocabulary)"),
        ("transformer", {"input_shape": [40, 10]}, zoo.BadArgumentsError, "length 40 is more than max_length 32"),
        ("transformer", {"depth": 0}, zoo.BadArgumentsError, "depth must be a positive integer, got 0"),
    ],
)
def test_bad_model_arguments_are_clear(name, kwargs, error, fragment):
    with pytest.raises(error) as caught:
        zoo.create_model(name, **kwargs)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("norm", ["layer_norm", "batch_norm", "group_norm"])
def test_the_transformer_normalises_each_token_as_a_row(norm):
    model = zoo.create_model("transformer", norm=norm, activation="glu", seed=0).eval()
    tokens = torch.randn(3, 6, 32)
    rows = model.blocks[0].norm1.norm(tokens.flatten(0, 1)).view_as(tokens)
    torch.testing.assert_close(model.blocks[0].norm1(tokens), rows)
    if norm == "layer_norm":  # each token normalised over its own features, as nn.LayerNorm does
        torch.testing.assert_close(rows, F.layer_norm(tokens, (32,)))
    with torch.no_grad():
        assert model(torch.randn(3, 6, 10)).shape == (3, 6, 10)


SHIFT_CONV = """
import torch
from torch import nn

class ShiftConv(nn.Conv2d):
    '''A convolution whose output is shifted by 1, for tests.'''

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, dims=2):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)

    def forward(self, x):
        return super().forward(x) + 1
"""


def test_a_third_party_conv_builds_into_the_models(third_party):
    third_party("shift-conv", {"zoo.convs": {"shift_conv": "shift_conv:ShiftConv"}}, {"shift_conv.py": SHIFT_CONV})
    model = zoo.create_model("resnet", conv="shift_conv", seed=0)
    assert type(model.stem[0]).__name__ == "ShiftConv" and model.zoo_config["conv"] == "shift_conv"
    assert zoo.convs.info("shift_conv").distribution == "shift-conv"
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_the_transformer_takes_token_ids_or_their_one_hot_rows():
    model = zoo.create_model("transformer", seed=0).eval()
    ids = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids), model(F.one_hot(ids, 10).float()))
