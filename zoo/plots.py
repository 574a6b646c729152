"""Pictures of activations (curve and autograd derivative), training loss curves and classifiers' predictions, as PNG files.

matplotlib runs on the Agg backend: no display is needed and none is opened.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # before pyplot: never open a window, work on headless machines

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

import zoo
from zoo.errors import BadArgumentsError, ZooError
from zoo.files import write_atomic
from zoo.models import parse_part, seeded

__all__ = ["ActivationCurve", "CurveStyle", "Predictions", "activation_curve", "activation_specs", "curve_styles",
           "plot_activations", "plot_predictions", "plot_training"]

COLUMNS = 6
MANY_CURVES = 10  # past this many curves in a panel, only the outliers get a colour of their own
OUTLIER_RATIO = 1.5  # an outlier ends above this multiple of the panel's median final loss
MUTED = "0.75"  # the grey of the typical curves


@dataclasses.dataclass(frozen=True)
class ActivationCurve:
    """One activation sampled on a grid: f(x), its autograd derivative, and what was plotted."""

    label: str
    x: list[float]
    y: list[float]
    dy: list[float]
    note: str  # the function an alias/variant resolves to, and how a non-elementwise one was probed


def activation_specs() -> list[str]:
    """Every registered activation, then each alias that changes the function (e.g. gelu_tanh)."""
    variants = [alias for alias, (_, kwargs) in zoo.activations.aliases().items() if kwargs]
    return [*zoo.activations.names(), *variants]


def activation_curve(spec: str, *, x_range: tuple[float, float] = (-5.0, 5.0), points: int = 401,
                     seed: int = 0) -> ActivationCurve:
    """Build the activation `spec` (a name, alias or `name:key=value` variant) and sample f and f' on x_range."""
    name, kwargs = parse_part(spec)
    with seeded(seed):
        act = zoo.activations.create(name, **kwargs).eval()  # eval: RReLU & co. deterministic
    canonical, defaults = zoo.activations.resolve(name)
    arguments = ", ".join(f"{k}={v!r}" for k, v in {**defaults, **kwargs}.items())
    x = torch.linspace(*x_range, points, dtype=torch.float32)
    try:
        y, dy, probe = _sample(act, x, canonical)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ZooError(f"activation {spec!r} cannot be plotted: {type(exc).__name__}: {exc}") from exc
    note = "\n".join(filter(None, [f"{canonical}({arguments})" if arguments else "", probe]))
    return ActivationCurve(spec, x.tolist(), y.tolist(), dy.tolist(), note)


def _sample(act: torch.nn.Module, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """f(x) and df/dx through autograd; rows of pairs for activations that are not elementwise."""
    if _is_elementwise(act, x):
        rows, probe = (lambda t: t.unsqueeze(1)), ""
    elif act(torch.stack([x, x], 1)).shape == (len(x), 1):
        # GLU-like: halves the features, so each x goes in as the pair (x, x).
        rows, probe = (lambda t: torch.stack([t, t], 1)), f"on pairs: {name}([x, x])"
    else:
        # Softmax-like: normalises a row, so plot the first output for the row (x, 0).
        rows, probe = (lambda t: torch.stack([t, torch.zeros_like(t)], 1)), f"on rows: {name}([x, 0])[0]"
    xs = x.clone().requires_grad_(True)
    y = act(rows(xs))[:, 0]
    (dy,) = torch.autograd.grad(y.sum(), xs)
    return y.detach(), dy, probe


def _is_elementwise(act: torch.nn.Module, x: torch.Tensor) -> bool:
    """True when f applied to a column and to a row gives the same numbers (no mixing across a row)."""
    try:
        column, row = act(x.unsqueeze(1)), act(x.unsqueeze(0))
    except RuntimeError:
        return False
    if column.shape != (len(x), 1) or row.shape != (1, len(x)):
        return False
    return bool(torch.allclose(column.flatten(), row.flatten(), equal_nan=True))


def plot_activations(specs: Sequence[str], path: str | os.PathLike[str], *,
                     x_range: tuple[float, float] = (-5.0, 5.0), seed: int = 0) -> pathlib.Path:
    """Draw a grid of f(x) and f'(x) for each activation spec into the PNG `path`; nothing is written on error."""
    if not specs:
        raise BadArgumentsError("name at least one activation to plot (see `zoo list activations`)")
    curves = [activation_curve(spec, x_range=x_range, seed=seed) for spec in specs]
    columns = min(COLUMNS, len(curves))
    rows = math.ceil(len(curves) / columns)
    width, height = max(2.9 * columns, 6.0), 2.3 * rows + 0.9
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    # Fixed margins (inches) fit two-line titles and small ticks; a layout engine would take seconds to find them.
    fig.subplots_adjust(left=0.35 / width, right=1 - 0.1 / width, top=1 - 0.85 / height, bottom=0.6 / height,
                        hspace=0.6, wspace=0.25)
    for ax, curve in zip(axes.flat, curves):
        ax.axhline(0, color="0.8", lw=0.6)
        ax.axvline(0, color="0.8", lw=0.6)
        ax.plot(curve.x, curve.y, color="tab:blue", lw=1.6, label="f(x)")
        ax.plot(curve.x, curve.dy, color="tab:orange", lw=1.2, ls="--", label="f'(x) (autograd)")
        ax.set_title(f"{curve.label}\n{curve.note}".strip(), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"Activations: f(x) and its derivative on [{x_range[0]:g}, {x_range[1]:g}]", fontsize=12)
    return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class CurveStyle:
    """How one loss curve is drawn: its colour, line style, legend label, and whether it stands out."""

    color: Any
    linestyle: str
    label: str
    highlighted: bool


def curve_styles(curves: Mapping[str, Sequence[float]]) -> dict[str, CurveStyle]:
    """A style per curve: a colour of its own for up to MANY_CURVES curves; past that, grey for the typical ones.

    With many curves, one ending above OUTLIER_RATIO x the median final loss is an outlier: it keeps
    a colour (and a line style once the colours run out), and its label gives the final loss and,
    when it stopped moving, the epoch it went flat from. No two highlighted curves look alike.
    """
    finals = {label: history[-1] for label, history in curves.items()}
    if len(curves) <= MANY_CURVES:
        return {label: _highlight(i, label) for i, label in enumerate(curves)}
    median = statistics.median(finals.values())
    styles, outliers = {}, 0
    for label, history in curves.items():
        if finals[label] > OUTLIER_RATIO * median:
            flat = _flat_from(history)
            text = f"{label}: {finals[label]:.3g}" + (f", flat from epoch {flat}" if flat else "")
            styles[label] = _highlight(outliers, text)
            outliers += 1
        else:
            styles[label] = CurveStyle(MUTED, "-", label, highlighted=False)
    return styles


def _highlight(index: int, label: str) -> CurveStyle:
    """The index-th distinct look: tab10's colours, then the same colours dashed, dotted, dash-dotted."""
    colors = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    return CurveStyle(colors(index % colors.N), styles[(index // colors.N) % len(styles)], label, highlighted=True)


def _flat_from(history: Sequence[float]) -> int | None:
    """The epoch (1-based) from which the loss stayed within 1% of its final value, when that is 2 epochs or more."""
    final = history[-1]
    start = len(history)
    while start > 0 and abs(history[start - 1] - final) <= 0.01 * abs(final):
        start -= 1
    return start + 1 if start + 2 <= len(history) else None


def plot_training(panels: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike[str], *,
                  notes: Mapping[str, str] | None = None) -> pathlib.Path:
    """Draw loss-per-epoch curves, one panel per title in `panels` ({title: {label: history}}), into a PNG.

    Each curve is styled by `curve_styles`: a panel of many curves greys the typical ones and names the
    outliers. `notes` ({title: text}) puts a caption under a panel.

    A history is `zoo.train`'s: the loss over all rows, model in eval mode, after each epoch.
    """
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        raise BadArgumentsError("no loss history to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 5.6), squeeze=False, layout="constrained")
    for ax, (title, curves) in zip(axes[0], panels.items()):
        styles = curve_styles(curves)
        # The grey curves first, so that the coloured ones are drawn over them.
        for label, history in sorted(curves.items(), key=lambda item: styles[item[0]].highlighted):
            style = styles[label]
            ax.plot(range(1, len(history) + 1), history, label=style.label if style.highlighted else None,
                    color=style.color, ls=style.linestyle, lw=1.6 if style.highlighted else 0.9)
        muted = [label for label, style in styles.items() if not style.highlighted]
        if muted:
            median = statistics.median(history[-1] for history in curves.values())
            ax.plot([], [], color=MUTED, lw=0.9, label=f"the other {len(muted)}: final loss at most "
                                                       f"{OUTLIER_RATIO:g}x the median {median:.3g}")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss on all rows after the epoch (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper right")
        if notes and notes.get(title):
            ax.text(0, -0.13, textwrap.fill(notes[title], 120), transform=ax.transAxes, va="top", fontsize=8)
    fig.suptitle("Training loss per epoch", fontsize=12)
    return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What one classifier predicted for a few held-out inputs, and its confusion matrix over all of them."""

    title: str
    inputs: Any  # (K, C, H, W) images, (K, C, L) signals or (K, L) token ids: an array
    truth: Any  # (K,) classes, or (K, L) for sequences
    predicted: Any  # the same shape as truth
    confusion: Sequence[Sequence[int]]  # counts; rows: the true class, columns: the predicted one
    labels: Sequence[str]  # the name of each class


RIGHT, WRONG = "tab:green", "tab:red"


def plot_predictions(panels: Sequence[Predictions], path: str | os.PathLike[str]) -> pathlib.Path:
    """One line per classifier into the PNG `path`: its sample inputs titled with the predicted label (red when
    wrong, with the true one), and its confusion matrix. Images, signals and token sequences are drawn each in
    one axes, so a line costs two axes however many samples it shows."""
    if not panels:
        raise BadArgumentsError("no predictions to plot")
    width, height = 13.0, 2.4 * len(panels) + 0.9
    fig, axes = plt.subplots(len(panels), 2, figsize=(width, height), squeeze=False,
                             gridspec_kw={"width_ratios": [4, 1]})
    # Fixed margins (inches), as in plot_activations: a layout engine would take seconds to find them.
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.75 / height, bottom=0.5 / height, hspace=0.8, wspace=0.12)
    for (samples, confusion), panel in zip(axes, panels):
        draw = {4: _draw_images, 3: _draw_signals, 2: _draw_tokens}.get(np.ndim(panel.inputs))
        if draw is None:
            raise BadArgumentsError(f"{panel.title}: cannot draw inputs of shape {np.shape(panel.inputs)}")
        draw(samples, panel)
        samples.set_title(panel.title, fontsize=10, loc="left")
        _draw_confusion(confusion, panel)
    fig.suptitle("Held-out samples with their predicted labels (red: wrong, the true label after 'is'), and "
                 "confusion matrices", fontsize=11)
    return _save(fig, path)


def _verdict(panel: Predictions, i: int) -> tuple[str, str]:
    """The label text of sample i, and its colour: the prediction, plus the truth when they differ."""
    truth, predicted = np.asarray(panel.truth)[i], np.asarray(panel.predicted)[i]
    if np.ndim(truth):
        return " ".join(panel.labels[k] for k in predicted), RIGHT if np.array_equal(truth, predicted) else WRONG
    text = panel.labels[predicted]
    return (text, RIGHT) if truth == predicted else (f"{text}\n(is {panel.labels[truth]})", WRONG)


def _draw_images(ax: Any, panel: Predictions) -> None:
    """The images side by side in one picture (first channel), each with its label below it."""
    images = np.asarray(panel.inputs, dtype=float)[:, 0]
    count, rows, columns = images.shape
    gap = max(2, columns // 8)
    mosaic = np.full((rows, count * (columns + gap) - gap), np.nan)
    for i, image in enumerate(images):
        mosaic[:, i * (columns + gap) : i * (columns + gap) + columns] = image
    ax.imshow(mosaic, cmap="gray", interpolation="nearest")
    for i in range(count):
        text, color = _verdict(panel, i)
        ax.text(i * (columns + gap) + columns / 2, rows, text, color=color, ha="center", va="top", fontsize=8)
    ax.set_axis_off()


def _draw_signals(ax: Any, panel: Predictions) -> None:
    """The signals one after the other along x (first channel), each with its label above it."""
    signals = np.asarray(panel.inputs, dtype=float)[:, 0]
    length = signals.shape[1]
    gap, top = max(2, length // 8), float(np.nanmax(signals))
    for i, signal in enumerate(signals):
        start = i * (length + gap)
        ax.plot(np.arange(start, start + length), signal, color="tab:blue", lw=1)
        text, color = _verdict(panel, i)
        ax.text(start + length / 2, top, text, color=color, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(top=top + 0.35 * (top - float(np.nanmin(signals))))
    ax.set_axis_off()


def _draw_tokens(ax: Any, panel: Predictions) -> None:
    """One line per sequence: its tokens, then the predicted ones."""
    tokens = np.asarray(panel.inputs)
    for i, sequence in enumerate(tokens):
        text, color = _verdict(panel, i)
        ax.text(0, 1 - (i + 0.5) / len(tokens), f"{' '.join(panel.labels[k] for k in sequence)}   ->   {text}",
                color=color, family="monospace", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_axis_off()


def _draw_confusion(ax: Any, panel: Predictions) -> None:
    """Counts of (true, predicted) classes, the count written in every cell that has one."""
    counts = np.asarray(panel.confusion)
    ax.imshow(counts, cmap="Blues", interpolation="nearest")
    ticks = range(len(counts))
    names = [label[:6] for label in panel.labels]
    ax.set_xticks(ticks, names, fontsize=6, rotation=90 if len(counts) > 4 else 0)
    ax.set_yticks(ticks, names, fontsize=6)
    ax.set_xlabel("predicted", fontsize=7)
    ax.set_ylabel("true", fontsize=7)
    dark = counts.max() / 2
    for (true, predicted), count in np.ndenumerate(counts):
        if count:
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=5 if len(counts) > 4 else 7,
                    color="white" if count > dark else "black")


def _save(fig: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    """Render to memory, then write the PNG atomically (temp file + os.replace)."""
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise ZooError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
