"""The parity matrix: every activation, alone and in an MLP with each linear-layer style, and a small
network for each op family beyond them (convolution, batch/group/layer norm, pooling, residual,
attention: ``export.parity.networks``), through both exporters, every supported opset and both dtypes,
with our fixes and with upstream's lowering.

    python -m export.parity.matrix [--quick] [--json] [--no-upstream] [--only NAME]...

``--quick`` keeps the default and the highest opset of each exporter (what tests/ runs).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import zoo
from export import lowerings
from export.onnx_export import DEFAULT_OPSET, EXPORTERS, ExportError, opset_range, to_onnx
from export.options import DTYPES
from export.parity.check import check_parity
from export.parity.networks import NETWORKS, build_network
from export.run.cluster import ClusterError, tasks

# Activation variants beyond each registered activation with its defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "gelu_tanh": {"name": "gelu", "approximate": "tanh"},
    "softplus_b2_t5": {"name": "softplus", "beta": 2.0, "threshold": 5.0},
}
ALONE = "alone"
NETWORK = "network"  # the model kind of a network row
ALONE_FEATURES = 4
MLP_CONFIG = {"in_features": 2, "out_features": 1, "hidden": [64, 64]}
SEED = 0


@dataclass(frozen=True)
class Case:
    """One cell of the matrix."""

    part: str  # an activation, or a network of export.parity.networks
    model: str  # ALONE, a layer name or NETWORK
    exporter: str
    opset: int
    dtype: str

    def label(self) -> str:
        """A short, unique, pytest-friendly id."""
        return f"{self.part}-{self.model}-{self.exporter}{self.opset}-{self.dtype}"

    def dynamic_axes(self) -> tuple[int, ...]:
        """The input axes beyond the batch that take any size (a network's sequence length)."""
        return NETWORKS[self.part].dynamic_axes if self.model == NETWORK else ()


@dataclass
class Result:
    """The outcome of one case."""

    case: Case
    upstream: bool
    ok: bool
    detail: str
    seconds: float


def activation_specs() -> dict[str, dict[str, Any]]:
    """Every activation to test: the registry's names with defaults, plus VARIANTS."""
    specs: dict[str, dict[str, Any]] = {name: {"name": name} for name in zoo.activations.names()}
    specs.update(VARIANTS)
    return specs


def model_kinds() -> list[str]:
    """The activation alone, then an MLP with each registered linear layer."""
    return [ALONE, *zoo.layers.names()]


def opsets(exporter: str, quick: bool) -> list[int]:
    """Every supported opset, or with ``quick`` the default (or lowest) and the highest."""
    low, high = opset_range(exporter)
    if quick:
        return sorted({min(max(DEFAULT_OPSET, low), high), high})
    return list(range(low, high + 1))


def cases(quick: bool = False, only: list[str] | None = None) -> list[Case]:
    """All cases (or those of the activations and networks ``only`` names), grouped by activation, then networks."""
    grid = [(exporter, opset) for exporter in EXPORTERS for opset in opsets(exporter, quick)]
    rows = [(name, kind) for name in activation_specs() for kind in model_kinds()]
    rows += [(name, NETWORK) for name in NETWORKS]
    return [
        Case(name, kind, exporter, opset, dtype)
        for (name, kind), (exporter, opset), dtype in itertools.product(rows, grid, DTYPES)
        if not only or name in only
    ]


def build(case: Case) -> tuple[torch.nn.Module, torch.Tensor]:
    """The seeded model of a case and its example input."""
    if case.model == NETWORK:
        return build_network(case.part)
    spec = dict(activation_specs()[case.part])
    name = spec.pop("name")
    generator = torch.Generator().manual_seed(SEED)
    if case.model == ALONE:
        return zoo.activations.create(name, **spec), torch.randn(2, ALONE_FEATURES, generator=generator)
    activation = {"name": name, **spec} if spec else name
    model = zoo.create_model("mlp", activation=activation, layer=case.model, seed=SEED, **MLP_CONFIG)
    return model, torch.randn(2, MLP_CONFIG["in_features"], generator=generator)


def run_case(work: tuple[Case, bool]) -> Result:
    """Export one case (with our lowerings, or upstream's when the flag is set) and check its parity."""
    case, upstream = work
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only contend with the other workers
    try:
        model, example = build(case)
        with tempfile.TemporaryDirectory(prefix="zoo-matrix-") as directory:
            path = Path(directory) / f"{case.label()}.onnx"
            with lowerings.disabled() if upstream else contextlib.nullcontext():
                to_onnx(model, path, opset=case.opset, exporter=case.exporter, dtype=case.dtype,
                        example_input=example, dynamic_axes=case.dynamic_axes())
            report = check_parity(model, path, strict=False, explain=False)
        report.path = path.name  # the case, not the throwaway directory it was checked in
        ok, detail = report.ok, report.explain()
    except ExportError as error:
        ok, detail = False, f"export failed: {error}"
    finally:
        torch.set_num_threads(threads)
    return Result(case, upstream, ok, detail, time.perf_counter() - start)


def run(selected: list[Case], *, upstream: bool, jobs: int = 1, cluster: str | None = None,
        stream: Any = sys.stderr) -> list[Result]:
    """Run cases (ours, and upstream's when asked) in ``jobs`` processes or on a Dask cluster, with progress."""
    work = list(itertools.product(selected, (False, True) if upstream else (False,)))
    results = []
    redraw = stream.isatty()  # a terminal gets one status line; a log gets a line per case
    with contextlib.ExitStack() as stack:
        finished, _ = tasks(run_case, work, jobs=jobs, stack=stack, address=cluster)
        for index, ((case, is_upstream), result) in enumerate(finished, 1):
            if isinstance(result, BaseException):  # the worker died, or the task could not run
                result = Result(case, is_upstream, False, f"{type(result).__name__}: {result}", 0.0)
            results.append(result)
            side = "upstream" if result.upstream else "ours"
            line = f"[{index}/{len(work)}] {result.case.label()} {side}: {'ok' if result.ok else 'FAIL'}"
            stream.write(f"\r\x1b[K{line}" if redraw else f"{line}\n")
            stream.flush()
    if redraw:
        stream.write("\n")
    order = {item: position for position, item in enumerate(work)}
    return sorted(results, key=lambda r: order[(r.case, r.upstream)])


def pass_rates(results: list[Result]) -> dict[str, dict[str, float]]:
    """Pass rate per (ours|upstream) and dtype, and over all dtypes."""
    rates: dict[str, dict[str, float]] = {}
    for side, is_upstream in (("ours", False), ("upstream", True)):
        mine = [r for r in results if r.upstream == is_upstream]
        if not mine:
            continue
        groups = {dtype: [r for r in mine if r.case.dtype == dtype] for dtype in DTYPES}
        groups["all"] = mine
        rates[side] = {k: sum(r.ok for r in v) / len(v) for k, v in groups.items() if v}
    return rates


def table(results: list[Result]) -> str:
    """One row per activation (or network) and model, one column per exporter/opset/dtype: ours (upstream)."""
    columns = sorted({(r.case.exporter, r.case.opset, r.case.dtype) for r in results},
                     key=lambda c: (EXPORTERS.index(c[0]), c[1], c[2]))
    verdict = {(r.case.part, r.case.model, r.case.exporter, r.case.opset, r.case.dtype, r.upstream): r.ok
               for r in results}
    short = {"torchscript": "ts", "dynamo": "dy"}
    header = ["activation or network", "model"] + [f"{short[e]}{o} f{d[-2:]}" for e, o, d in columns]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for part, model in dict.fromkeys((r.case.part, r.case.model) for r in results):
        cells = []
        for exporter, opset, dtype in columns:
            ours = verdict.get((part, model, exporter, opset, dtype, False))
            theirs = verdict.get((part, model, exporter, opset, dtype, True))
            cells.append(_mark(ours) + (f" ({_mark(theirs)})" if theirs is not None else ""))
        lines.append(" | ".join([part, model, *cells]))
    return "\n".join(lines)


def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "FAIL", None: "-"}[ok]


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print the table and pass rates; exit 1 if any of ours fails."""
    parser = argparse.ArgumentParser(prog="python -m export.parity.matrix", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="default and highest opset only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-upstream", dest="upstream", action="store_false", help="skip the upstream baseline")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this activation or network (repeatable); networks: " + ", ".join(NETWORKS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (with --cluster local: Dask workers)")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="run cases on the Dask scheduler at ADDRESS, or 'local' for a LocalCluster here")
    args = parser.parse_args(argv)
    try:
        results = run(cases(args.quick, args.only), upstream=args.upstream, jobs=args.jobs,
                      cluster=args.cluster)
    except ClusterError as error:
        parser.exit(2, f"python -m export.parity.matrix: error: {error}\n")
    rates = pass_rates(results)
    if args.json:
        print(json.dumps({"pass_rates": rates, "results": [_result_json(r) for r in results]}, indent=2))
    else:
        print("cells: ours (upstream); ts = torchscript, dy = dynamo, then opset and dtype")
        print(table(results))
        for side, by_dtype in rates.items():
            print(f"{side}: " + ", ".join(f"{k} {v:.1%}" for k, v in by_dtype.items()))
        for result in results:
            if not result.ok and not result.upstream:
                print(f"FAIL {result.case.label()}: {result.detail}")
    return 0 if all(r.ok for r in results if not r.upstream) else 1


def _result_json(result: Result) -> dict[str, Any]:
    return {**asdict(result.case), "upstream": result.upstream, "ok": result.ok,
            "detail": result.detail, "seconds": round(result.seconds, 3)}


if __name__ == "__main__":
    sys.exit(main())
