"""Rules for attention: ``scaled_dot_product_attention`` as the ops it is made of, each judged by its own rule.

torch on the CPU runs ``F.scaled_dot_product_attention`` as one op (``_scaled_dot_product_flash_attention_for_cpu``,
or ``_scaled_dot_product_attention_math``), which no exporter keeps: both lower it to
q sqrt(s) (k sqrt(s))^T + mask, Softmax, MatMul with v (opset 23 may keep it whole as ONNX
Attention, which scales the product once). The rule runs those ops through the pass, so the
matrix products, the softmax and the mask addition are judged by their own rules, and adds the
scale as a constant a runtime rounds (s, sqrt(s) or 1 / sqrt(E) in the dtype: a relative error of
``SCALE_ULPS`` u on every score, the same for all of them, so an allowance).

Masks: a boolean mask arrives as an additive one (0 where kept, -inf where masked), ``is_causal``
keeps key j <= query i. A masked score is exactly -inf and its weight exactly 0. A query that may
attend to no key is refused: torch's kernel gives 0 there (PyTorch PR 131060), an ONNX Softmax
NaN, so the export would not compute torch's function.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from export.parity.bounds.core import Bounded, BoundError, BoundMode, aten, rule

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
    if mask is not None:
        scores = _call(mode, aten.add.Tensor, scores, _call(mode, aten.reshape.default, mask, scores.shape))
    scores = _masked(mode, scores, keep.reshape(scores.shape))
    weights = _call(mode, aten._softmax.default, scores, -1, False)
    v3 = _call(mode, aten.reshape.default, v, (-1, keys, v.shape[-1]))
    y = _call(mode, aten.bmm.default, weights, v3)
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


def _scale_rounded(mode: BoundMode, scores: torch.Tensor, scale: float) -> None:
    """The scale as a runtime rounds it, the same relative error on every score (tier 1 and the allowance); and
    the product unscaled, q k^T, which a runtime may form first (torch's kernel, onnxruntime's FusedMatMul):
    where its terms pass the dtype's range, it may overflow."""
    bound = mode.bounded(scores)
    with mode.pause():
        shift = SCALE_ULPS * mode.unit * scores.abs()
        if bound.partial is not None:
            overflow = bound.partial.terms / min(scale, 1.0) > mode.max  # then no tier bounds the score
            shift = shift.masked_fill(overflow, math.inf)
            if bound.spread is not None:
                bound.spread = bound.spread.masked_fill(overflow, math.inf)
            bound.partial.carried = bound.partial.carried + shift  # the mask may still join the sum as a term
            bound.partial.terms = bound.partial.terms + shift
        bound.error = bound.error + shift
        bound.allowance = shift if bound.allowance is None else bound.allowance + shift
    mode.remember(scores, bound)


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
