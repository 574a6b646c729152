"""Rules for batch normalisation in eval mode (folded into a conv or a linear layer, or not): y = s (x - mean) + beta
per channel, s = gamma / sqrt(var + eps).

Two honest evaluations differ in what rounds, and the bound admits both:

- unfolded (onnxruntime's BatchNormalization at ORT_DISABLE_ALL, torch eager): s and the shift
  c = beta - mean s computed once per channel, then x s + c at every element;
- folded into the preceding Conv or Gemm (onnxruntime from ORT_ENABLE_BASIC on, the torchscript
  exporter at export): every weight becomes W s and the bias (b - mean) s + beta, each rounded once,
  then one sum. Where the input is an unrounded sum (``Bounded.partial``), its terms give the size of
  those roundings; the output stays an unrounded sum, so a residual Add fused after it joins it.

Tier 1: the input's error through |s|, plus BATCH_NORM_ULPS roundings of the terms either form adds
(|s| sum|terms| + |s mean| + |beta|, PARITY-NOTES "gamma_{n+5}"). Tier 2: the elementwise roundings
(x s and the add) as spread; what an evaluation does once and then the same for every input as
allowance: s off by a few ulps, the shift rounded, and, where the input is a sum a runtime may fold
into, each folded weight W_k s rounded once (u |s| sum|W_k x_k|: a fixed relative change of every
weight, as systematic as a mutant's and a few ulps in size, never spread as noise).
"""

from __future__ import annotations

from typing import Any

import torch

from export.parity.bounds.core import (
    ROUNDING,
    Bounded,
    BoundError,
    BoundMode,
    Partial,
    aten,
    rule,
)

# Tier 1: the roundings the folded or the unfolded formula adds, in ulps of the terms it adds: s
# (eps, the add, sqrt, the division, gamma: 4), the folded weight or x s (1), the shift (2), the sum
# growing by one term and the final add (2), with room.
BATCH_NORM_ULPS = 10.0
# Tier 2 allowance, per channel: s = gamma / sqrt(var + eps) off by up to 4 ulps (eps rounded to the
# dtype, var + eps, sqrt, the division, gamma), and the shift beta - mean s by 2 (the product, the sum).
SCALE_ULPS = 4.0
SHIFT_ULPS = 2.0


@rule(aten.native_batch_norm, aten._native_batch_norm_legit_no_training)
def _batch_norm(mode: BoundMode, func: Any, args: tuple, kwargs: dict, out: Any) -> list[Bounded | None]:
    """native_batch_norm(x, gamma, beta, mean, var, training, momentum, eps) in eval: (y, empty, empty)."""
    if func.overloadpacket is aten.native_batch_norm:
        x, gamma, beta, mean, var, training, _, eps = args
    else:
        (x, gamma, beta, mean, var, _, eps), training = args, False
    if training or mean is None or var is None:
        raise BoundError(
            "no error rule for batch norm with batch statistics (training mode, or track_running_stats=False): "
            "each output depends on the whole batch; export and check the model in eval mode with running statistics"
        )
    y = out[0]
    bound = mode.bounded(x)
    with mode.pause():
        shape = (1, -1, *[1] * (x.dim() - 2))
        s = (var + eps).rsqrt() * (1.0 if gamma is None else gamma)
        s, mean = s.reshape(shape), mean.reshape(shape)
        shift = torch.zeros_like(s) if beta is None else beta.reshape(shape)
        size_s = s.abs()
        partial = bound.partial
        terms = x.abs() + bound.error if partial is None else partial.terms
        constant = (s * mean).abs() + shift.abs()
        own = mode.own(size_s * terms + constant, BATCH_NORM_ULPS) + mode.own(y.abs())
        carried = size_s * bound.error
        # unfolded: x s and + shift round at every element (spread); folded: each weight W_k s once (allowance)
        elementwise = mode.unit**2 * ROUNDING * ((s * x) ** 2 + y**2)
        variance = s * s * (torch.zeros_like(y) if bound.spread is None else bound.spread**2) + elementwise
        local = None if bound.local is None else s * s * bound.local
        allowance = mode.unit * (SCALE_ULPS * (s * (x - mean)).abs() + SHIFT_ULPS * constant)
        if partial is not None:
            allowance = allowance + mode.unit * size_s * partial.terms
        if bound.allowance is not None:
            allowance = allowance + size_s * bound.allowance
        result = Bounded(carried + own, variance.sqrt() + mode.tiny, allowance, local=local)
        if partial is not None:
            result.partial = Partial(
                size_s * partial.terms + constant, partial.count + 1, size_s * partial.carried + own,
                s * s * partial.squares + constant**2, s * s * partial.variance,
                None if partial.nonzero is None else partial.nonzero + 1,
            )
    return [result, None, None]

