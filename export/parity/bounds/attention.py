"""Rules for attention: ``scaled_dot_product_attention`` as the ops it is made of, each judged by its own rule.

torch on the CPU runs ``F.scaled_dot_product_attention`` as one op (``_scaled_dot_product_flash_attention_for_cpu``,
or ``_scaled_dot_product_attention_math``), which no exporter keeps: both lower it to
q sqrt(s) (k sqrt(s))^T + mask, Softmax, MatMul with v (opset 23 may keep it whole as ONNX
Attention, which scales the product once). The rule runs those ops through the pass, so the
matrix products, the softmax and the mask addition are judged by their own rules, and adds the
scale as a constant a runtime rounds: the same relative error on every score. Tier 1 takes at most
``SCALE_ULPS`` u of it, whatever the way. Tier 2 takes the exact effect of each way the exporters form it
(``scale_errors``: s, or 1 / sqrt(E), its root and its reciprocal each rounded to float32, to the dtype or to
both in turn, held once, or as sqrt(s) applied to q and to k, whose product is the square of one rounded
constant) on every value downstream: the model runs again in float64 with the call's scale s (1 + error)
(``core.Held``), signed, so the output and the layers after it do not inflate it as an absolute allowance
through |W| and each norm's |J| would (for E = 4 in float16 a scale 0.44 u low, sqrt(0.5) held as 0.70703125,
grew to 40 spreads at a two-layer encoder's output that way). The pass itself leaves the effect out of the
reach it carries to later rules: it moves a score by at most 2 u of it, inside the 8 spreads (3.4 u) of the
score's own last rounding that the reach already spans.

Masks: a boolean mask arrives as an additive one (0 where kept, -inf where masked), ``is_causal``
keeps key j <= query i. A masked score is exactly -inf and its weight exactly 0. A query that may
attend to no key is refused: torch's kernel gives 0 there (PyTorch PR 131060), an ONNX Softmax
NaN, so the export would not compute torch's function.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from export.parity.bounds.core import Bounded, BoundError, BoundMode, Held, aten, rule

# The scale s = 1 / sqrt(E) (or the one given) as a runtime holds it: 1 / sqrt(E) rounds twice, sqrt(s)
# once more and each of the two factors sqrt(s) once: at most this many u of every score, the same sign.
SCALE_ULPS = 4.0

ATTENTION = (aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_attention_math)


@rule(*ATTENTION)
def _attention(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> list[Bounded | None]:
    """softmax(q k^T s + mask) v through the rules of its ops; the weights too where the op returns them."""
    given = _arguments(func, args, kwargs)
    q, k, v = given["query"], given["key"], given["value"]
    if given.get("dropout_p", 0.0):
        raise BoundError(f"{func} with dropout_p={given['dropout_p']}: attention dropout is random, so the model "
                         "has no function to judge; put the model in eval mode (dropout_p=0 outside training)")
    if given.get("enable_gqa") or not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise BoundError(f"{func} with query, key and value of different batch or head counts has no error rule; "
                         "repeat the key and value heads to the query's (repeat_interleave) before attention")
    scale = given.get("scale") or 1 / math.sqrt(q.shape[-1])
    length, keys = q.shape[-2], k.shape[-2]
    keep, mask = _mask(mode, given.get("attn_mask"), bool(given.get("is_causal")), q.shape[:-1] + (keys,))
    if not bool(keep.any(-1).all()):
        raise BoundError(
            f"{func}: a query may attend to no key (every key masked in some row); torch's kernel gives 0 there, "
            "an ONNX Softmax NaN, so the export does not compute torch's function: leave each query a key to "
            "attend to (mask padding keys, never a whole row)")
    root = math.sqrt(scale)
    q3 = _call(mode, aten.reshape.default, _call(mode, aten.mul.Tensor, q, root), (-1, length, q.shape[-1]))
    k3 = _call(mode, aten.reshape.default, _call(mode, aten.mul.Tensor, k, root), (-1, keys, k.shape[-1]))
    scores = _call(mode, aten.bmm.default, q3, _call(mode, aten.transpose.int, k3, 1, 2))
    _scale_rounded(mode, scores, scale)
    keep = keep.reshape(scores.shape)
    if mask is not None:
        mask = _call(mode, aten.reshape.default, mask, scores.shape)
        scores = _call(mode, aten.add.Tensor, scores, mask)
    weights = _call(mode, aten._softmax.default, _masked(mode, scores, keep), -1, False)
    v3 = _call(mode, aten.reshape.default, v, (-1, keys, v.shape[-1]))
    y = _call(mode, aten.bmm.default, weights, v3)
    call = sum(mode.counts[op] for op in ATTENTION) - 1
    errors = scale_errors(given.get("scale"), q.shape[-1], mode.narrow)
    if errors:
        mode.held.append(tuple(Held(ATTENTION, call, functools.partial(_rescaled, factor=1 + e)) for e in errors))
    results = [_plain(mode.bounded(y), out[0].shape)]
    if func.overloadpacket is aten._scaled_dot_product_attention_math:
        return [*results, _plain(mode.bounded(weights), out[1].shape)]
    return [*results, Bounded(torch.full(out[1].shape, math.inf, dtype=torch.float64))]  # logsumexp, unused


def _arguments(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by name, defaults included."""
    # OpOverload._schema is how torch itself reads an op's signature (torch.fx's normalize_function does too).
    schema = func._schema.arguments
    given = {a.name: a.default_value for a in schema if a.has_default_value()}
    given.update(zip((a.name for a in schema), args))
    given.update(kwargs)
    return given


def _call(mode: BoundMode, func: Any, *args: Any) -> torch.Tensor:
    """Run one op through the pass (its rule judges it), as if the model had called it."""
    return mode.__torch_dispatch__(func, (), args, {})


def _mask(mode: BoundMode, mask: torch.Tensor | None, causal: bool,
          shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(where a score is kept, the finite additive mask or None), both broadcast to the scores' ``shape``."""
    with mode.pause():
        keep = torch.ones(shape, dtype=torch.bool)
        if causal:
            keep = keep & torch.ones(shape[-2:], dtype=torch.bool).tril()
        if mask is None:
            return keep, None
        if mask.dtype == torch.bool:
            return keep & mask.expand(shape), None
        masked = torch.isneginf(mask)
        bound = mode.bounded(mask)
        finite = torch.where(masked, 0.0, mask).expand(shape).contiguous()
        # a score masked by an uncertain value may or may not be masked
        doubt = (masked & (bound.error > 0)).expand(shape)
        parts = [None if p is None else torch.where(masked, 0.0, p).expand(shape).contiguous()
                 for p in (bound.spread, bound.allowance)]
        error = torch.where(masked, 0.0, bound.error).expand(shape).contiguous().masked_fill(doubt, math.inf)
        mode.remember(finite, Bounded(error, parts[0], parts[1]))
    return keep & ~masked.expand(shape), finite


@functools.cache
def scale_errors(given: float | None, width: int, dtype: np.dtype) -> tuple[float, ...]:
    """The relative errors of the scale as the exporters form it: ``given`` (or 1 / sqrt(``width``), the root and
    the reciprocal each rounded or folded unrounded), held in ``dtype`` or float32 once, or as sqrt(s) on q and on
    k (the square of one held constant); the nonzero ones, each once."""
    exact = float(given) if given is not None else 1 / math.sqrt(width)
    if given is not None:
        formed = _formed(exact, dtype)
    else:
        formed = {s for root in _formed(math.sqrt(width), dtype) for s in _formed(1 / root, dtype)}
    held = {h for s in formed for h in _held(s, dtype)}
    roots = {r for s in formed for r in _held(math.sqrt(s), dtype)}
    return tuple(sorted({a / exact - 1 for a in {*held, *(r * r for r in roots)}} - {0.0}))


def _held(value: float, dtype: np.dtype) -> set[float]:
    """``value`` as a graph holds a constant: in float32, in ``dtype``, or in float32 then ``dtype``."""
    single = float(np.float32(value))
    return {single, float(dtype.type(value)), float(dtype.type(single))}


def _formed(value: float, dtype: np.dtype) -> set[float]:
    """A step on the way to the scale: held, or folded unrounded (in float64)."""
    return {value, *_held(value, dtype)}


def _scale_rounded(mode: BoundMode, scores: torch.Tensor, scale: float) -> None:
    """The scale as any runtime rounds it, the same relative error of at most SCALE_ULPS u on every score (tier 1;
    tier 2 takes its exact effect, ``_scale_effect``); and the product unscaled, q k^T, which a runtime may form
    first (torch's kernel, onnxruntime's FusedMatMul): where its terms pass the dtype's range, it may overflow."""
    bound = mode.bounded(scores)
    with mode.pause():
        shift = SCALE_ULPS * mode.unit * scores.abs()
        if bound.partial is not None:
            # where the worst case may overflow, tier 1 has no bound; where the values' own terms may, neither tier
            shift = shift.masked_fill(bound.partial.terms / min(scale, 1.0) > mode.max, math.inf)
            overflow = (bound.partial.terms - bound.partial.carried) / min(scale, 1.0) > mode.max
            bound.allowance = torch.zeros_like(scores).masked_fill(overflow, math.inf) if bound.allowance is None \
                else bound.allowance.masked_fill(overflow, math.inf)
            if bound.spread is not None:
                bound.spread = bound.spread.masked_fill(overflow, math.inf)
            bound.partial.carried = bound.partial.carried + shift  # the mask may still join the sum as a term
            bound.partial.terms = bound.partial.terms + shift
        bound.error = bound.error + shift
    mode.remember(scores, bound)


def _rescaled(func: Any, args: tuple, kwargs: dict, factor: float) -> tuple[tuple, dict]:
    """An attention call's arguments with its scale (given, or 1 / sqrt(E)) times ``factor``."""
    scale = _arguments(func, args, kwargs).get("scale") or 1 / math.sqrt(args[0].shape[-1])
    return args, {**kwargs, "scale": scale * factor}


def _masked(mode: BoundMode, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """-inf where masked, the score elsewhere. A masked score is exact, unless the score itself may overflow:
    a runtime adds the mask to it, and +inf - inf is NaN."""
    bound = mode.bounded(scores)
    with mode.pause():
        result = scores.masked_fill(~keep, -math.inf)
        reach = mode.reach(bound)
        lost = torch.where(torch.isinf(bound.error if reach is None else reach), math.inf, 0.0)
        parts = [None if p is None else torch.where(keep, p, lost)
                 for p in (bound.error, bound.spread, bound.allowance, bound.local)]
    mode.remember(result, Bounded(parts[0], parts[1], parts[2], local=parts[3]))
    return result


def _plain(bound: Bounded, shape: torch.Size) -> Bounded:
    """A result's tiers in the op's output shape, without the unrounded sum (no runtime fuses into attention)."""
    parts = [None if p is None else p.reshape(shape) for p in (bound.error, bound.spread, bound.allowance, bound.local)]
    return Bounded(parts[0], parts[1], parts[2], local=parts[3])
