"""Lowerings as plugins: the `zoo.onnx` entry-point group, built-in and third-party, broken and conflicting."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_zoo
from torch import nn

import zoo
from export import ExportError, check_parity, lowerings, to_onnx

EXAMPLE = ROOT / "examples" / "zoo-example-plugin"


class _I1e(nn.Module):
    """An op no installed lowering covers (the README's example plugin, which a venv may hold, lowers i0e)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i1e(x)


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, pip-installed into a directory of its own."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    return target


def test_builtin_lowerings_are_entry_points_of_zoos_own_distribution() -> None:
    found = lowerings.installed()
    assert not found.problems
    builtin = [sources[0] for _, sources in zoo.lowerings.sources() if sources[0].distribution == zoo.DISTRIBUTION]
    assert len(builtin) >= 18 and all(s.target.startswith("export.lowerings.formulas:") for s in builtin)
    for source in builtin:
        assert zoo.lowerings.get(source.name).op == source.name


def test_a_pip_installed_lowering_exports_with_both_exporters_and_passes_parity(example_site: Path,
                                                                                 tmp_path: Path) -> None:
    code = (
        "import json, sys, torch, zoo\n"
        "from export import check_parity, to_onnx\n"
        "act = zoo.activations.create('bessel_bump')\n"
        "net = zoo.create_model('mlp', activation='bessel_bump', seed=0)\n"
        "out = {}\n"
        "for exporter in ('torchscript', 'dynamo'):\n"
        "    for dtype in ('float32', 'float16'):\n"
        "        model = act.half() if dtype == 'float16' else act.float()\n"
        "        path = to_onnx(model, f'{sys.argv[1]}/{exporter}-{dtype}.onnx', exporter=exporter, dtype=dtype,\n"
        "                       example_input=torch.randn(2, 3))\n"
        "        out[f'{exporter}-{dtype}'] = check_parity(model, path).worst_ratio\n"
        "out['mlp'] = check_parity(net, to_onnx(net, f'{sys.argv[1]}/mlp.onnx')).worst_ratio\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(example_site), "PATH": ""}, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(ratios) == {"torchscript-float32", "torchscript-float16", "dynamo-float32", "dynamo-float16", "mlp"}
    assert all(ratio <= 1 for ratio in ratios.values()), ratios


def test_zoo_run_includes_a_pip_installed_activation_and_its_row_passes(example_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    listed = run_zoo("run", "--list", env=env)
    assert "mlp-bessel_bump" in listed.stdout.split(), listed.stdout
    result = run_zoo("run", "--only", "mlp-bessel*", "-j", "1", "-o", str(tmp_path / "out"), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["models"]
    assert [(row["name"], row["status"], row["compute"]) for row in rows] == [("mlp-bessel_bump", "ok", "float32")]
    assert (tmp_path / "out" / "models" / "mlp-bessel_bump" / "model.onnx").is_file()


def test_zoo_show_and_list_name_a_plugins_lowering(example_site: Path) -> None:
    env = {"PYTHONPATH": str(example_site)}
    shown = run_zoo("show", "bessel_bump", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "special_i0e = zoo_example_plugin.lowering:special_i0e (from zoo-example-plugin 0.2.0)" in shown.stdout
    assert "export.lowerings.formulas:gelu" in run_zoo("show", "gelu", "--kind", "activations").stdout
    rows = json.loads(run_zoo("list", "lowerings", "--json", "--check", env=env).stdout)
    row = next(r for r in rows if r["name"] == "special_i0e")
    assert (row["status"], row["distribution"]) == ("ok", "zoo-example-plugin 0.2.0")


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_an_op_without_a_lowering_says_how_to_add_one(tmp_path: Path, exporter: str) -> None:
    with pytest.raises(ExportError, match="no lowering for .*i1e is installed: write one with .*zoo.onnx") as info:
        to_onnx(_I1e(), tmp_path / "m.onnx", exporter=exporter, example_input=torch.randn(2, 3))
    assert "Writing a plugin" in str(info.value)
    assert not any(tmp_path.iterdir())


def test_a_broken_lowering_is_reported_and_the_others_still_export(third_party, tmp_path: Path) -> None:
    third_party("zoo-brokenlow", {"zoo.onnx": {"special_i1e": "no_such_module_zz:lowering"}})
    problem = lowerings.installed().problems["special_i1e"]
    assert "special_i1e = no_such_module_zz:lowering (from zoo-brokenlow 1.0)" in problem
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU())
    report = check_parity(model, to_onnx(model, tmp_path / "gelu.onnx", example_input=torch.randn(2, 3)))
    assert report.ok
    with pytest.raises(ExportError, match="installed but unusable: .*no_such_module_zz"):
        to_onnx(_I1e(), tmp_path / "i1e.onnx", example_input=torch.randn(2, 3))
    assert_one_line_error(run_zoo("list", "lowerings", "--check"), "broken or in conflict: special_i1e")


TWIN = """
from export.lowerings import lowering

@lowering("gelu")
def gelu(ops, x, approximate="none"):
    '''A wrong GELU: ReLU.'''
    return ops("Relu", x)

@lowering("_softmax")
def softmax(ops, x, dim=-1, half_to_float=False):
    '''Claims the overload the built-in softmax lowering translates for dynamo.'''
    return ops("Relu", x)

@lowering("special_i1e")
def misnamed(ops, x):
    '''Declared under another op's name.'''
    return ops("Relu", x)
"""


def test_conflicting_and_misdeclared_lowerings_are_left_out_and_reported(third_party) -> None:
    third_party("zoo-twin", {"zoo.onnx": {"gelu": "twin_lowering:gelu", "_softmax": "twin_lowering:softmax",
                                          "bessel": "twin_lowering:misnamed"}},
                {"twin_lowering.py": TWIN})
    found = lowerings.installed()
    assert "zoo-twin" in found.problems["gelu"] and f"zoo-onnx {zoo.__version__}" in found.problems["gelu"]
    assert "claims an aten overload" in found.problems["softmax"]
    assert "claims an aten overload" in found.problems["_softmax"]
    assert "name its entry point 'special_i1e'" in found.problems["bessel"]
    active = {item.op for item in found.lowerings}
    assert {"gelu", "softmax", "_softmax", "special_i1e"}.isdisjoint(active)
    assert {"silu", "log_softmax", "softplus"} <= active


def _imports(path: Path) -> set[str]:
    """Every export module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("export"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("export"))
    return names


def test_no_two_export_modules_import_each_other() -> None:
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "export").rglob("*.py")
    }
    graph = {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}
    graph = {name: {dep for dep in deps if dep != "export"} for name, deps in graph.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(dep == goal or (dep not in seen and reaches(dep, goal, seen | {dep})) for dep in graph[start])

    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert not cycles, cycles


def test_library_code_never_imports_the_zoo_command() -> None:
    """Commands share options and library functions through zoo.options; zoo.cli is only the command."""
    importers = sorted(
        str(path.relative_to(ROOT)) for path in [*(ROOT / "export").rglob("*.py"), *(ROOT / "zoo").rglob("*.py")]
        if path.name != "__main__.py"
        and any(isinstance(node, (ast.Import, ast.ImportFrom)) and "zoo.cli" in
                ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
                for node in ast.walk(ast.parse(path.read_text())))
    )
    assert importers == [], importers


def test_import_export_pulls_in_nothing_heavy() -> None:
    code = "import sys, export; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


I1E_ACTIVATION = """
import torch
from torch import nn

class I1e(nn.Module):
    '''torch.special.i1e, with no lowering installed.'''

    def forward(self, x):
        return torch.special.i1e(x)
"""


def test_zoo_export_without_a_lowering_says_how_to_add_one_and_leaves_no_directories(third_party,
                                                                                   tmp_path: Path) -> None:
    third_party("zoo-i1e", {"zoo.activations": {"i1e_act": "i1e_activation:I1e"}},
                {"i1e_activation.py": I1E_ACTIVATION})
    out = tmp_path / "made" / "here" / "m.onnx"
    result = run_zoo("export", "mlp", "--activation", "i1e_act", "--hidden", "4", "--epochs", "1", "-o", str(out))
    assert_one_line_error(result, "no lowering for aten::special_i1e", "zoo.onnx")
    assert not (tmp_path / "made").exists()
