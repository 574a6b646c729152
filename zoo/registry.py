"""Named plugin registries filled from entry points: scanned once, imported lazily, cached."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from zoo.docstrings import describe, first_paragraph, literal_defaults
from zoo.errors import BadArgumentsError, DuplicateNameError, PluginLoadError, UnknownNameError, ZooError

IN_PROCESS = "<in-process>"


def normalize(name: str) -> str:
    """Return the lookup key of a name: case folded, with '-' and '_' ignored."""
    if not isinstance(name, str) or not name.strip():
        raise BadArgumentsError(f"a plugin name must be a non-empty string, got {name!r}")
    return name.strip().casefold().replace("-", "").replace("_", "")


def exact(name: str) -> str:
    """The lookup key of a name that is an identifier of its own (an aten op: `softmax` is not `_softmax`)."""
    if not isinstance(name, str) or not name.strip():
        raise BadArgumentsError(f"a plugin name must be a non-empty string, got {name!r}")
    return name.strip()


@dataclasses.dataclass(frozen=True)
class Source:
    """One registration of a name: an entry point of a distribution, or an in-process register()."""

    name: str
    target: str
    distribution: str
    version: str
    entry_point: metadata.EntryPoint | None = dataclasses.field(default=None, compare=False)
    obj: Any = dataclasses.field(default=None, compare=False)

    def describe(self) -> str:
        """`name = module:attr` with its distribution, as printed in error messages."""
        return f"{self.name} = {self.target} (from {self.distribution} {self.version})".strip()

    def description(self) -> str:
        """The first paragraph of the plugin's docstring, read from its source without importing it."""
        return first_paragraph(inspect.getdoc(self.obj)) if self.obj is not None else describe(self.target)

    def defaults(self) -> dict[str, Any]:
        """The plugin's parameter defaults, without importing it (from its source: the literal ones only)."""
        if self.obj is None:
            return literal_defaults(self.target)
        try:
            parameters = inspect.signature(self.obj).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {p.name: p.default for p in parameters if p.default is not p.empty}


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What `zoo show` prints about a plugin."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    signature: str
    doc: str
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """This record as a JSON-able dict."""
        return dataclasses.asdict(self)


def _scan(group: str, key: Callable[[str], str]) -> dict[str, list[Source]]:
    """Read the entry points of a group once, without importing anything they point to."""
    found: dict[str, list[Source]] = {}
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        source = Source(
            name=ep.name,
            target=ep.value,
            distribution=dist.name if dist else "<unknown>",
            version=dist.version if dist else "",
            entry_point=ep,
        )
        same = found.setdefault(key(ep.name), [])
        # Editable installs can expose one entry point twice: equal targets are one plugin.
        if all(s.target != source.target for s in same):
            same.append(source)
    return found


class Registry:
    """A kind of plugin (activations, layers, models, datasets): names to factories."""

    def __init__(
        self,
        kind: str,
        *,
        group: str,
        aliases: dict[str, str | tuple[str, dict[str, Any]]] | None = None,
        check: Callable[[Any], str | None] | None = None,
        build: Callable[[str, Callable[..., Any], tuple, dict], Any] | None = None,
        key: Callable[[str], str] = normalize,
    ) -> None:
        self.kind = kind
        self.key = key
        self.singular = kind.removesuffix("s")
        self.group = group
        self._alias_names = {self.key(alias): alias for alias in aliases or {}}
        self._aliases = {
            self.key(alias): (target, {}) if isinstance(target, str) else target
            for alias, target in (aliases or {}).items()
        }
        self._check = check
        self._build = build or (lambda _name, factory, args, kwargs: factory(*args, **kwargs))
        self._local: dict[str, Source] = {}
        self._scanned: dict[str, list[Source]] | None = None
        self._loaded: dict[str, Any] = {}
        self._failed: dict[str, PluginLoadError] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"

    def __contains__(self, name: str) -> bool:
        try:
            self._lookup(name)
        except UnknownNameError:
            return False
        return True

    # -- discovery (no imports) -------------------------------------------------------------
    def _sources(self) -> dict[str, list[Source]]:
        if self._scanned is None:
            self._scanned = _scan(self.group, self.key)
        merged = {key: list(sources) for key, sources in self._scanned.items()}
        for key, source in self._local.items():
            merged[key] = [source]  # an in-process registration replaces on purpose (override)
        return merged

    def sources(self) -> Iterator[tuple[str, list[Source]]]:
        """Yield (canonical name, its registrations) sorted by name; more than one is a conflict."""
        for sources in sorted(self._sources().values(), key=lambda s: self.key(s[0].name)):
            yield sources[0].name, sources

    def names(self) -> list[str]:
        """Every registered name, sorted; lists metadata only and imports no plugin."""
        return [name for name, _ in self.sources()]

    def aliases(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """The alias table: alias -> (registered name, default keyword arguments)."""
        return {self._alias_names[key]: target for key, target in self._aliases.items()}

    def aliases_of(self, name: str) -> tuple[str, ...]:
        """The aliases that resolve to the registered `name`."""
        key = self.key(name)
        return tuple(alias for alias, (target, _) in self.aliases().items() if self.key(target) == key)

    def status(self, name: str) -> str:
        """`ok` once the plugin loaded, `broken` once it failed to, else `unchecked` (nothing imported yet)."""
        key = self.key(name)
        return "ok" if key in self._loaded else "broken" if key in self._failed else "unchecked"

    def cache_clear(self) -> None:
        """Forget scanned entry points and loaded plugins (for tests and new installs)."""
        self._scanned = None
        self._loaded.clear()
        self._failed.clear()

    # -- lookup -----------------------------------------------------------------------------
    def _lookup(self, name: str) -> tuple[str, dict[str, Any]]:
        """Resolve a name or alias to (normalized registered key, alias keyword arguments)."""
        key = self.key(name)
        sources = self._sources()
        if key in sources:
            return key, {}
        if key in self._aliases:
            target, defaults = self._aliases[key]
            if self.key(target) in sources:
                return self.key(target), dict(defaults)
        raise UnknownNameError(self.singular, name, [*self.names(), *self._alias_names.values()])

    def resolve(self, name: str) -> tuple[str, dict[str, Any]]:
        """Return (canonical name, keyword arguments implied by an alias) for a name or alias."""
        key, defaults = self._lookup(name)
        return self._source(key).name, defaults

    def _source(self, key: str) -> Source:
        sources = self._sources()[key]
        if len(sources) > 1:
            listed = "; ".join(s.describe() for s in sources)
            raise DuplicateNameError(
                f"{self.singular} {sources[0].name!r} is registered more than once: {listed}; "
                "uninstall one of these distributions"
            )
        return sources[0]

    def get(self, name: str) -> Any:
        """Return the class or factory registered under a name, importing its plugin on first use."""
        return self._load(self._lookup(name)[0])

    def _load(self, key: str) -> Any:
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            raise self._failed[key]
        source = self._source(key)
        try:
            obj = source.entry_point.load() if source.entry_point else source.obj
            if not callable(obj):
                raise TypeError(f"{type(obj).__name__} object is not a class or callable")
        except Exception as exc:  # any failure of third-party code becomes one typed error
            error = PluginLoadError(
                f"{self.singular} plugin {source.describe()} failed to load: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            self._failed[key] = error
            raise error from exc
        self._loaded[key] = obj
        return obj

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Build the plugin registered under a name with the given arguments."""
        key, defaults = self._lookup(name)
        factory = self._load(key)
        source = self._source(key)
        kwargs = {**defaults, **kwargs}
        self._check_arguments(source, factory, args, kwargs)
        try:
            built = self._build(source.name, factory, args, kwargs)
        except ZooError:
            raise
        except (ValueError, TypeError) as exc:
            raise BadArgumentsError(f"{self.singular} {source.name!r} rejected its arguments: {exc}") from exc
        problem = self._check(built) if self._check else None
        if problem:
            raise PluginLoadError(f"{self.singular} plugin {source.describe()} built {problem}")
        return built

    def _check_arguments(self, source: Source, factory: Any, args: tuple, kwargs: dict) -> None:
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise BadArgumentsError(
                f"{self.singular} {source.name!r} ({source.target}): {exc}; it accepts {_params(signature)}"
            ) from exc

    def info(self, name: str) -> PluginInfo:
        """Describe a plugin: canonical name, target, distribution, signature, one-line doc."""
        key, _ = self._lookup(name)
        source = self._source(key)
        obj = self._load(key)
        signature = _signature(obj)
        return PluginInfo(
            kind=self.kind,
            name=source.name,
            target=source.target,
            distribution=source.distribution,
            version=source.version,
            signature=signature,
            doc=first_paragraph(inspect.getdoc(obj)),
            aliases=self.aliases_of(source.name),
        )

    # -- in-process registration ------------------------------------------------------------
    def register(self, name: str, *, override: bool = False) -> Callable[[Any], Any]:
        """Decorator registering a class or factory under a name in this process (notebooks, tests)."""
        key = self.key(name)

        def decorator(obj: Any) -> Any:
            if not callable(obj):
                raise BadArgumentsError(f"can only register a class or callable as {self.singular} {name!r}")
            existing = self._sources().get(key)
            if existing and not override:
                raise DuplicateNameError(
                    f"{self.singular} {name!r} is already registered by {existing[0].describe()}; "
                    "pass override=True to replace it"
                )
            target = f"{obj.__module__}:{obj.__qualname__}"
            self._local[key] = Source(name, target, IN_PROCESS, "", obj=obj)
            self._loaded.pop(key, None)
            self._failed.pop(key, None)
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an in-process registration made with register()."""
        key = self.key(name)
        if key not in self._local:
            raise UnknownNameError(self.singular, name, [s.name for s in self._local.values()])
        del self._local[key]
        self._loaded.pop(key, None)
        self._failed.pop(key, None)


def _signature(obj: Any) -> str:
    """The parameters a plugin is built with, annotations as written, without the return annotation."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parameters = [
        p.replace(annotation=_Written(p.annotation)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
    ]
    if isinstance(obj, type) and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        parameters = []  # a constructor inherited from a base that takes *args/**kwargs (nn.Module): none
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


class _Written(str):
    """An annotation kept as written (`from __future__ import annotations`), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _params(signature: inspect.Signature) -> str:
    shown = [str(p) for p in signature.parameters.values()]
    return "(" + ", ".join(shown) + ")" if shown else "no arguments"
