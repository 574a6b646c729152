"""The `zoo` command: thin click commands over the Python API.

Commands from other packages join through the `zoo.commands` entry point group, the same way
plugins do; torch is imported only by the commands that build something.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any, Sequence

import click

import zoo
from zoo.errors import UnknownNameError, ZooError

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
        except Exception as exc:  # a broken command must not take the others down
            return _broken_command(name, ep, exc)


def _broken_command(name: str, ep: metadata.EntryPoint, exc: Exception) -> click.Command:
    dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else "<unknown>"
    message = f"command {name} = {ep.value} (from {dist}) failed to load: {type(exc).__name__}: {exc}"

    def fail() -> None:
        raise click.ClickException(message)

    return click.Command(name, callback=fail, help=f"(broken) {message}", short_help="(broken plugin command)")


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(zoo.__version__, "-V", "--version", prog_name="zoo")
def cli() -> None:
    """Small PyTorch models from named plugins: build, train, export to ONNX, prove parity."""


def emit_json(data: Any) -> None:
    """Print a JSON document on stdout (for --json)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _listing(kind: str, check: bool) -> list[dict[str, Any]]:
    registry = zoo.registries[kind]
    rows = []
    for name, sources in registry.sources():
        row: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "target": sources[0].target,
            "distribution": f"{sources[0].distribution} {sources[0].version}".strip(),
            "status": "ok",
        }
        if len(sources) > 1:
            row["status"] = "conflict"
            row["error"] = "; ".join(s.describe() for s in sources)
        elif check:
            try:
                registry.get(name)
            except ZooError as exc:
                row["status"], row["error"] = "broken", str(exc)
        rows.append(row)
    return rows


@cli.command("list")
@click.argument("kind", required=False, metavar="[KIND]", type=click.Choice(KINDS, case_sensitive=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--check", is_flag=True, help="Import every plugin and report the ones that fail to load.")
def list_command(kind: str | None, as_json: bool, check: bool) -> None:
    """List registered plugins of one KIND, or of every kind.

    Reads package metadata only (fast, imports no plugin) unless --check is given.
    """
    rows = [row for k in ([kind.lower()] if kind else KINDS) for row in _listing(k, check)]
    if as_json:
        emit_json(rows)
        return
    for current in dict.fromkeys(row["kind"] for row in rows):
        group = [row for row in rows if row["kind"] == current]
        click.secho(f"{current} ({len(group)})", bold=True)
        width = max(len(row["name"]) for row in group)
        for row in group:
            status = "" if row["status"] == "ok" else click.style(f"  [{row['status']}] {row['error']}", fg="red")
            click.echo(f"  {row['name']:<{width}}  {row['target']}  ({row['distribution']}){status}")


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
    if as_json:
        emit_json([info.to_json() for info in found])
        return
    for info in found:
        click.secho(f"{info.name} ({info.kind})", bold=True)
        click.echo(f"  target:       {info.target}")
        click.echo(f"  distribution: {info.distribution} {info.version}".rstrip())
        click.echo(f"  signature:    {info.name}{info.signature}")
        if info.aliases:
            click.echo(f"  aliases:      {', '.join(info.aliases)}")
        click.echo(f"  {info.doc}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `zoo` script: errors become one line on stderr and a non-zero exit."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="zoo", standalone_mode=False)
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
    sys.exit(code if isinstance(code, int) else 0)
