"""Name -> factory registries, and the spec language that names configured objects.

A *spec* is a string such as ``"noise(steps=300,noise=spectral)+rwf"``: parts joined by ``+``
compose left to right, and each part is a registered name with optional keyword arguments.
Values are Python literals (``300``, ``1e-4``, ``(0, 1)``, ``True``) or bare words taken as
strings (``spectral``). The registry is the one switch of the package: code never branches on a
method, task, architecture or noise name.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import fnmatch
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "Registry", "SpecError", "UnknownNameError", "build_config", "config_doc", "field_help", "matching",
    "parse_literal", "parse_spec", "plain_doc", "summary",
]  # fmt: skip


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry has; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SpecError(ValueError):
    """A spec string or keyword argument that does not parse or does not fit the config."""


def closest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """The registered names most like ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4) or choices[:n]


def matching(names: Iterator[str] | list[str], pattern: str | None) -> list[str]:
    """The ``names`` that match the shell-style ``pattern`` (``"noise*"``, ``"*fa*"``; case-insensitive,
    as :func:`fnmatch.fnmatch` on lower-cased text; ``None``: all), in their given order."""
    names = list(names)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]


SUMMARY_CHARS = 110  # one line of `initium list` beside the name


def summary(doc: str | None) -> str:
    """One line from a docstring: its first sentence (of the first paragraph), with reST markup made
    plain (````x```` -> ```x```, ``:class:`~a.b.C``` -> ``C``), cut to :data:`SUMMARY_CHARS` on a word."""
    para = (doc or "").strip().split("\n\n")[0]
    text = " ".join(para.split())
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text).replace("``", "`")
    # a sentence ends at ". " before a capital, but not after "et al." or "e.g."
    first = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    if len(first) > SUMMARY_CHARS:
        first = first[: SUMMARY_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:.") + "..."
    return first


def plain_doc(doc: str) -> str:
    """A docstring as help text: one paragraph, reST's double backticks made single, roles dropped."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(doc.split())).replace("``", "`")


def config_doc(config: type) -> str:
    """The docstrings of ``config`` and of the config classes it extends (DIP's shared options)."""
    own = [c.__doc__ for c in config.__mro__ if dataclasses.is_dataclass(c) and "__doc__" in vars(c)]
    return " ".join(plain_doc(d) for d in own if d)


def field_help(config: type, name: str, default: Any) -> str:
    """``initium run TASK --help``'s text for the option ``--name``: the clauses of the config's
    docstring that begin with ````name```` (````name````:, ````name```` is ..., ````name=...````), each
    up to the next such clause or the end of its sentence, then the default. Configs document their
    fields in their docstrings, so the explanations live in one place."""
    text, fields = config_doc(config), {f.name for f in dataclasses.fields(config)}
    starts = [
        (m.start(), m.group(1))
        for m in re.finditer(r"`(\w+)(?:`[:\s]|=)", text)
        if m.group(1) in fields and (m.start() == 0 or text[m.start() - 2 : m.start()] in (". ", "; ", ", "))
    ]
    about = []
    for (start, field), (end, _) in zip(starts, [*starts[1:], (len(text), "")], strict=True):
        if field == name:
            clause = re.split(r"\.\s+(?=[A-Z])", text[start:end], maxsplit=1)[0]
            about.append(clause.rstrip(",;. "))
    return "; ".join([*about, f"default: {default!r}"]).replace("%", "%%")


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ')' at position {i} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise SpecError(f"unclosed bracket or quote in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_literal(text: str) -> Any:
    """A Python literal (`300`, `1e-4`, `(0, 1)`, `True`), else the text itself (a bare word)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: `noise=spectral`
    except (TypeError, RecursionError, MemoryError) as exc:  # `{[]}` (an unhashable set item), too deep a nesting
        raise SpecError(f"{text!r} is not a usable literal ({type(exc).__name__}: {exc})") from None


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a(x=1)+b"`` -> ``[("a", {"x": 1}), ("b", {})]``."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"expected a non-empty spec string such as 'noise(steps=300)', got {spec!r}")
    out = []
    for part in split_top(spec, "+"):
        name, _, rest = part.partition("(")
        name = name.strip()
        if not name:
            raise SpecError(f"empty name in spec {spec!r}")
        kwargs: dict[str, Any] = {}
        if rest:
            if not rest.endswith(")"):
                raise SpecError(f"expected ')' at the end of {part!r}")
            for item in split_top(rest[:-1], ","):
                if not item:
                    continue
                key, eq, value = item.partition("=")
                key = key.strip()
                if not eq or not key.isidentifier():
                    raise SpecError(f"expected key=value in {part!r}, got {item!r}")
                if key in kwargs:
                    raise SpecError(f"option {key!r} is given twice in {part!r}")
                try:
                    kwargs[key] = parse_literal(value.strip())
                except SpecError as exc:
                    raise SpecError(f"option {key!r} in {part!r}: {exc}") from None
        out.append((name, kwargs))
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type hint, widening int -> float and list -> tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm, where)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(f"{where}: {value!r} fits none of {hint}")
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise SpecError(f"{where}: expected None, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # `skip=true` in a spec: a bare word, lower case as on the command line
    if origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            if args and args[-1] is not Ellipsis:
                if len(args) != len(value):
                    raise SpecError(f"{where}: expected a tuple of {len(args)} values, got {value!r}")
                return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
            if args and args[-1] is Ellipsis:
                return tuple(_coerce(v, args[0], where) for v in value)
            return tuple(value)
        raise SpecError(f"{where}: expected a tuple, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise SpecError(f"{where}: expected one of {typing.get_args(hint)}, got {value!r}")
    if isinstance(hint, type):
        if hint is int and isinstance(value, bool):
            raise SpecError(f"{where}: expected int, got {value!r}")
        if isinstance(value, hint):
            return value
        raise SpecError(f"{where}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def build_config(cls: type[T], kwargs: Mapping[str, Any], where: str) -> T:
    """Instantiate the dataclass ``cls`` from ``kwargs``, checking names and simple types."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    checked = {}
    for key, value in kwargs.items():
        if key not in fields:
            raise SpecError(
                f"{where} has no option {key!r}; options: {', '.join(fields)}"
                f" (closest: {', '.join(closest(key, fields))})"
            )
        checked[key] = _coerce(value, hints[key], f"{where} option {key!r}")
    return cls(**checked)


def _check_signature(fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``fn``'s keyword parameters and their annotations."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    names = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out = {}
    for key, value in kwargs.items():
        if key not in names:
            raise SpecError(
                f"{where} has no option {key!r}; options: {', '.join(names)}"
                f" (closest: {', '.join(closest(key, names))})"
            )
        out[key] = _coerce(value, hints[key], f"{where} option {key!r}") if key in hints else value
    return out


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory and the frozen dataclass that configures it (or ``None``); ``doc``: one
    line, the first sentence of the factory's docstring (:func:`summary`), what ``initium list`` shows."""

    name: str
    factory: Callable[..., T]
    config: type | None
    doc: str


class Registry(Generic[T]):
    """A named collection of factories (timm's ``register_model`` / ``create_model`` pattern).

    ``factory(config)`` is called with an instance of the entry's config dataclass, or with the
    raw keyword arguments when the entry has no config class.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("noise", NoiseConfig)``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = factory.__doc__ or (config.__doc__ if config is not None else None)
            self._entries[name] = Entry(name, factory, config, summary(doc))
            return factory

        return deco

    def names(self, pattern: str | None = None, *, in_order: bool = False) -> list[str]:
        """The registered names, sorted, or ``in_order`` of registration (a family's own order);
        ``pattern``: only those matching it, shell-style (``"noise*"``, see :func:`matching`)."""
        return matching(list(self._entries) if in_order else sorted(self._entries), pattern)

    def options(self, name: str) -> list[str]:
        """The option names entry ``name`` takes: its config's fields, else its factory's keywords."""
        entry = self.entry(name)
        if entry.config is not None:
            return [f.name for f in dataclasses.fields(entry.config) if f.init]
        params = inspect.signature(entry.factory).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; closest: {', '.join(closest(name, self.names()))}"
                f" (all: {', '.join(self.names())})"
            ) from None

    def config(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        fixed: Mapping[str, Any] | None = None,
        **defaults: Any,
    ) -> Any:
        """The entry's config built from ``kwargs``; ``defaults`` fill fields the caller left unset,
        where the entry has them (the caller checks that a default is wanted somewhere: see
        :func:`initium.create`); ``fixed`` are set by the caller and may not be given in ``kwargs``
        (e.g. a task's ``in_features``)."""
        entry = self.entry(name)
        kwargs = dict(kwargs or {})
        for key, value in (fixed or {}).items():
            if key in kwargs:
                raise SpecError(f"{self.kind} {name!r}: {key} is set by the task ({value!r}); remove it from the spec")
            kwargs[key] = value
        options = set(self.options(name))
        merged = {k: v for k, v in defaults.items() if k in options} | kwargs
        if entry.config is None:
            return _check_signature(entry.factory, merged, f"{self.kind} {name!r}")
        return build_config(entry.config, merged, f"{self.kind} {name!r}")

    def build(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        fixed: Mapping[str, Any] | None = None,
        **defaults: Any,
    ) -> T:
        """Create one object: ``build("noise", {"steps": 300})``."""
        cfg = self.config(name, kwargs, fixed=fixed, **defaults)
        factory = self.entry(name).factory
        try:
            return factory(**cfg) if isinstance(cfg, dict) else factory(cfg)
        except ValueError as exc:  # the factory's own checks: say which entry they are about
            if isinstance(exc, SpecError | UnknownNameError) or repr(name) in str(exc) or f"{name} " in str(exc):
                raise
            raise SpecError(f"{self.kind} {name!r}: {exc}") from exc

    def parse(self, spec: str, aliases: Mapping[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Parse ``spec`` and check that every part names an entry (before any work is done);
        ``aliases`` renames parts first (a task's own names for entries)."""
        parts = [((aliases or {}).get(name, name), kwargs) for name, kwargs in parse_spec(spec)]
        for name, kwargs in parts:
            try:
                self.config(name, kwargs)  # raises on unknown names and options
            except UnknownNameError as exc:
                if len(parts) == 1:
                    raise
                # in a composite spec, say which one: "0+a" names its whole text, not only the part "0"
                raise UnknownNameError(f"{exc} (in {spec.strip()!r})") from None
        return parts
