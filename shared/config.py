"""Command-line flags with environment-variable fallbacks.

Every long flag ``--some-name`` of a service also reads ``<ENV_PREFIX>SOME_NAME`` (for
example ``INFERGATE_SCRAPE_INTERVAL``); an explicit flag wins over the environment,
which wins over the default. The variable is named in ``--help`` so the two never drift.
Flags in argument groups get the same treatment, because the fallback is applied at
parse time over every registered action.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from dataclasses import field as dc_field
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

ENV_PREFIX = "INFERGATE_"
T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str, prefix: str = ENV_PREFIX) -> str:
    """``--scrape-interval`` -> ``INFERGATE_SCRAPE_INTERVAL``."""
    return prefix + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


class EnvArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose long options fall back to environment variables.

    Booleans use ``action=argparse.BooleanOptionalAction`` (env: 1/0, true/false, yes/no);
    list flags (``nargs='*'``/``'+'``) take a comma-separated variable.
    """

    def __init__(self, *args: Any, env_prefix: str = ENV_PREFIX, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix

    def env_vars(self) -> dict[str, str]:
        """``dest -> variable`` for every flag with a fallback (docs and manifest tests use it)."""
        return {a.dest: self._env_of(a) for a in self._actions if self._env_of(a)}

    def _env_of(self, action: argparse.Action) -> str:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return ""
        return env_name(longs[0], self.env_prefix)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        for action in self._actions:
            env = self._env_of(action)
            raw = os.environ.get(env) if env else None
            if raw is not None:
                action.default = self._convert(action, raw, env)
                action.required = False
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        for action in self._actions:
            env = self._env_of(action)
            if env and env not in (action.help or ""):
                action.help = f"{action.help or ''} [env: {env}]".strip()
        return super().format_help()

    def _convert(self, action: argparse.Action, raw: str, env: str) -> Any:
        try:
            if isinstance(action, argparse.BooleanOptionalAction) or action.const is True:
                return parse_bool(raw)
            if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
                items = [x.strip() for x in raw.split(",") if x.strip()]
                return [action.type(x) if action.type else x for x in items]  # type: ignore[misc]
            return action.type(raw) if action.type else raw  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            self.error(f"environment variable {env}={raw!r}: {exc}")


# --- One declaration per setting -------------------------------------------------------------
#
# A service's settings dataclass declares each CLI-backed field with :func:`setting`: its
# default, help, argument group and (when the annotation does not say it) the flag's type or
# choices. :func:`add_settings` registers the flags from those fields, :func:`from_args` builds
# the dataclass from the parsed namespace, and :class:`EnvArgumentParser` adds the
# ``INFERGATE_*`` fallback. The name, type, default and help are thus written exactly once.

_SETTING = "infergate.setting"
_UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """How one dataclass field appears on the command line (the field's ``metadata``)."""

    help: str
    group: str | None = None  # argparse group title; None: the parser's own options
    flag: str | None = None  # default: ``--<field-name-with-dashes>``
    type: Callable[[str], Any] | None = None  # default: from the annotation (int, float)
    choices: Sequence[str] | None = None
    cli_default: Any = _UNSET  # the flag's default when it differs from the field's (tri-state)
    cli_default_factory: Callable[[], Any] | None = None  # ...computed when the parser is built
    kwargs: Mapping[str, Any] = dc_field(default_factory=dict)  # other add_argument keywords

    def option(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def dest(self, name: str) -> str:
        """The namespace attribute argparse derives from the flag (``--bind-address``: bind_address)."""
        return self.option(name).lstrip("-").replace("-", "_")


def setting(
    default: Any = MISSING,
    *,
    help: str,
    group: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    cli_default: Any = _UNSET,
    cli_default_factory: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field that is also a command-line flag (and an ``INFERGATE_*`` variable).

    ``bool`` fields become ``--x/--no-x``; ``list`` fields take several values (``nargs='*'``,
    env: comma-separated); ``int``/``float`` fields parse as such. An explicit ``type`` or
    ``action`` replaces that inference. ``cli_default``/``cli_default_factory``: the flag's
    default where it differs from the field's (a tri-state, or one read from the environment).
    """
    flag_spec = Flag(help, group, flag, type, choices, cli_default, cli_default_factory, kwargs)
    meta = {_SETTING: flag_spec}
    if default_factory is not MISSING:
        return dc_field(default_factory=default_factory, metadata=meta)
    return dc_field(default=default, metadata=meta)


def _declared(cls: type) -> list[tuple[Field, Flag, Any]]:
    hints = get_type_hints(cls)
    return [(f, f.metadata[_SETTING], hints[f.name]) for f in fields(cls) if _SETTING in f.metadata]


def _field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _argument(f: Field, spec: Flag, hint: Any) -> dict[str, Any]:
    """``add_argument`` keywords derived from the field's annotation, default and flag spec."""
    if spec.cli_default_factory is not None:
        default = spec.cli_default_factory()
    elif spec.cli_default is not _UNSET:
        default = spec.cli_default
    else:
        default = _field_default(f)
    union = get_origin(hint) in (Union, UnionType)
    base = {a for a in get_args(hint) if a is not type(None)} if union else {hint}
    origin = {get_origin(b) or b for b in base}
    kw: dict[str, Any] = {"default": default, "help": spec.help}
    if spec.type is not None or "action" in spec.kwargs:
        pass  # the declaration says how to parse it
    elif origin == {bool}:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin == {list}:
        kw["nargs"] = "*"
        (item,) = {a for b in base for a in get_args(b)} or {str}
        if item is not str:
            kw["type"] = item
    elif origin in ({int}, {float}):
        (kw["type"],) = origin
    if spec.type is not None:
        kw["type"] = spec.type
    if spec.choices is not None:
        kw["choices"] = list(spec.choices)
    kw.update(spec.kwargs)
    return kw


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """Register one flag per :func:`setting` field of ``cls``, in field order, grouped by title."""
    groups: dict[str | None, Any] = {None: parser}
    for f, spec, hint in _declared(cls):
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        groups[spec.group].add_argument(spec.option(f.name), **_argument(f, spec, hint))


def from_args(cls: type[T], args: argparse.Namespace, **derived: Any) -> T:
    """``cls`` from parsed flags: every :func:`setting` field from its flag, plus ``derived``
    values for the fields whose flag needs more than a type (composite or tri-state ones)."""
    values = {f.name: getattr(args, s.dest(f.name)) for f, s, _ in _declared(cls) if f.name not in derived}
    return cls(**values, **derived)
