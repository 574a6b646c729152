"""Training on synthetic data: named recipes, exact shape checks, divergence caught at the first bad step.

Recipes (explicit arguments of `train` override any setting):

- ``default``: full-batch L-BFGS with a strong-Wolfe line search (lr 1; 10 steps of up to 20
  iterations each). The course notes' data has x in [0, 100), so least squares with a bias is badly
  conditioned (Hessian eigenvalues ~3334 and ~0.25): first-order methods crawl along the w-b
  valley: Adam with a linearly decaying learning rate, batch 100 and 2000 steps still has b off by
  1.5 at lr 0.3 and only gets within 0.05 of OLS at lr 1.0. L-BFGS builds a curvature model, so it lands on the OLS
  solution (within 1e-5) in two steps without rescaling the data, and the trained model needs no
  normalisation folded into it to export. It is also the usual solver for logistic regression
  (scikit-learn's default) and takes the small MLPs here to the noise floor. Full batch suits these
  datasets (at most a few thousand rows).
- ``notes``: the course notes' recipe, reproduced: Adam(lr=0.1, weight_decay=0.1), batches of 100
  in order (no shuffling), 5 epochs. On `linear` it ends with w ~ 9.96 but b ~ 8.7, far from 5.
- ``classify``: AdamW(lr=3e-3, weight_decay=0.01), shuffled batches of 64, 10 epochs, the learning
  rate warmed up over the first 5% of steps, then decayed to zero on a cosine (per step). For the
  image, signal and sequence sets: thousands of rows that one full batch would not fit or suit.

Without a recipe, `train` picks one by the dataset's task: ``classify`` for classification and
sequence_classification, ``default`` for the rest.

Loss by task, on the logits models output: regression -> MSELoss; binary_classification ->
BCEWithLogitsLoss; classification (targets: class indices (N,), logits (N, classes)) ->
CrossEntropyLoss; sequence_classification (targets (N, L), logits (N, L, classes)) -> cross-entropy
averaged over every position. Float targets must match the predictions' shape exactly, class-index
targets the predictions' shape less its last axis; nothing is broadcast. Metrics: mse; bce and
accuracy; cross_entropy and accuracy; for sequences also sequence_accuracy (every position right).
A dataset's held-out rows (`data.test`) are scored the same way, into `TrainResult.heldout`.

Before any step the data is checked: finite x and y, 0/1 targets for binary classification, and a
task the model is for (``model.zoo_meta["task"]``). The loss has one definition: the criterion over
the whole dataset, the model in eval mode, after an epoch. ``history[i]`` is that loss after epoch
i + 1 and ``final_loss`` is ``history[-1]``. A step is one optimiser step on one batch (for L-BFGS,
up to 20 iterations of its own); batch losses stay on the device during an epoch and are checked
once per epoch, naming the first non-finite step. The model trains in train mode (dropout on, batch
norm updating its statistics) and is evaluated in eval mode; after training it stays on the device
it was trained on, in eval mode, with a JSON summary in `model.zoo_training`; after a failed one
(any exception, Ctrl-C included) it is as it was before the call: weights, buffers, gradients,
modes and devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from zoo import DATASET_ATTRIBUTES, DATASET_CONTRACT, cpus, distributed
from zoo.errors import BadArgumentsError, DeviceError, DivergenceError, TrainingError, UnknownNameError
from zoo.models import seeded
from zoo.progress import ProgressBar, wanted
from zoo.text import plural

__all__ = [
    "CRITERIA", "METRICS", "OPTIMIZERS", "RECIPES", "SCHEDULES", "TASK_RECIPES", "Recipe", "SequenceCrossEntropy",
    "TrainResult", "resolve_device", "resolve_recipe", "train",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Named training settings; `batch_size=None` means the whole dataset in one batch, `schedule=None` a
    constant learning rate."""

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int | None
    shuffle: bool
    schedule: str | None = None


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("default", optimizer="lbfgs", lr=1.0, weight_decay=0.0, epochs=10, batch_size=None, shuffle=True),
        Recipe("notes", optimizer="adam", lr=0.1, weight_decay=0.1, epochs=5, batch_size=100, shuffle=False),
        Recipe("classify", optimizer="adamw", lr=3e-3, weight_decay=0.01, epochs=10, batch_size=64, shuffle=True,
               schedule="cosine"),
    )
}
# The recipe `train` uses when none is named, by the dataset's task; "default" for any other task.
TASK_RECIPES = {"classification": "classify", "sequence_classification": "classify"}


def _lbfgs(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if weight_decay:
        raise BadArgumentsError("optimizer 'lbfgs' has no weight decay: use weight_decay=0 or optimizer 'adamw'")
    return torch.optim.LBFGS(params, lr=lr, line_search_fn="strong_wolfe")


# name -> (builder(params, lr, weight_decay), the learning rate used when the recipe's optimizer is replaced)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], float]] = {
    "adam": (lambda params, lr, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay), 1e-3),
    "adamw": (lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay), 1e-3),
    "sgd": (
        lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
        1e-2,
    ),
    "lbfgs": (_lbfgs, 1.0),
}


class SequenceCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy over every position: logits (N, L, classes) against class indices (N, L)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input.flatten(0, -2), target.flatten())


CRITERIA: dict[str, Callable[[], nn.Module]] = {
    "regression": nn.MSELoss,
    "binary_classification": nn.BCEWithLogitsLoss,
    "classification": nn.CrossEntropyLoss,
    "sequence_classification": SequenceCrossEntropy,
}
# What each task's targets are: (dimensions, class indices or not); float targets are (N, out_features).
TARGETS = {"regression": (2, False), "binary_classification": (2, False), "classification": (1, True),
           "sequence_classification": (2, True)}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run did: the full-data loss after each epoch, the final one and metrics on the
    training rows, the same metrics on the dataset's held-out rows (empty when it has none), where and how long."""

    history: list[float]  # the full-data loss in eval mode after each epoch run
    final_loss: float  # history[-1]
    metrics: dict[str, float]
    device: str
    seconds: float
    steps: int
    recipe: dict[str, Any]
    dataset: dict[str, Any]
    threads: int = 1  # torch CPU threads per process
    world_size: int = 1  # processes training together (torchrun), each on its share of every batch
    backend: str | None = None  # their torch.distributed backend (gloo, nccl), None in one process
    heldout: dict[str, float] = dataclasses.field(default_factory=dict)  # metrics on data.test's rows

    def summary(self) -> dict[str, Any]:
        """JSON-able record without the history: what `model.zoo_training` and checkpoints keep."""
        record = dataclasses.asdict(self)
        del record["history"]
        return record

    def to_json(self) -> dict[str, Any]:
        """The whole result as a JSON-able dict."""
        return dataclasses.asdict(self)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU; asking for CUDA without a GPU is a DeviceError."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cpu":
        if resolved.index not in (None, 0):
            raise DeviceError(f"device {device!r} does not exist: torch has one CPU device, use cpu")
        return resolved
    if resolved.type != "cuda":
        raise DeviceError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA GPU: use device cpu or auto"
        )
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def train(
    model: nn.Module,
    data: Any,
    *,
    recipe: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Fit `model` to `data` (x, y, task) with a named recipe; explicit arguments override its settings.

    `recipe=None` picks the task's (TASK_RECIPES: classify for classification tasks, else default).
    When `data.test` holds held-out rows, the trained model is scored on them too (`result.heldout`).

    `seed` fixes the batch order and any randomness in the model (dropout); the same seed gives
    bit-identical parameters on CPU. `progress=None` draws a bar on stderr only when it is a
    terminal. Changing the optimizer without `lr` uses that optimizer's usual learning rate. The model
    ends on `device`, in eval mode, with `model.zoo_training` set. `threads=None` picks torch's CPU
    threads for the work: one for a small model and dataset (threads only contend there), else one per
    physical core this process may use (zoo.cpus), never more than torch's own choice; torch's
    choice when OMP_NUM_THREADS is set. Full-batch L-BFGS stops early once the loss
    stopped improving. Inside a torchrun process (WORLD_SIZE > 1) it trains with
    DistributedDataParallel, each rank on its share of every batch (see zoo.distributed). Raises
    BadArgumentsError for bad settings, DeviceError, TrainingError before any step when model and
    data do not fit (another task, other shapes) or the data is bad (NaN/inf, binary targets other
    than 0/1), DivergenceError on a NaN/inf loss, DistributedError when the ranks cannot work
    together. Whatever stops it, Ctrl-C included, the model is left as it was before the call.
    """
    criterion = _criterion(data)
    _check_task(model, data)
    _check_values(data)
    target = resolve_device(device)
    settings = resolve_recipe(
        recipe or TASK_RECIPES.get(data.task, "default"), rows=len(data.x), seed=seed, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
    )
    with _restored_on_failure(model), _group(target, rows=len(data.x)) as group:
        target = group.device if group else target
        x, y = data.x.to(target), data.y.to(target)
        model.to(target)
        _check_fit(model, x, y, classes=_classes(data))
        start = time.perf_counter()
        with seeded(seed, target), _threads(threads, model, len(x)) as used:
            loss = _batch_loss(model, criterion) if group is None else group.batch_loss(group.wrap(model), criterion)
            show = wanted(progress) and (group is None or group.rank == 0)
            with group.guard("training") if group else contextlib.nullcontext():
                history, metrics = _fit(model, x, y, loss, settings, show,
                                        evaluate=lambda: _evaluate(model, x, y, criterion, data.task))
            heldout = _heldout(model, data, target, criterion)
        seconds = time.perf_counter() - start
    result = TrainResult(
        history=history,
        final_loss=history[-1],
        metrics=metrics,
        device=str(target),
        seconds=seconds,
        steps=len(history) * math.ceil(len(x) / settings["batch_size"]),
        recipe=settings,
        dataset={"name": data.name, "task": data.task, "rows": len(x), "heldout_rows": _heldout_rows(data),
                 "params": dict(data.params)},
        threads=used,
        world_size=group.world_size if group else 1,
        backend=group.backend if group else None,
        heldout=heldout,
    )
    model.zoo_training = result.summary()
    return result


# Below this many rows x parameters a forward pass is too small for more threads to pay (measured on
# 2 cores: one thread wins at 1M, two win 1.4x at the default mlp's 17M).
SMALL_WORK = 2**22


@contextlib.contextmanager
def _group(device: torch.device, *, rows: int) -> Iterator[distributed.Group | None]:
    """The process group when launched by torchrun with several ranks, else None."""
    if not distributed.launched():
        yield None
        return
    with distributed.join(device) as group:
        group.check_rows(rows)
        yield group


def default_threads(model: nn.Module, rows: int) -> int:
    """One torch thread for small work, else one per usable physical core (at most torch's default)."""
    if rows * sum(p.numel() for p in model.parameters()) < SMALL_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), cpus.usable_cores()))


@contextlib.contextmanager
def _threads(threads: int | None, model: nn.Module, rows: int) -> Iterator[int]:
    """Run with `threads` torch threads (None: picked for the work, see `train`); restore after."""
    before = torch.get_num_threads()
    if threads is None:
        threads = before if "OMP_NUM_THREADS" in os.environ else default_threads(model, rows)
    _check_int("threads", threads, minimum=1)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def resolve_recipe(name: str, *, rows: int, seed: int, **overrides: Any) -> dict[str, Any]:
    """The settings a run will use: the named recipe, then every override that is not None."""
    if name not in RECIPES:
        raise UnknownNameError("recipe", name, RECIPES)
    settings = dataclasses.asdict(RECIPES[name])
    optimizer = overrides.get("optimizer")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", optimizer, OPTIMIZERS)
    if optimizer not in (None, settings["optimizer"]) and overrides.get("lr") is None:
        settings["lr"] = OPTIMIZERS[optimizer][1]  # the recipe's lr was tuned for its own optimizer
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if settings["batch_size"] is None:
        settings["batch_size"] = rows
    _check_int("epochs", settings["epochs"], minimum=1)
    _check_int("batch_size", settings["batch_size"], minimum=1)
    _check_int("seed", seed, minimum=0)
    _check_number("lr", settings["lr"], positive=True)
    _check_number("weight_decay", settings["weight_decay"], positive=False)
    settings["batch_size"] = min(settings["batch_size"], rows)
    settings["seed"] = seed
    return settings


def _check_int(label: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadArgumentsError(f"{label} must be an integer >= {minimum}, got {value!r}")


def _check_number(label: str, value: Any, *, positive: bool) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (positive and value == 0):
        rule = "positive" if positive else "non-negative"
        raise BadArgumentsError(f"{label} must be a {rule} finite number, got {value!r}")


def _criterion(data: Any) -> nn.Module:
    missing = [attr for attr in DATASET_ATTRIBUTES if not hasattr(data, attr)]
    if missing:
        raise BadArgumentsError(f"data must be a zoo dataset ({DATASET_CONTRACT}); it lacks {', '.join(missing)}")
    if data.task not in CRITERIA:
        raise TrainingError(f"dataset {data.name!r} has task {data.task!r}; zoo trains {', '.join(CRITERIA)}")
    _check_targets(data, data.x, data.y, "")
    test = getattr(data, "test", None)
    if test is not None:
        _check_targets(data, test.x, test.y, "held-out ")
        if test.x.shape[1:] != data.x.shape[1:] or test.y.shape[1:] != data.y.shape[1:]:
            raise TrainingError(
                f"dataset {data.name!r}: held-out rows x {tuple(test.x.shape)}, y {tuple(test.y.shape)} are not "
                f"shaped like the training rows x {tuple(data.x.shape)}, y {tuple(data.y.shape)}"
            )
    return CRITERIA[data.task]()


def _check_task(model: nn.Module, data: Any) -> None:
    """A model built for one task (``zoo_meta["task"]``) is not trained on another's data."""
    meta = getattr(model, "zoo_meta", None) or {}
    task = meta.get("task")
    if task is None or task == data.task:
        return
    name = getattr(model, "zoo_config", {}).get("name", type(model).__name__)
    such_as = f", such as {meta['dataset']!r}" if meta.get("dataset") else ""
    raise TrainingError(
        f"model {name!r} is for {task} but dataset {data.name!r} is {data.task}: "
        f"train it on a {task} dataset{such_as}"
    )


# Values the targets of a task may take, beyond being finite: (test, what the others are called).
TARGET_VALUES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "binary_classification": (lambda y: (y == 0) | (y == 1), "neither 0 nor 1 (binary_classification targets)"),
}


def _check_values(data: Any) -> None:
    """NaN/inf in the data, or targets its task cannot take, are named before any step (not as a divergence)."""
    for label, tensor in (("x", data.x), ("y", data.y)):
        _refuse_values(data.name, label, tensor, ~torch.isfinite(tensor), "NaN or infinite")
    if data.task in TARGET_VALUES:
        allowed, others = TARGET_VALUES[data.task]
        _refuse_values(data.name, "y", data.y, ~allowed(data.y), others)


def _refuse_values(name: str, label: str, tensor: torch.Tensor, bad: torch.Tensor, what: str) -> None:
    """TrainingError naming how many values of `tensor` are `bad`, and the first row holding one."""
    count = int(bad.sum())
    if count:
        row = int(torch.nonzero(bad.reshape(len(bad), -1).any(dim=1))[0, 0])
        first = tensor[row].flatten()[bad[row].flatten()][0].item()
        raise TrainingError(
            f"dataset {name!r} has {plural(count, 'value')} in {label} that {'is' if count == 1 else 'are'} {what}, "
            f"the first in row {row} ({first}): fix the data before training"
        )


@contextlib.contextmanager
def _restored_on_failure(model: nn.Module) -> Iterator[None]:
    """On any exception (KeyboardInterrupt too), put back the model's weights, buffers, gradients, modes and devices."""
    params = [(p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    buffers = [(module, name, buffer.clone()) for module in model.modules()
               for name, buffer in module.named_buffers(recurse=False)]
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for param, value, grad in params:
                param.grad = None  # before .data: a gradient must stay on its parameter's device
                param.data = value  # as nn.Module.to does: the same Parameter, back on its own device
                param.grad = grad
            for module, name, value in buffers:
                setattr(module, name, value)
        for module, training in modes:
            module.training = training
        raise


def _check_targets(data: Any, x: torch.Tensor, y: torch.Tensor, which: str) -> None:
    """Inputs (N, ...) and targets as the task has them: (N, out) floats, (N,) or (N, L) class indices >= 0.
    `which` is "" for the training rows (N > 0) or "held-out " (any N)."""
    dims, indices = TARGETS[data.task]
    shape = {(2, False): "(N, out) floats", (1, True): "(N,) int64 class indices",
             (2, True): "(N, L) int64 class indices"}[dims, indices]
    integral = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    rows = len(x) == len(y) and (len(x) > 0 or which != "")
    fits = rows and x.dim() >= 2 and y.dim() == dims and integral == indices
    negative = fits and indices and len(y) > 0 and int(y.min()) < 0
    if not fits or negative:
        raise TrainingError(
            f"dataset {data.name!r} (task {data.task}) must have {which}x (N, ...) and {which}y {shape}"
            f"{'' if which else ' with N > 0'}, got x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)} {y.dtype}"
            + (" holding negative classes" if negative else "")
        )


def _classes(data: Any) -> int | None:
    """How many logits the model must give for class-index targets: the highest class seen plus one."""
    if not TARGETS[data.task][1]:
        return None
    test = getattr(data, "test", None)
    ys = [data.y] if test is None or len(test.y) == 0 else [data.y, test.y]
    return max(int(y.max()) for y in ys) + 1


def _heldout_rows(data: Any) -> int:
    test = getattr(data, "test", None)
    return 0 if test is None else len(test.x)


def _same_shape(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Float targets take predictions of their exact shape; class indices take logits with one more axis."""
    if target.is_floating_point():
        if prediction.shape != target.shape:
            raise TrainingError(
                f"the model predicts shape {tuple(prediction.shape)} but the targets have shape "
                f"{tuple(target.shape)}; they must match exactly (zoo never broadcasts a loss): fix the model's "
                "output size or shape"
            )
    elif prediction.dim() != target.dim() + 1 or prediction.shape[:-1] != target.shape:
        raise TrainingError(
            f"the model predicts shape {tuple(prediction.shape)} but class-index targets of shape "
            f"{tuple(target.shape)} take logits of shape {(*target.shape, 'classes')}: fix the model's output shape"
        )
    return prediction


def _check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, classes: int | None = None) -> None:
    """Run two rows through the model first, so a misfit is one clear error before any training."""
    was_training = model.training
    try:
        with torch.no_grad():
            prediction = model.eval()(x[:2])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TrainingError(
            f"the model cannot take the dataset's inputs ({tuple(x.shape[1:])} features, {x.dtype}): {exc}"
        ) from exc
    finally:
        model.train(was_training)
    _same_shape(prediction, y[:2])
    if classes is not None and prediction.shape[-1] < classes:
        raise TrainingError(
            f"the model gives {prediction.shape[-1]} logits per prediction but the targets hold {classes} classes "
            f"(0 to {classes - 1}): build it with {classes} outputs"
        )


BatchLoss = Callable[[torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def _batch_loss(model: nn.Module, criterion: nn.Module) -> BatchLoss:
    """One process: the batch's loss is both what is back-propagated and what the optimiser sees."""

    def loss(xb: torch.Tensor, yb: torch.Tensor, same_shape: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        value = criterion(same_shape(model(xb), yb), yb)
        return value, value

    return loss


def _fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: BatchLoss, settings: dict[str, Any], show: bool,
    evaluate: Callable[[], tuple[float, dict[str, float]]],
) -> tuple[list[float], dict[str, float]]:
    """Train epoch by epoch; returns the full-data loss after each epoch and the last epoch's metrics."""
    build, _ = OPTIMIZERS[settings["optimizer"]]
    optimizer = build(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    rows, batch, epochs = len(x), settings["batch_size"], settings["epochs"]
    per_epoch = math.ceil(rows / batch)
    schedule = _schedule(optimizer, settings["schedule"], steps=epochs * per_epoch)
    order = torch.Generator().manual_seed(settings["seed"])
    bar = ProgressBar(epochs * per_epoch, epochs) if show else None
    history: list[float] = []
    try:
        for epoch in range(epochs):
            model.train()
            xs, ys = x, y
            if settings["shuffle"] and batch < rows:
                permutation = torch.randperm(rows, generator=order).to(x.device)
                xs, ys = x[permutation], y[permutation]
            losses: list[torch.Tensor] = []
            for begin in range(0, rows, batch):
                losses.append(_step(optimizer, loss, xs[begin : begin + batch], ys[begin : begin + batch]))
                if schedule is not None:
                    schedule.step()
                if bar is not None:
                    bar.update(epoch * per_epoch + len(losses), epoch + 1, losses[-1].item)
            _check_finite(losses, first_step=epoch * per_epoch + 1, lr=settings["lr"])
            value, metrics = evaluate()
            if not math.isfinite(value):
                raise _divergence(value, (epoch + 1) * per_epoch, settings["lr"], after=True)
            history.append(value)
            if settings["optimizer"] == "lbfgs" and per_epoch == 1 and _stalled(history):
                break
    finally:
        if bar is not None:
            bar.close()
    return history, metrics


SCHEDULES = ("cosine",)  # learning-rate schedules a recipe may name; None keeps the rate constant


def _schedule(optimizer: torch.optim.Optimizer, name: str | None, *, steps: int) -> Any:
    """A per-step schedule: `cosine` warms up linearly over the first 5% of steps, then decays towards zero."""
    if name is None:
        return None
    if name not in SCHEDULES:
        raise UnknownNameError("schedule", name, SCHEDULES)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step + 1 - warmup) / (steps + 1 - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _stalled(history: list[float]) -> bool:
    """The last full-batch step improved the loss by less than float32 resolution: more steps cannot help."""
    return len(history) >= 2 and history[-2] - history[-1] <= 1e-7 * abs(history[-2])


def _step(optimizer: torch.optim.Optimizer, loss: BatchLoss, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """One optimiser step on one batch; returns the batch loss before the step, still on the device."""

    def closure() -> torch.Tensor:  # every torch optimiser accepts one; L-BFGS needs it
        optimizer.zero_grad()
        backward, value = loss(xb, yb, _same_shape)
        backward.backward()
        return value

    return optimizer.step(closure).detach()


def _check_finite(losses: list[torch.Tensor], *, first_step: int, lr: float) -> None:
    """The batch losses of an epoch, read with one host sync; a NaN/inf names the first bad step."""
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if bool(finite.all()):
        return
    bad = int(torch.nonzero(~finite)[0, 0])
    raise _divergence(stacked[bad].item(), first_step + bad, lr, after=False)


def _divergence(value: float, step: int, lr: float, *, after: bool) -> DivergenceError:
    where = f"after step {step}" if after else f"at step {step}"
    return DivergenceError(
        f"training diverged: the loss became {value} {where}; the model was left as it was before training; "
        f"lower the learning rate (it was {lr:g}, try {lr / 10:g})",
        step=step,
    )


# Input elements per forward pass when evaluating: a large image set is scored in slices, not in one
# pass that would hold every activation at once; the small feature sets still take one pass.
EVAL_ELEMENTS = 2**20


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module, task: str
) -> tuple[float, dict[str, float]]:
    """Loss and the task's metrics (METRICS) over all of x, y, in eval mode (dropout off, batch norm frozen)."""
    model.eval()
    rows = max(1, EVAL_ELEMENTS // max(1, x[0].numel()))
    with torch.no_grad():
        prediction = model(x) if len(x) <= rows else torch.cat([model(x[i : i + rows]) for i in range(0, len(x), rows)])
        loss = criterion(_same_shape(prediction, y), y).item()
        return loss, METRICS[task](prediction, y, loss)


def _heldout(model: nn.Module, data: Any, device: torch.device, criterion: nn.Module) -> dict[str, float]:
    """The task's metrics on the dataset's held-out rows (`data.test`); empty when it has none."""
    if not _heldout_rows(data):
        return {}
    return _evaluate(model, data.test.x.to(device), data.test.y.to(device), criterion, data.task)[1]


def _fraction(hits: torch.Tensor) -> float:
    """The share of True entries, counted exactly."""
    return int(hits.sum()) / hits.numel()


def _binary_metrics(logits: torch.Tensor, y: torch.Tensor, loss: float) -> dict[str, float]:
    return {"bce": loss, "accuracy": ((logits > 0) == (y > 0.5)).float().mean().item()}


def _class_metrics(logits: torch.Tensor, y: torch.Tensor, loss: float) -> dict[str, float]:
    """Accuracy of the highest logit; for sequences per position, and of whole sequences."""
    right = logits.argmax(dim=-1) == y
    metrics = {"cross_entropy": loss, "accuracy": _fraction(right)}
    if y.dim() == 2:
        metrics["sequence_accuracy"] = _fraction(right.all(dim=1))
    return metrics


# task -> metrics(prediction, target, loss): what the summary, the checkpoint and the CLI report.
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], dict[str, float]]] = {
    "regression": lambda prediction, y, loss: {"mse": loss},
    "binary_classification": _binary_metrics,
    "classification": _class_metrics,
    "sequence_classification": _class_metrics,
}
