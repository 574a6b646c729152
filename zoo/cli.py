"""The `zoo` command: thin click commands over the Python API.

Commands from other packages join through the `zoo.commands` entry point group, the same way
plugins do; torch is imported only by the commands that build something.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import click

import zoo
from zoo.errors import UnknownNameError, ZooError
from zoo.files import check_output
from zoo.models import listed_input_shape
from zoo.options import CHECKPOINT_SUFFIXES, emit_json, model_training_options, train_from_options
from zoo.text import plural

KINDS = tuple(zoo.registries)


class ZooGroup(click.Group):
    """A group that also offers the commands other packages declare under `zoo.commands`."""

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group="zoo.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._entry_points()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken command must not take the others down
            return _broken_command(name, ep, exc)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first sentence (click cuts it to the terminal width with "...")."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, command.get_short_help_str(limit=1000)) for name, command in commands
                if command is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _broken_command(name: str, ep: metadata.EntryPoint, exc: Exception) -> click.Command:
    dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else "<unknown>"
    message = f"command {name} = {ep.value} (from {dist}) failed to load: {type(exc).__name__}: {exc}"

    def fail() -> None:
        raise click.ClickException(message)

    return click.Command(name, callback=fail, help=f"(broken) {message}", short_help="(broken plugin command)")


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(zoo.__version__, "-V", "--version", prog_name="zoo",
                      message=f"%(prog)s, version %(version)s (distribution {zoo.DISTRIBUTION})")
def cli() -> None:
    """Small PyTorch models from named plugins: build, train, export to ONNX, prove parity."""


def _listing(kind: str, patterns: Sequence[str], check: bool) -> list[dict[str, Any]]:
    registry = zoo.registries[kind]
    rows = []
    for name, sources in registry.sources():
        aliases = registry.aliases_of(name)
        if patterns and not any(fnmatch.fnmatch(n.lower(), pattern.lower())
                                for n in (name, *aliases) for pattern in patterns):
            continue
        row: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "aliases": list(aliases),
            "alias_arguments": _alias_arguments(registry, name),
            "description": sources[0].description(),
            "target": sources[0].target,
            "distribution": f"{sources[0].distribution} {sources[0].version}".strip(),
            "status": registry.status(name),
        }
        if kind == "models":
            row["input_shape"] = listed_input_shape(sources[0].defaults())
        if len(sources) > 1:
            row["status"] = "conflict"
            row["error"] = "; ".join(s.describe() for s in sources)
        elif check:
            try:
                registry.get(name)
                row["status"] = "ok"
            except ZooError as exc:
                row["status"], row["error"] = "broken", str(exc)
        rows.append(row)
    return rows


def _alias_arguments(registry: zoo.Registry, name: str) -> dict[str, dict[str, Any]]:
    """The aliases of the registered `name` that imply keyword arguments, with them: {"gelu_tanh": {...}}."""
    table = registry.aliases()
    return {alias: dict(table[alias][1]) for alias in registry.aliases_of(name) if table[alias][1]}


def _arguments(kwargs: dict[str, Any]) -> str:
    """Keyword arguments as written in Python: approximate='tanh'."""
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def _kinds_and_patterns(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """`zoo list` arguments as (kinds to list, name patterns): KIND first, or patterns alone when the first has a wildcard."""
    if not arguments:
        return list(KINDS), []
    first, *rest = arguments
    if first.lower() in KINDS:
        return [first.lower()], rest
    if any(char in first for char in "*?["):
        return list(KINDS), list(arguments)
    raise UnknownNameError("kind", first, KINDS)


@cli.command("list")
@click.argument("arguments", nargs=-1, metavar="[KIND] [PATTERN]...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--check", is_flag=True,
              help="Import every plugin; exit status 1 when one fails to load or two claim one name.")
def list_command(arguments: tuple[str, ...], as_json: bool, check: bool) -> None:
    """List plugins with their aliases and a one-line description: every KIND, or one.

    \b
    KIND is activations, layers, convs, norms, pools, models, datasets or lowerings. Each PATTERN is a
    shell wildcard; the names (or aliases) that match any of them are kept, e.g.
    `zoo list activations 'soft*' 'relu*'`. Without KIND (the first PATTERN has a wildcard) they
    filter every kind: `zoo list '*linear*'`. An alias that implies arguments shows them: gelu
    (gelu_tanh: approximate='tanh'). Models show the shape of one input (the batch axis left out;
    ? is any length).
    Reads package metadata and plugin sources only (fast, imports no plugin) unless --check is
    given; until then a plugin's status is "unchecked".
    """
    kinds, patterns = _kinds_and_patterns(arguments)
    rows = [row for k in kinds for row in _listing(k, patterns, check)]
    if not rows:
        what = zoo.registries[kinds[0]].singular if len(kinds) == 1 else "plugin"
        raise ZooError(f"no {what} matches {' or '.join(map(repr, patterns))} (see `zoo list`)")
    if as_json:
        emit_json(rows)
    else:
        _print_listing(rows)
    failed = [row for row in rows if row["status"] in ("broken", "conflict")]
    if check and failed:
        raise ZooError(f"{len(failed)} of {len(rows)} plugins are broken or in conflict: "
                       f"{', '.join(row['name'] for row in failed)}")


def _print_listing(rows: list[dict[str, Any]]) -> None:
    for current in dict.fromkeys(row["kind"] for row in rows):
        group = [row for row in rows if row["kind"] == current]
        click.secho(f"{current} ({len(group)})", bold=True)
        names = [_named(row) for row in group]
        shapes = [_shape_text(row["input_shape"]) + "  " if "input_shape" in row else "" for row in group]
        width, shape_width = max(map(len, names)), max(map(len, shapes))
        for name, shape, row in zip(names, shapes, group):
            problem = row["status"] in ("broken", "conflict")
            status = click.style(f"  [{row['status']}] {row['error']}", fg="red") if problem else ""
            click.echo(f"  {name:<{width}}  {shape:<{shape_width}}{row['description'] or '-'}  "
                       f"[{row['target']}, {row['distribution']}]{status}")


def _named(row: dict[str, Any]) -> str:
    """A listed name with its aliases, each with the arguments it implies: gelu (gelu_tanh: approximate='tanh')."""
    implied = row["alias_arguments"]
    aliases = [f"{alias}: {_arguments(implied[alias])}" if alias in implied else alias for alias in row["aliases"]]
    return row["name"] + (f" ({', '.join(aliases)})" if aliases else "")


def _shape_text(shape: list[int | None] | None) -> str:
    """[1, 32, 32], and ? for an axis of any length; - when unknown."""
    return "-" if shape is None else "[" + ", ".join("?" if size is None else str(size) for size in shape) + "]"


@cli.command("show")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS, case_sensitive=False), help="Only look in this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(name: str, kind: str | None, as_json: bool) -> None:
    """Describe the plugin NAME: target, distribution, signature and documentation."""
    kinds = [kind.lower()] if kind else KINDS
    found = [zoo.registries[k].info(name) for k in kinds if name in zoo.registries[k]]
    if not found:
        known = [n for k in kinds for n in zoo.registries[k].names()]
        raise UnknownNameError(zoo.registries[kind].singular if kind else "plugin", name, known)
    built = {info.kind: _built(info) for info in found}
    lowered = {kind: _lowerings_used(module) for kind, module in built.items()}
    meta = {kind: getattr(module, "zoo_meta", None) for kind, module in built.items()}
    implied = {info.kind: _alias_arguments(zoo.registries[info.kind], info.name) for info in found}
    if as_json:
        emit_json([{**info.to_json(), "alias_arguments": implied[info.kind], "lowerings": lowered[info.kind],
                    "meta": meta[info.kind]} for info in found])
        return
    for info in found:
        click.secho(f"{info.name} ({info.kind})", bold=True)
        key = zoo.registries[info.kind].key
        meanings = {alias: _alias_meaning(info.name, alias, implied[info.kind]) for alias in info.aliases}
        asked = next((meaning for alias, meaning in meanings.items() if key(alias) == key(name)), None)
        if asked:
            click.echo(f"  alias:        {asked}")
        click.echo(f"  target:       {info.target}")
        click.echo(f"  distribution: {info.distribution} {info.version}".rstrip())
        click.echo(f"  signature:    {info.name}{info.signature}")
        if meanings:
            click.echo(f"  aliases:      {', '.join(meanings.values())}")
        for field, value in (meta[info.kind] or {}).items():
            shown = _shape_text(value) if field == "input_shape" else value
            click.echo(f"  {field + ':':<13} {'-' if shown is None else shown}")
        if lowered[info.kind] is not None:
            used = "; ".join(lowered[info.kind]) or "upstream's lowering (no zoo.onnx lowering applies)"
            click.echo(f"  exports with: {used}")
        click.echo(f"  {info.doc}")


def _alias_meaning(name: str, alias: str, implied: dict[str, dict[str, Any]]) -> str:
    """What an alias of `name` stands for: `gelu_tanh = gelu(approximate='tanh')`, or `swish = silu`."""
    return f"{alias} = {name}({_arguments(implied[alias])})" if alias in implied else f"{alias} = {name}"


def _built(info: zoo.PluginInfo) -> Any:
    """An activation or model plugin built with its defaults, to read what it exports with and its meta; else None."""
    if info.kind not in ("activations", "models"):
        return None
    try:
        return zoo.registries[info.kind].create(info.name)
    except ZooError:
        return None


def _lowerings_used(module: Any) -> list[str] | None:
    """The `zoo.onnx` lowerings a module plugin built with its defaults exports with (None: not built)."""
    if module is None:
        return None
    from zoo.op_lowerings import lowerings_used

    return [source.describe() for source in lowerings_used(module, zoo.lowerings)]


@cli.group("plot")
def plot_group() -> None:
    """Draw pictures (PNG files, no display needed)."""


@plot_group.command("activations")
@click.argument("names", nargs=-1, metavar="[NAME[:key=value,...]]...")
@click.option("-o", "--output", default="activations.png", show_default=True,
              help="PNG file to write (missing directories are created).")
def plot_activations_command(names: tuple[str, ...], output: str) -> None:
    """Plot activations and their derivatives on [-5, 5] (default: all of them, with alias variants).

    A NAME may carry keyword arguments, e.g. softplus:beta=2 or gelu:approximate=tanh.
    """
    check_output(output, suffixes=(".png",), what="a PNG")
    from zoo import plots  # matplotlib and torch load here, not for `zoo --help`

    path = plots.plot_activations(list(names) or plots.activation_specs(), output)
    click.echo(f"wrote {path}")


@cli.command("train")
@click.argument("model_name", metavar="MODEL")
@model_training_options
@click.option("-o", "--output", help="Write a checkpoint (one .pt file) here; missing directories are created.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a summary.")
@click.option("-q", "--quiet", is_flag=True, help="Draw no progress bar (none is drawn when stderr is not a terminal).")
def train_command(model_name: str, output: str | None, as_json: bool, quiet: bool, **options: Any) -> None:
    """Train MODEL on a synthetic dataset; print the final loss, metrics (held-out too) and small models' parameters.

    \b
    Examples:
      zoo train linear_regression --layer einsum_linear -o linreg.pt
      zoo train linear_regression --recipe notes      # the course notes' Adam, b ends far from 5
      zoo train mlp --activation softplus:beta=2 --hidden 32,32 --json
      torchrun --standalone --nproc-per-node 2 -m zoo train mlp   # data-parallel; rank 0 writes and prints

    Small models train with one torch thread, larger ones with one per physical core; set
    OMP_NUM_THREADS=N to choose.
    """
    if output:  # before training, and before torch loads (seconds): a bad path is refused at once
        check_output(output, suffixes=CHECKPOINT_SUFFIXES, what="a checkpoint")
    from zoo.distributed import is_main

    model, result = train_from_options(model_name, progress=False if quiet or as_json else None, **options)
    if not is_main():  # under torchrun, rank 0 alone writes the checkpoint and prints
        return
    if output:
        zoo.save_checkpoint(output, model, result)
    parameters = {key: value.tolist() for key, value in model.state_dict().items()}
    report = {
        "model": model.zoo_config,
        **result.to_json(),
        "parameters": parameters if sum(p.numel() for p in model.parameters()) <= 16 else None,
        "checkpoint": output,
    }
    if as_json:
        emit_json(report)
    else:
        _print_training(report)


def _print_training(report: dict[str, Any]) -> None:
    config = ", ".join(f"{key}={value}" for key, value in report["model"].items() if key != "name")
    ran, planned = len(report["history"]), report["recipe"]["epochs"]
    click.echo(
        f"{report['model']['name']} ({config}) on {report['dataset']['name']}, recipe {report['recipe']['name']}: "
        f"{plural(report['steps'], 'step')} in {report['seconds']:.2f} s on {report['device']}"
        + (f" x {report['world_size']} processes ({report['backend']})" if report["world_size"] > 1 else "")
        + (f" (stopped after {ran} of {planned} epochs: the loss stopped improving)" if ran < planned else "")
    )
    metrics = "  ".join(f"{key} {value:.6g}" for key, value in report["metrics"].items())
    click.echo(f"final loss {report['final_loss']:.6g}  ({metrics})")
    if report["heldout"]:
        metrics = "  ".join(f"{key} {value:.6g}" for key, value in report["heldout"].items())
        click.echo(f"held-out ({plural(report['dataset']['heldout_rows'], 'row')}): {metrics}")
    if report["parameters"]:
        click.echo("parameters: " + "  ".join(f"{key} {value}" for key, value in report["parameters"].items()))
    if report["checkpoint"]:
        click.echo(f"checkpoint written to {report['checkpoint']}")


def _quiet_collectives() -> None:
    """Under torchrun, show only c10d's fatal C++ log lines (TORCH_CPP_LOG_LEVEL, unless set): the stack
    traces it logs while retrying a rendezvous would bury the one-line error. Read when torch loads."""
    if os.environ.get("WORLD_SIZE", "1") != "1":
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `zoo` script: errors become one line on stderr and a non-zero exit."""
    _quiet_collectives()
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="zoo", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `zoo` (or `zoo plot`): its help, not an error
        click.echo(exc.ctx.get_help())
        code = 0
    except click.exceptions.Abort:
        click.echo("zoo: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"zoo: error: {exc.format_message()}{hint}", err=True)
        code = exc.exit_code
    except ZooError as exc:
        click.echo(f"zoo: error: {exc}", err=True)
        code = 1
    except KeyboardInterrupt:
        click.echo("zoo: interrupted", err=True)
        code = 130
    code = code if isinstance(code, int) else 0
    distributed = sys.modules.get("zoo.distributed")  # imported only by commands that train
    if distributed is not None and distributed.joined():
        distributed.leave(code)  # a torchrun rank: see zoo.distributed on why it skips finalization
    sys.exit(code)
