"""The `zoo` command as a user runs it: listing, showing, errors, third-party packages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, assert_one_line_error, builtin_names, run_zoo

from zoo.errors import UnknownNameError


def test_version_and_help():
    import zoo

    assert run_zoo("--version").stdout.strip() == f"zoo, version {zoo.__version__} (distribution zoo-onnx)"
    result = run_zoo("--help")
    assert result.returncode == 0
    for command in ("list", "show"):
        assert command in result.stdout


def test_list_every_kind_as_a_table():
    import zoo

    result = run_zoo("list")
    assert result.returncode == 0, result.stderr
    assert len(builtin_names(zoo.activations)) == 27
    for kind in ("activations", "layers", "convs", "norms", "pools", "models", "datasets"):  # the built-ins and whatever the venv adds
        assert f"{kind} ({len(zoo.registries[kind].names())})" in result.stdout
    assert "leaky_relu" in result.stdout and "plugins.activations:LeakyReLU" in result.stdout


def test_list_one_kind_as_json():
    import zoo

    result = run_zoo("list", "layers", "--json")
    rows = [row for row in json.loads(result.stdout) if row["target"].startswith("plugins.")]
    assert [row["name"] for row in rows] == ["einsum_linear", "linear", "param_linear"]
    assert {row["status"] for row in rows} == {"unchecked"}  # nothing imported without --check
    assert rows[0]["distribution"] == f"zoo-onnx {zoo.__version__}"
    assert rows[1]["aliases"] == ["dense", "fc"] and "torch.nn.Linear" in rows[1]["description"]
    checked = json.loads(run_zoo("list", "layers", "--json", "--check").stdout)
    assert {row["status"] for row in checked} == {"ok"}


def test_list_filters_by_pattern_and_shows_aliases_and_descriptions():
    result = run_zoo("list", "activations", "soft*")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert names == ["softmax", "softmin", "softplus", "softshrink", "softsign"]
    assert "Applies the Softplus function element-wise." in result.stdout
    every_kind = run_zoo("list", "*linear*").stdout
    assert "param_linear (matmul_linear)" in every_kind and "linear_regression (linreg)" in every_kind
    assert "activations" not in every_kind
    assert_one_line_error(run_zoo("list", "layers", "zz*"), "no layer matches 'zz*'")


def test_list_keeps_the_names_matching_any_of_several_patterns():
    result = run_zoo("list", "activations", "soft*", "relu*")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert names == ["relu", "relu6", "softmax", "softmin", "softplus", "softshrink", "softsign"]
    every_kind = json.loads(run_zoo("list", "*linear", "blob*", "--json").stdout)
    assert [(row["kind"], row["name"]) for row in every_kind] == [
        ("layers", "einsum_linear"), ("layers", "linear"), ("layers", "param_linear"),
        ("datasets", "blobs"), ("datasets", "linear"), ("datasets", "nonlinear")]
    assert_one_line_error(run_zoo("list", "layers", "zz*", "qq*"), "no layer matches 'zz*' or 'qq*'")
    assert "[KIND] [PATTERN]..." in run_zoo("list", "--help").stdout


def test_an_alias_with_arguments_says_what_it_means():
    shown = run_zoo("show", "gelu_tanh").stdout
    assert "  alias:        gelu_tanh = gelu(approximate='tanh')\n" in shown
    assert "  aliases:      gelu_tanh = gelu(approximate='tanh')\n" in shown
    assert "  aliases:      swish = silu\n" in run_zoo("show", "silu").stdout
    assert "gelu (gelu_tanh: approximate='tanh')  " in run_zoo("list", "activations", "gelu*").stdout
    (row,) = json.loads(run_zoo("list", "activations", "gelu", "--json").stdout)
    assert row["aliases"] == ["gelu_tanh"] and row["alias_arguments"] == {"gelu_tanh": {"approximate": "tanh"}}
    (info,) = json.loads(run_zoo("show", "gelu", "--kind", "activations", "--json").stdout)
    assert info["alias_arguments"] == {"gelu_tanh": {"approximate": "tanh"}}


def test_a_suggestion_is_made_once_even_when_several_kinds_know_the_name():
    result = run_zoo("show", "sofplus")  # softplus is an activation and a lowering (aten op)
    assert_one_line_error(result, "did you mean 'softplus',")
    assert result.stderr.count("'softplus'") == 1
    assert sorted(UnknownNameError("plugin", "relu7", ["relu6", "relu6", "relu"]).suggestions) == ["relu", "relu6"]


def test_a_dataset_plugin_without_the_contract_says_what_it_lacks_and_where_it_is_written(third_party):
    third_party("zoo-bare-data", {"zoo.datasets": {"bare": "bare_data:bare"}}, {"bare_data.py": """
        import types

        import torch

        def bare(seed=0, device="cpu"):
            x = torch.linspace(-1, 1, 8).unsqueeze(1)
            return types.SimpleNamespace(x=x, y=2 * x, task="regression")  # no name, no params
    """})
    result = run_zoo("train", "linear_regression", "--dataset", "bare")
    assert_one_line_error(result, "without name, params", "'Writing a plugin' in zoo's README")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    plugins = readme[readme.index("\n## Writing a plugin\n"):]
    plugins = plugins[: plugins.index("\n## ", 1)]
    for attribute in ("`x`", "`y`", "`task`", "`name`", "`params`"):
        assert attribute in plugins, attribute


def test_show_prints_the_real_parameters_with_defaults():
    sigmoid = run_zoo("show", "sigmoid").stdout
    assert "signature:    sigmoid()\n" in sigmoid and "*args" not in sigmoid
    mlp = run_zoo("show", "mlp").stdout
    assert "hidden: Sequence[int] = (64, 64)" in mlp and "-> " not in mlp


def test_help_shows_whole_descriptions_and_bare_zoo_prints_usage():
    result = run_zoo("--help")
    commands = " ".join(result.stdout.split("Commands:")[1].split())
    assert "..." not in commands and "prove it computes the same numbers as torch." in commands
    bare = run_zoo()
    assert bare.returncode == 0 and bare.stdout.startswith("Usage: zoo") and "error" not in bare.stderr


def test_every_error_the_readme_names_is_importable_from_zoo():
    import zoo

    for name in ("UnknownNameError", "BadArgumentsError", "DuplicateNameError", "PluginLoadError",
                 "TrainingError", "DivergenceError", "DeviceError", "CheckpointError", "OutputError"):
        assert issubclass(getattr(zoo, name), zoo.ZooError), name


def test_export_names_a_public_way_to_write_a_bundle():
    import export

    assert {"write_bundle", "write_onnx"} <= set(export.__all__)
    assert callable(export.write_bundle) and callable(export.write_onnx)


def test_show_describes_a_plugin():
    result = run_zoo("show", "Softplus")
    assert result.returncode == 0, result.stderr
    assert "softplus(beta: float = 1.0, threshold: float = 20.0)" in result.stdout
    assert "plugins.activations:Softplus" in result.stdout
    both = json.loads(run_zoo("show", "linear", "--json").stdout)
    assert {info["kind"] for info in both} == {"layers", "datasets"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("list", "gadgets"), ("unknown kind 'gadgets'",)),
        (("list", "activation"), ("unknown kind 'activation'", "did you mean 'activations'")),
        (("show", "gelo"), ("unknown plugin 'gelo'", "did you mean", "'gelu'")),
        (("show", "relu", "--kind", "layers"), ("unknown layer 'relu'",)),
        (("frobnicate",), ("No such command 'frobnicate'",)),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(args, fragments):
    assert_one_line_error(run_zoo(*args), *fragments)


def test_broken_plugin_is_listed_as_broken_not_fatal(third_party):
    third_party("zoo-broken", {"zoo.activations": {"broken": "zoo_broken_mod:Nope"}},
                {"zoo_broken_mod.py": "raise ImportError('deliberately broken')\n"}, version="0.3")
    assert run_zoo("list", "activations", "--json").returncode == 0  # nothing imported: nothing known broken
    listed = run_zoo("list", "activations", "--check", "--json")
    import zoo

    assert_one_line_error(listed, f"1 of {len(zoo.activations.names())} plugins are broken or in conflict: broken")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["broken"]["status"] == "broken" and "deliberately broken" in rows["broken"]["error"]
    assert "zoo-broken 0.3" in rows["broken"]["error"] and rows["relu"]["status"] == "ok"
    table = run_zoo("list", "--check")
    assert table.returncode == 1 and "[broken]" in table.stdout
    assert_one_line_error(run_zoo("show", "broken"), "broken = zoo_broken_mod:Nope", "deliberately broken")


def test_conflicting_plugins_are_listed_as_a_conflict(third_party):
    third_party("dist-a", {"zoo.layers": {"twin": "mod_a:Twin"}})
    third_party("dist-b", {"zoo.layers": {"twin": "mod_b:Twin"}})
    rows = {row["name"]: row for row in json.loads(run_zoo("list", "layers", "--json").stdout)}
    assert rows["twin"]["status"] == "conflict"
    assert "dist-a" in rows["twin"]["error"] and "dist-b" in rows["twin"]["error"]
    assert_one_line_error(run_zoo("list", "layers", "--check"), "broken or in conflict: twin")


def test_a_broken_command_plugin_does_not_break_the_others(third_party):
    third_party("zoo-badcmd", {"zoo.commands": {"badcmd": "no_such_module_zz:cmd"}})
    assert "badcmd" in run_zoo("--help").stdout
    assert_one_line_error(run_zoo("badcmd"), "badcmd = no_such_module_zz:cmd", "zoo-badcmd")
    assert run_zoo("list", "models").returncode == 0


def test_example_package_installs_with_pip_and_joins_the_registry(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT / "examples" / "zoo-example-plugin")],
        check=True, capture_output=True, text=True,
    )
    env = {"PYTHONPATH": str(target)}
    rows = {row["name"]: row for row in json.loads(run_zoo("list", "activations", "--json", env=env).stdout)}
    assert rows["squareplus"]["target"] == "zoo_example_plugin:Squareplus"
    assert rows["squareplus"]["distribution"] == "zoo-example-plugin 0.2.0"
    shown = run_zoo("show", "squareplus", env=env)
    assert "squareplus(b: float = 4.0)" in shown.stdout
    code = (
        "import torch, zoo\n"
        "net = zoo.create_model('mlp', activation={'name': 'squareplus', 'b': 1.0}, hidden=[4])\n"
        "print(net.act0(torch.tensor([0.0])).item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env}, check=True)
    assert float(out.stdout) == 0.5


@pytest.mark.parametrize("args", [["list"], ["--help"], ["list", "models", "--json"]])
def test_listing_and_help_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from zoo.cli import main\n"
        f"sys.argv = ['zoo', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxruntime', 'matplotlib', 'numpy'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "HEAVY []" in result.stderr, result.stderr


def test_list_models_shows_input_shapes_without_building_them():
    rows = {row["name"]: row for row in json.loads(run_zoo("list", "models", "--json").stdout)}
    assert rows["cnn"]["input_shape"] == [1, 32, 32] and rows["transformer"]["input_shape"] == [None, 10]
    assert rows["mlp"]["input_shape"] == [1] and {row["status"] for row in rows.values()} == {"unchecked"}
    table = run_zoo("list", "models").stdout
    assert re.search(r"^  transformer +\[\?, 10\] +A small transformer encoder", table, re.MULTILINE), table


def test_show_prints_a_models_meta():
    shown = run_zoo("show", "cnn1d").stdout
    assert "  task:         classification\n  input_shape:  [1, 40]\n  classes:      10\n  dataset:      signals" in shown
    (info,) = json.loads(run_zoo("show", "transformer", "--json").stdout)
    assert info["meta"] == {"task": "sequence_classification", "input_shape": [None, 10], "classes": 10,
                            "dataset": "sort"}
