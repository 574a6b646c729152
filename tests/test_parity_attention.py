"""Parity of norms and attention in plain torch models: layer norm (any trailing axes), group norm, embedding
lookups, scaled_dot_product_attention (masks, is_causal), nn.MultiheadAttention, nn.TransformerEncoderLayer.

Every model passes ``check_parity`` with both exporters in float32 and float16; honest variants (onnxruntime at
every optimisation level, which fuses a decomposed layer norm into its one-pass LayerNormalization kernel, on 1
and 2 threads; opsets with and without the LayerNormalization op) pass on the same probes; mutants (a norm's
weight or eps, the attention's scale, one score shifted, one key weight) fail; a fully masked query row, where
torch and an ONNX Softmax differ, is refused.
"""

from __future__ import annotations

import itertools

import onnx
import parity_models
import pytest
import torch
from parity_judging import (
    Judged,
    describe,
    onnxruntime_run,
    passed,
    scaled_attribute,
    scaled_element,
    scaled_input,
    shifted_input,
    unconstrained_ordinary_rows,
)
from parity_models import LENGTH, WIDTH, seeded

from bench.variants import LEVELS, scaled_initializer
from export import ExportError, ParityError, check_parity, to_onnx
from export.parity.bounds import BoundError

DTYPES = ("float32", "float16")
EXPORTERS = ("torchscript", "dynamo")
SEQUENCE = (LENGTH, WIDTH)
MODELS = {
    "layer_norm_mlp": (parity_models.layer_norm_mlp, (16,)),
    "dropout_mlp": (parity_models.dropout_mlp, (16,)),
    "group_norm": (parity_models.GroupNormNet, (16,)),
    "trailing_norm": (parity_models.TrailingAxesNorm, SEQUENCE),
    "attention": (parity_models.MaskedAttention, SEQUENCE),
    "multihead": (parity_models.MultiheadAttention, SEQUENCE),
    "encoder_stack": (parity_models.encoder_stack, SEQUENCE),
    "tiny_vit": (parity_models.TinyViT, (1, 8, 8)),
    "tokens": (parity_models.TokenModel, (LENGTH, 6)),
}
DYNAMIC = {"tokens": (1,)}  # the sequence axis takes any length: probed at lengths other than the example's
# The relative change of each mutant, per dtype: far beyond the honest floor (u = 6e-8, 4.9e-4).
SMALL = {"float32": 1e-3, "float16": 3e-2}
# Honest exports beside the default (torchscript, opset 17: the LayerNormalization op): torchscript at opset 16
# (layer norm decomposed, which onnxruntime fuses back at EXTENDED and ALL) and 18, dynamo at its lowest.
VARIANTS = [("torchscript", {"opset": 16}), ("torchscript", {"opset": 18}), ("dynamo", {})]
THREADS = (1, 2)
# Known gap: in the two-layer float16 stack these mutants (3e-2, about 60 u) move the output by about as much as
# honest float16 rounding does, in spreads of the output (a verdict needs 8 beyond the allowance; honest runs reach
# 1.3): one key weight by 3.4; eps times 4 by 1.0, where honest runs deviate as much. Eps shows only where a row's
# variance is near it (inputs near 1e-3), and there products and squares fall below float16's smallest normal, all
# of which an evaluation that flushes underflow to zero may lose: tier 2 leaves such rows nearly unjudged.
BELOW_FLOOR = {"float16": {"layer norm eps", "one key weight"}}


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict[str, Judged]:
    """Every model, seeded, with an example batch; exported and checked on demand, once."""
    models = {}
    for name, (build, shape) in MODELS.items():
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
        # torchscript cannot export nn.MultiheadAttention at any length (below): dynamo's export is checked there
        axes = {"dynamic_axes": DYNAMIC[name], "base": "dynamo"} if name in DYNAMIC else {}
        models[name] = Judged(seeded(build), example, tmp_path_factory.mktemp(name), budget=2**14, **axes)
    return models


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_plain_models_pass_check_parity(judged, name, exporter, dtype):
    if (name, dtype) == ("attention", "float16"):
        # torch's torchscript symbolic builds a causal or boolean mask in float32 and promotes the scores to it
        with pytest.raises(ExportError, match="ONNX type 1, expected float16"):
            judged[name].export("torchscript", dtype)
        if exporter == "torchscript":
            return
        report = check_parity(judged[name].model, judged[name].export(exporter, dtype), budget=2**14)
        assert report.ok
        return
    if (name, exporter) == ("tokens", "torchscript"):
        # the torchscript exporter bakes nn.MultiheadAttention's sequence length into its Reshapes although the
        # input axis is declared dynamic: to_onnx runs the graph at another length and refuses it
        with pytest.raises(ExportError, match=r"declares input axes \[1\] of any size but fails"):
            judged[name].export(exporter, dtype)
        return
    report = judged[name].report(exporter, dtype)
    assert report.ok, report.explain()
    assert not unconstrained_ordinary_rows(judged[name].check(dtype)[1])


def test_dynamic_sequence_length_is_probed_at_other_lengths(judged):
    report = judged["tokens"].report("dynamo", "float32")
    assert report.ok, report.explain()
    probed = judged["tokens"].check("float32")[0].sample_shapes  # the probes both exports are judged on
    assert {shape[0] for shape in probed} >= {1, 2, LENGTH, 5, 17}


@pytest.mark.parametrize("dtype", DTYPES)
def test_honest_variants_pass(judged, dtype, record_property):
    """Every export of the encoder stack at every onnxruntime optimisation level on 1 and 2 threads."""
    model = judged["encoder_stack"]
    worst, failed = 0.0, []
    for (exporter, options), level, threads in itertools.product([("torchscript", {}), *VARIANTS], LEVELS, THREADS):
        verdicts = model.verdicts(onnxruntime_run(model.export(exporter, dtype, **options), level, threads), dtype)
        worst = max(worst, *(v.worst_statistical for v in verdicts))
        if not passed(verdicts):
            failed.append(f"{exporter} {options} {level} {threads} threads: {describe(verdicts)}")
    record_property(f"honest_worst_statistical_{dtype}", worst)
    assert not failed, failed


def _mutants(dtype: str) -> dict[str, object]:
    small = SMALL[dtype]
    key_weights = scaled_element((WIDTH, 3 * WIDTH), slice(WIDTH, 2 * WIDTH), 1 + small)
    return {
        "layer norm weight": scaled_initializer("layers.0.norm1.weight", 1 + small),
        "layer norm eps": scaled_attribute("LayerNormalization", "epsilon", 4.0),
        "attention scale": scaled_input("Softmax", 0, 1 + small),
        "one score shifted": shifted_input("Softmax", 0, [small] + [0.0] * (LENGTH - 1)),
        "one key weight": key_weights,
    }


MUTANTS = [pytest.param(dtype, name, marks=[pytest.mark.xfail(strict=True, reason="below the float16 floor")]
                         if name in BELOW_FLOOR.get(dtype, ()) else [], id=f"{dtype}-{name}")
           for dtype in DTYPES for name in _mutants(dtype)]


@pytest.mark.parametrize(("dtype", "mutant"), MUTANTS)
def test_mutants_fail(judged, dtype, mutant):
    assert not passed(judged["encoder_stack"].mutant(_mutants(dtype)[mutant], dtype)), f"{mutant} judged honest"


def test_a_failing_layer_norm_names_its_module(judged, tmp_path):
    model = judged["encoder_stack"]
    proto = onnx.load(str(model.export("torchscript", "float32")))
    scaled_initializer("layers.0.norm1.weight", 1 + SMALL["float32"])(proto)
    path = tmp_path / "mutant.onnx"
    onnx.save(proto, str(path))
    # the export holds the norms' equal weights (all ones) once, so the edit scales every norm's: on the worst row,
    # where layers.0.norm1's output is subnormal (a probe at scale 1e-39), layers.0.norm2 is the first to show it
    with pytest.raises(ParityError, match=r"layers\.0\.norm[12]"):
        check_parity(model.model, path, budget=2**12)


def test_a_query_with_no_key_to_attend_to_is_refused(tmp_path):
    """torch gives 0 for a fully masked query row, an ONNX Softmax NaN: the check refuses the model."""
    keep = torch.ones(LENGTH, LENGTH, dtype=torch.bool)
    keep[1] = False
    model = seeded(lambda: parity_models.MaskedAttention(keep)).eval()
    path = to_onnx(model, tmp_path / "masked.onnx", example_input=torch.randn(2, *SEQUENCE))
    with pytest.raises(BoundError, match="a query may attend to no key") as raised:
        check_parity(model, path, budget=2**12)
    assert isinstance(raised.value, ParityError) and "'' " not in str(raised.value)
