"""Pictures: activation curves and derivatives, loss curves, and `zoo plot` (real matplotlib, Agg)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_zoo

import zoo
from zoo import plots
from zoo.cli import main
from zoo.errors import BadArgumentsError, UnknownNameError, ZooError
from zoo.models import parse_part


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_parse_spec_reads_json_values_and_plain_strings() -> None:
    assert parse_part("relu") == ("relu", {})
    assert parse_part("softplus:beta=2,threshold=10.5") == ("softplus", {"beta": 2, "threshold": 10.5})
    assert parse_part("gelu:approximate=tanh") == ("gelu", {"approximate": "tanh"})
    with pytest.raises(BadArgumentsError, match="name:key=value"):
        parse_part("softplus:beta")


def test_activation_specs_list_every_activation_and_the_variant_aliases() -> None:
    specs = plots.activation_specs()
    assert specs[: len(zoo.activations.names())] == zoo.activations.names()
    assert "gelu_tanh" in specs and "swish" not in specs  # swish is silu with no arguments: not a new function


def test_elementwise_curve_and_autograd_derivative() -> None:
    curve = plots.activation_curve("softplus:beta=2")
    x = torch.tensor(curve.x)
    assert torch.allclose(torch.tensor(curve.y), torch.nn.functional.softplus(x, beta=2), atol=1e-6)
    assert torch.allclose(torch.tensor(curve.dy), torch.sigmoid(2 * x), atol=1e-6)
    assert curve.note == "softplus(beta=2)"
    assert min(curve.x) == -5 and max(curve.x) == 5


def test_non_elementwise_activations_are_probed_and_say_how() -> None:
    softmax = plots.activation_curve("softmax")  # first output of softmax([x, 0]) is sigmoid(x)
    x = torch.tensor(softmax.x)
    assert "softmax([x, 0])[0]" in softmax.note
    assert torch.allclose(torch.tensor(softmax.y), torch.sigmoid(x), atol=1e-6)
    assert torch.allclose(torch.tensor(softmax.dy), torch.sigmoid(x) * (1 - torch.sigmoid(x)), atol=1e-6)
    glu = plots.activation_curve("glu")  # glu([x, x]) = x * sigmoid(x)
    assert "glu([x, x])" in glu.note
    assert torch.allclose(torch.tensor(glu.y), x * torch.sigmoid(x), atol=1e-6)


def test_alias_variant_names_the_function_it_is() -> None:
    assert plots.activation_curve("gelu_tanh").note == "gelu(approximate='tanh')"


def test_activation_grid_of_every_activation_is_a_sensible_png(tmp_path: Path) -> None:
    specs = plots.activation_specs()
    path = plots.plot_activations(specs, tmp_path / "activations.png")
    width, height = png_size(path)
    rows = -(-len(specs) // plots.COLUMNS)
    assert width >= 1200 and height >= 150 * rows, (width, height)
    assert [p.name for p in tmp_path.iterdir()] == ["activations.png"]  # no temp file left behind


def test_third_party_activation_is_plotted(third_party, tmp_path: Path) -> None:
    third_party("cubic-act", {"zoo.activations": {"cubic": "cubic_act:Cubic", "total": "cubic_act:Total"}},
                {"cubic_act.py": """
        from torch import nn

        class Cubic(nn.Module):
            def forward(self, x):
                return x ** 3

        class Total(nn.Module):
            def forward(self, x):  # not an activation: no curve can be drawn
                return x.sum()
    """})
    curve = plots.activation_curve("cubic")
    assert curve.dy[0] == pytest.approx(75.0)  # d/dx x^3 at -5
    png_size(plots.plot_activations(["cubic", "relu"], tmp_path / "a.png"))
    with pytest.raises(ZooError, match="activation 'total' cannot be plotted"):
        plots.plot_activations(["cubic", "total"], tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_bad_name_raises_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="relu"):
        plots.plot_activations(["relu", "reluu"], tmp_path / "a.png")
    with pytest.raises(BadArgumentsError):
        plots.plot_activations([], tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_training_curves_png(tmp_path: Path) -> None:
    panels = {"regression": {"linear (default)": [4.0, 1.2, 1.0]},
              "mlp": {f"act{i}": [1.0 / (e + i + 1) for e in range(10)] for i in range(30)}}
    width, height = png_size(plots.plot_training(panels, tmp_path / "training.png", notes={"mlp": "a caption"}))
    assert width >= 1200 and height >= 400
    with pytest.raises(BadArgumentsError):
        plots.plot_training({"empty": {}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_many_loss_curves_grey_the_typical_ones_and_name_each_outlier() -> None:
    curves = {f"act{i}": [1.0, 0.1, 0.010 + i / 10_000] for i in range(26)}
    curves["stuck"] = [40.0, 0.75, 0.75, 0.75]  # a net that stopped learning at epoch 2
    curves["slow"] = [1.0, 0.5, 0.05]
    styles = plots.curve_styles(curves)
    assert {label for label, style in styles.items() if style.highlighted} == {"stuck", "slow"}
    assert styles["stuck"].label == "stuck: 0.75, flat from epoch 2" and styles["slow"].label == "slow: 0.05"
    assert styles["stuck"].color != styles["slow"].color
    assert {style.color for style in styles.values() if not style.highlighted} == {plots.MUTED}


def test_no_two_highlighted_curves_look_alike() -> None:
    few = plots.curve_styles({f"c{i}": [1.0, 0.5] for i in range(plots.MANY_CURVES)})
    assert len({(s.color, s.linestyle) for s in few.values()}) == plots.MANY_CURVES
    many = {f"ok{i}": [1.0, 0.01] for i in range(20)} | {f"bad{i}": [1.0, 0.5 + i / 100] for i in range(15)}
    highlighted = [s for s in plots.curve_styles(many).values() if s.highlighted]
    assert len(highlighted) == 15 and len({(s.color, s.linestyle) for s in highlighted}) == 15
    assert plots.MUTED not in {s.color for s in highlighted}


def test_zoo_plot_writes_the_subset_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "subset.png"
    result = run_zoo("plot", "activations", "relu", "softplus:beta=2", "gelu_tanh", "-o", str(out))
    assert result.returncode == 0, result.stderr
    width, _ = png_size(out)
    assert width >= 600


def test_zoo_plot_bad_name_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bad.png"
    assert_one_line_error(run_zoo("plot", "activations", "relu", "nosuch", "-o", str(out)),
                          "unknown activation 'nosuch'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["softplus:beta"], "name:key=value"),
    (["softplus:gamma=2"], "gamma"),
    (["relu", "-o", "{tmp}/a.jpg"], "cannot write"),  # a JPEG name for a PNG file
])
def test_zoo_plot_bad_arguments_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           args: list[str], fragment: str) -> None:
    argv = ["plot", "activations", *(a.format(tmp=tmp_path) for a in args)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "-o", str(tmp_path / "bad.png")] if "-o" not in argv else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code != 0 and len(err) == 1 and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


def predictions(inputs: np.ndarray, truth: np.ndarray, classes: int) -> plots.Predictions:
    """A panel whose first sample is predicted wrong and the others right."""
    predicted = truth.copy()
    predicted[0] = (predicted[0] + 1) % classes
    confusion = np.zeros((classes, classes), int)
    np.add.at(confusion, (truth.reshape(-1), predicted.reshape(-1)), 1)
    return plots.Predictions(f"{inputs.ndim}-d inputs", inputs, truth, predicted, confusion.tolist(),
                             [f"class{k}" for k in range(classes)])


def test_predictions_of_images_signals_and_sequences_in_one_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    panels = [predictions(rng.random((8, 1, 12, 12)), rng.integers(0, 4, 8), 4),
              predictions(rng.standard_normal((8, 1, 40)), rng.integers(0, 10, 8), 10),
              predictions(rng.integers(0, 10, (8, 6)), rng.integers(0, 10, (8, 6)), 10)]
    path = plots.plot_predictions(panels, tmp_path / "predictions.png")
    width, height = png_size(path)
    assert width >= 1200 and height >= 3 * 200, (width, height)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.png"]
    (wrong, red), (right, green) = plots._verdict(panels[0], 0), plots._verdict(panels[0], 1)
    assert (red, green) == (plots.WRONG, plots.RIGHT) and "\n(is class" in wrong and "(is" not in right
    with pytest.raises(BadArgumentsError, match=r"cannot draw inputs of shape \(8,\)"):
        plots.plot_predictions([predictions(np.zeros(8), np.zeros(8, int), 2)], tmp_path / "bad.png")
    with pytest.raises(BadArgumentsError, match="no predictions"):
        plots.plot_predictions([], tmp_path / "none.png")
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.png"]
