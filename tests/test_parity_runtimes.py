"""OpenVINO and tract on the plain norm and attention models of tests/test_parity_attention.py: an MLP with layer
norms (and one with dropout too), a group norm, a tiny vision transformer, a TransformerEncoderLayer stack.

Each runtime runs both exporters' exports in float32 and float16 (OpenVINO computes a float16 model in float32,
``export.runtime.backends``; tract in the model's dtype) and is judged on check_parity's probes as onnxruntime is,
on the rows where it computes the function (``bench.variants.runtime_rows``). Elsewhere it computes another one:
its Relu maps NaN to 0, so a NaN or an infinite input (NaN from x - mean in a norm) gives numbers where the
function has none, and the check fails it there. Skipped where a runtime is not installed.
"""

from __future__ import annotations

import importlib.util

import pytest
from parity_judging import describe, passed
from test_parity_attention import judged  # noqa: F401 - the models, exported and checked once per module

from bench.variants import runtime_rows
from export.runtime.backends import load_runner

RUNTIMES = [pytest.param(runtime, marks=pytest.mark.skipif(importlib.util.find_spec(runtime) is None,
                                                            reason=f"{runtime} is not installed"))
            for runtime in ("openvino", "tract")]
NAMES = ("layer_norm_mlp", "dropout_mlp", "group_norm", "tiny_vit", "encoder_stack")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NAMES)
def test_runtime_passes_where_it_computes_the_function(judged, name, exporter, dtype, runtime):  # noqa: F811
    model = judged[name]
    verdicts = model.verdicts(load_runner(runtime, model.export(exporter, dtype)), dtype, rows=runtime_rows)
    print(f"RUNTIME {runtime} {name} {exporter} {dtype}: worst element at "
          f"{max(v.worst_ratio for v in verdicts):.3g} of its worst-case bound, "
          f"{max(v.worst_statistical for v in verdicts):.3g} of its statistical bound")
    assert passed(verdicts), describe(verdicts)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_runtime_fails_where_its_nan_differs(judged, dtype, runtime):  # noqa: F811
    """On the rows with a NaN or an infinity, where the function is NaN, the runtime's Relu gives numbers."""
    model = judged["dropout_mlp"]
    verdicts = model.verdicts(load_runner(runtime, model.export("torchscript", dtype)), dtype,
                              rows=lambda x: ~runtime_rows(x))
    assert all(v.failures["nan"] for v in verdicts), describe(verdicts)
