"""The parity check's power, measured both ways: the wrong exports it catches, the honest ones it passes.

    python -m bench.power [--quick] [--json FILE]

Two studies, as issue 21 measured them, every judge seeing the same inputs:

1. **Trained MLPs**: 2-layer MLPs (hidden 64) with eight activations, trained briefly, judged on the
   parity probes (the training range and the whole float range). Mutants: each layer's most
   influential weight, the output bias, the output scale, each activation constant and slope,
   off by 1e-6 to 1e-3 relative. Honest: every variant of ``bench.variants.honest``.
2. **Sizes**: untrained MLPs from 1-64-64-1 to 784-1024-1024-10 and 12 layers deep, judged on
   2,000 N(0,1) rows at three scales (0.1, 1, 10). The same mutant classes; the honest worst
   element in units of each tier; the cost of the full check per probe row and per parameter.

Only mutants whose deviation (``bench.variants.deviation``) exceeds twice the largest honest
deviation count, as in the issue. The judges: ``check_parity``'s rule (``compare_output`` with both
tiers), polygraphy's default (|d| <= 1e-5 or |d| <= 1e-5 |ref|, against torch float32) on the
training range and on the whole range, ``torch.testing.assert_close``'s float32 defaults and
optimum's ``np.allclose(ref, out, atol=1e-5)`` on the training range.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import zoo
from bench import variants
from export.onnx_export import to_onnx
from export.parity import bounds, check_parity, reference_probes
from export.runtime.compare import Tolerance, compare_output

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "silu", "softplus", "elu", "leaky_relu")
TRAINING_RANGE = 10.0
SIZES = (  # (in, hidden, out, activation)
    (1, [64, 64], 1, "tanh"),
    (64, [256, 256], 10, "gelu"),
    (784, [1024, 1024], 10, "gelu"),
    (32, [64] * 12, 1, "tanh"),
    (32, [128] * 8, 1, "relu"),
    (32, [256] * 4, 1, "leaky_relu"),
)
QUICK_SIZES = SIZES[:2] + SIZES[3:5]
SCALES = (0.1, 1.0, 10.0)
ROWS = 2000


@dataclasses.dataclass
class Judged:
    """One variant's verdict from every judge, and how far it strays."""

    model: str
    variant: str
    honest: bool
    deviation: float
    verdicts: dict[str, bool]  # judge -> passed
    worst: float = math.nan  # worst element in units of the worst-case bound (ours)
    worst_statistical: float = math.nan  # ... and of the statistical bound


JUDGES = ("check_parity", "polygraphy, training range", "polygraphy, whole range", "assert_close, training range",
          "optimum, training range")


def judge_all(name: str, variant: variants.Variant, x: np.ndarray, reference: np.ndarray, tolerance: Tolerance,
              torch_out: np.ndarray, dtype: str = "float32") -> Judged:
    """Every judge's verdict on ``variant`` over the rows of ``x`` it is judged on."""
    rows = variant.where(x)
    actual = variant.run(x[rows]).astype(dtype)
    ref, tol, expected = reference[rows], tolerance.rows(rows), torch_out[rows]
    ours = compare_output("output", actual, ref, tol, dtype=dtype)
    training = (np.abs(np.nan_to_num(x[rows].reshape(rows.sum(), -1), nan=np.inf)) <= TRAINING_RANGE).all(1)
    verdicts = {
        "check_parity": ours.ok,
        "polygraphy, training range": _polygraphy(actual[training], expected[training]),
        "polygraphy, whole range": _polygraphy(actual, expected),
        "assert_close, training range": _assert_close(actual[training], expected[training]),
        "optimum, training range": bool(np.allclose(expected[training], actual[training], atol=1e-5)),
    }
    return Judged(name, variant.name, variant.honest, variants.deviation(actual, ref), verdicts,
                  ours.worst_ratio, ours.worst_statistical)


def _polygraphy(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> bool:
    """polygraphy's default comparison: each element within atol OR within rtol of the reference; NaN only with NaN."""
    with np.errstate(all="ignore"):
        error = np.abs(actual.astype(np.float64) - expected)
        close = (error <= tolerance) | (error <= tolerance * np.abs(expected)) | (actual == expected)
    close |= np.isnan(actual) & np.isnan(expected)
    return bool(close.all())


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> bool:
    try:
        torch.testing.assert_close(torch.from_numpy(actual), torch.from_numpy(expected))
    except AssertionError:
        return False
    return True


def study(name: str, model: torch.nn.Module, x: np.ndarray, reference: np.ndarray, tolerance: Tolerance,
          *, example: torch.Tensor, quick: bool) -> list[Judged]:
    """Judge every honest variant and every mutant of ``model`` on ``x``."""
    with tempfile.TemporaryDirectory(prefix="zoo-power-") as directory:
        path = to_onnx(model, Path(directory) / "model.onnx", example_input=example)
        proto = onnx.load(str(path))
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    honest = variants.honest(model, proto, example=example, exporters=not quick, threads=not quick)
    sizes = (1e-3, 1e-4, 1e-5) if quick else (1e-3, 1e-4, 1e-5, 1e-6)
    wrong = variants.mutants(proto, variants.mlp_mutants(proto, x[np.isfinite(x).all(1)][:2048], sizes=sizes))
    return [judge_all(name, v, x, reference, tolerance, torch_out) for v in [*honest, *wrong]]


def trained(activation: str) -> torch.nn.Module:
    """A 2-layer MLP (hidden 64) trained briefly on the nonlinear dataset: its layers cancel as trained ones do."""
    model = zoo.create_model("mlp", activation=activation, hidden=[64, 64], seed=0)
    zoo.train(model, zoo.datasets.create("nonlinear", seed=0), recipe="notes", epochs=2, progress=False)
    return model.eval()


def trained_study(quick: bool) -> list[Judged]:
    """Study 1: trained 2-layer MLPs on the parity probes."""
    results = []
    for activation in ACTIVATIONS[:3] if quick else ACTIVATIONS:
        model = trained(activation)
        probes = reference_probes(model, (1,), dtype="float32")
        results += study(f"mlp-{activation}", model, probes.inputs, probes.references[0], probes.tolerances[0],
                         example=torch.randn(2, 1), quick=quick)
    return results


def sized(spec: tuple[int, list[int], int, str]) -> tuple[str, torch.nn.Module]:
    features, hidden, out, activation = spec
    label = f"{features}-{'-'.join(map(str, hidden)) if len(set(hidden)) > 1 or len(hidden) < 3 else f'[{hidden[0]}]x{len(hidden)}'}-{out} {activation}"
    model = zoo.create_model("mlp", in_features=features, out_features=out, hidden=hidden, activation=activation,
                             seed=0)
    return label, model.eval()


def sizes_study(quick: bool) -> tuple[list[Judged], list[dict[str, Any]]]:
    """Study 2: untrained MLPs of several widths and depths on N(0,1) rows at three scales; and the check's cost."""
    results, costs = [], []
    for spec in QUICK_SIZES if quick else SIZES:
        label, model = sized(spec)
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.standard_normal((ROWS, spec[0])) * s for s in SCALES]).astype(np.float32)
        run = bounds.bounded_run(model, x, dtype="float32")
        results += study(label, model, x, run.outputs[0], run.tolerances[0], example=torch.randn(2, spec[0]),
                         quick=quick)
        costs.append(_cost(label, model, spec[0]))
    return results, costs


def _cost(label: str, model: torch.nn.Module, features: int) -> dict[str, Any]:
    """The full check_parity of the model: seconds, probe rows, per row and per parameter."""
    with tempfile.TemporaryDirectory(prefix="zoo-power-") as directory:
        path = to_onnx(model, Path(directory) / "model.onnx", example_input=torch.randn(2, features))
        start = time.perf_counter()
        report = check_parity(model, path, strict=False, explain=False)
        seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": label, "ok": report.ok, "rows": report.rows, "seconds": seconds, "parameters": parameters,
            "us_per_row": 1e6 * seconds / report.rows, "ns_per_row_parameter": 1e9 * seconds / report.rows / parameters,
            "worst": report.worst_ratio, "worst_statistical": report.worst_statistical}


def summary(results: list[Judged]) -> dict[str, dict[str, Any]]:
    """Per judge: mutants caught among those beyond twice the floor, honest variants flagged."""
    floors = {}
    for r in results:
        if r.honest:
            floors[r.model] = max(floors.get(r.model, 0.0), r.deviation)
    counted = [r for r in results if not r.honest and r.deviation > 2 * floors.get(r.model, 0.0)]
    honest = [r for r in results if r.honest]
    return {judge: {"caught": sum(not r.verdicts[judge] for r in counted), "mutants": len(counted),
                    "flagged": sum(not r.verdicts[judge] for r in honest), "honest": len(honest),
                    "missed": [f"{r.model}: {r.variant} ({r.deviation / floors[r.model]:.3g}x the floor)"
                               for r in counted if r.verdicts[judge]] if judge == "check_parity" else []}
            for judge in JUDGES}


def honest_worst(results: list[Judged]) -> dict[str, tuple[float, float]]:
    """Per model: the honest worst element in units of the worst-case bound and of the statistical bound."""
    worst: dict[str, tuple[float, float]] = {}
    for r in results:
        if r.honest:
            old = worst.get(r.model, (0.0, 0.0))
            worst[r.model] = (max(old[0], r.worst), max(old[1], r.worst_statistical))
    return worst


def table(title: str, rows: dict[str, dict[str, Any]]) -> str:
    """The README's judge table."""
    lines = [f"{title}", "", "| judge | mutants caught | honest flagged |", "|---|---|---|"]
    lines += [f"| {judge} | {r['caught']}/{r['mutants']} | {r['flagged']}/{r['honest']} |" for judge, r in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both studies and print their tables (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m bench.power", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer models, sizes and honest variants")
    parser.add_argument("--json", type=Path, help="also write every verdict to this file")
    args = parser.parse_args(argv)
    with variants.threads(1):
        first = trained_study(args.quick)
        second, costs = sizes_study(args.quick)
    report: dict[str, Any] = {"trained": summary(first), "sizes": summary(second), "costs": costs,
                              "honest_worst": {**honest_worst(first), **honest_worst(second)}}
    print(table("Trained 2-layer MLPs (hidden 64), parity probes:", report["trained"]))
    print()
    print(table("Untrained MLPs, 64 to 1024 wide and 2 to 12 deep, N(0,1) rows at three scales:", report["sizes"]))
    print("\nhonest worst element (worst-case bound, statistical bound):")
    for model, (first_tier, second_tier) in report["honest_worst"].items():
        print(f"  {model:28s} {first_tier:10.3g} {second_tier:10.3g}")
    print("\ncost of the full check:")
    for cost in costs:
        print(f"  {cost['model']:28s} {cost['seconds']:7.2f} s  {cost['rows']} rows  {cost['us_per_row']:.0f} us/row  "
              f"{cost['ns_per_row_parameter']:.3g} ns/(row x parameter)")
    for part in ("trained", "sizes"):
        for miss in report[part]["check_parity"]["missed"]:
            print(f"  missed ({part}): {miss}")
    if args.json:
        report["verdicts"] = [dataclasses.asdict(r) for r in [*first, *second]]
        args.json.write_text(json.dumps(report, indent=2, default=_jsonable))
    return 0


def _jsonable(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
