"""`zoo run --cluster`: rows on a Dask cluster give the report and bundles of a local run; dead workers cost a row."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_zoo

pytest.importorskip("distributed")

ONLY = ("--only", "linreg-linear", "--only", "mlp-relu")

DYING = """
import os
from pathlib import Path
from torch import nn

class DiesOnce(nn.ReLU):
    '''Kills the process building it the first time (a marker file remembers), then is a ReLU.'''

    def __init__(self):
        marker = Path(os.environ["ZOO_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died once")
            os._exit(1)
        super().__init__()

class AlwaysDies(nn.ReLU):
    '''Kills every process that builds it.'''

    def __init__(self):
        os._exit(1)
"""


def _run_in(directory: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """`zoo run -o zoo-out --json ARGS` from ``directory``, so paths in the reports read the same."""
    directory.mkdir()
    result = subprocess.run([sys.executable, "-m", "zoo", "run", "-o", "zoo-out", "--json", *args], cwd=directory,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                            env={**os.environ, **(env or {})}, check=False)
    assert result.stdout, result.stderr
    return {"returncode": result.returncode, "report": json.loads(result.stdout), "stderr": result.stderr}


def _without_timings(report: dict) -> dict:
    settings = {k: v for k, v in report["settings"].items() if k not in ("jobs", "cluster")}
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in report["models"]]
    return {**report, "seconds": None, "settings": settings, "models": rows}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_local_cluster_gives_the_report_and_bundles_of_a_local_run(tmp_path: Path) -> None:
    local = _run_in(tmp_path / "local", *ONLY, "--jobs", "1")
    dask = _run_in(tmp_path / "dask", *ONLY, "--cluster", "local", "--jobs", "2")
    assert local["returncode"] == dask["returncode"] == 0, dask["stderr"]
    cluster = dask["report"]["settings"]["cluster"]
    assert cluster["workers"] == 2 and cluster["local"] and cluster["address"].startswith("tcp://")
    assert _without_timings(dask["report"]) == _without_timings(local["report"])
    bundles = _files(tmp_path / "local" / "zoo-out" / "models")
    assert bundles and _files(tmp_path / "dask" / "zoo-out" / "models") == bundles


def test_a_dead_worker_costs_its_row_a_retry_then_the_row_only(third_party, tmp_path: Path) -> None:
    third_party("zoo-dying", {"zoo.activations": {"dies_once": "zoo_test_dying:DiesOnce",
                                                  "always_dies": "zoo_test_dying:AlwaysDies"}},
                {"zoo_test_dying.py": DYING})
    marker = tmp_path / "marker"
    run = _run_in(tmp_path / "run", "--only", "mlp-dies_once", "--only", "mlp-always_dies", "--only", "mlp-relu",
                  "--cluster", "local", "--jobs", "2", env={"ZOO_TEST_MARKER": str(marker)})
    rows = {row["name"]: row for row in run["report"]["models"]}
    assert marker.exists()
    assert rows["mlp-dies_once"]["ok"] and rows["mlp-relu"]["ok"]
    assert not rows["mlp-always_dies"]["ok"] and rows["mlp-always_dies"]["stage"] == "crash"
    assert "worker" in rows["mlp-always_dies"]["error"]
    assert run["returncode"] == 1 and "mlp-always_dies" in run["stderr"]


def test_an_unreachable_scheduler_is_one_line_before_any_row(tmp_path: Path) -> None:
    result = run_zoo("run", "-o", str(tmp_path / "out"), *ONLY, "--cluster", "tcp://127.0.0.1:9")
    assert_one_line_error(result, "tcp://127.0.0.1:9")
    assert not (tmp_path / "out").exists()


def test_the_matrix_on_a_local_cluster_gives_the_results_of_a_local_run() -> None:
    from export.parity import matrix

    selected = [case for case in matrix.cases(quick=True, only=["relu"]) if case.model == matrix.ALONE][:4]
    local = matrix.run(selected, upstream=False, jobs=1, stream=io.StringIO())
    dask = matrix.run(selected, upstream=False, jobs=2, cluster="local", stream=io.StringIO())
    assert len(local) == 4 and all(result.ok for result in local)
    assert [dataclasses.replace(r, seconds=0) for r in dask] == [dataclasses.replace(r, seconds=0) for r in local]


def test_the_matrix_prints_a_line_per_case_when_its_progress_goes_to_a_log() -> None:
    from export.parity import matrix

    selected = [case for case in matrix.cases(quick=True, only=["relu"]) if case.model == matrix.ALONE][:2]
    log = io.StringIO()
    matrix.run(selected, upstream=False, jobs=1, stream=log)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and all(line.endswith(": ok") for line in lines) and "\r" not in log.getvalue(), lines
