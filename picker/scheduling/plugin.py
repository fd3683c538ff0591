"""The plugin contract and the open registry of plugin types.

A plugin type is a name (``"expected-work"``) and a factory that builds one instance from
its parameters. Built-in types register themselves when their module is imported; a
user's own module does the same (see README.md, "Writing a plugin") and is imported
through the config's ``pluginModules:`` list, or by the embedding code before it calls
``build_profile``. The role of an instance (filter, scorer, picker, selector) is read
from its class, as upstream's EPP reads it from the interfaces a plugin implements.

Data between plugins is explicit: a plugin declares the keys it ``produces`` and
``consumes``; the loader orders each profile's plugins so that every consumer runs after
its producer, or refuses the profile (see ``config.py``). At decision time the values
travel through the decision's :class:`~.context.Context` (``ctx.put`` / ``ctx.get``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .params import ConfigError, Params

__all__ = [
    "Plugin",
    "factory_of",
    "import_plugin_modules",
    "producers_of",
    "register",
    "registered",
]


class Plugin:
    """Base of every plugin: its type, its instance name, and the data it exchanges.

    ``type_name`` is set by :func:`register`; ``name`` is the instance's name from the
    config (the type name when the config gives none), used in logs and errors.
    ``produces`` / ``consumes`` are the keys of the per-decision data it writes with
    ``ctx.put`` and reads with ``ctx.get``.
    """

    type_name: ClassVar[str] = ""
    name: str = ""
    produces: ClassVar[frozenset[str]] = frozenset()
    consumes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_params(cls, p: Params) -> Plugin:
        """Build an instance from its parameters; a plugin with parameters overrides this."""
        p.done()
        return cls()


Factory = Callable[[Params], Any]
P = TypeVar("P")

_REGISTRY: dict[str, Factory] = {}
_PRODUCES: dict[str, frozenset[str]] = {}  # type name -> keys it produces (for error hints)


def register(type_name: str, factory: Factory | None = None) -> Any:
    """Register a plugin type: ``register("my-scorer", factory)`` or ``@register("my-scorer")``.

    The decorator form takes a :class:`Plugin` subclass and uses its ``from_params``; the
    call form takes any callable ``(Params) -> plugin``. A name may be registered once:
    registering the same factory again is a no-op (a module imported twice), a different
    one is an error, so a plugin cannot silently replace a built-in.
    """
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"plugin type names must be non-empty strings, got {type_name!r}")

    def add(target: Any) -> Any:
        make = target.from_params if isinstance(target, type) else target
        if not callable(make):
            raise TypeError(f"plugin type {type_name!r}: the factory must be callable")
        old = _REGISTRY.get(type_name)
        if old is not None and old != make:
            raise ValueError(f"plugin type {type_name!r} is already registered")
        if isinstance(target, type):
            if target.__dict__.get("type_name") not in ("", None, type_name):
                raise ValueError(f"{target.__name__} is already registered as {target.type_name!r}")
            target.type_name = type_name
            _PRODUCES[type_name] = frozenset(getattr(target, "produces", ()))
        _REGISTRY[type_name] = make
        return target

    if factory is not None:
        add(factory)
        return factory
    return add


def factory_of(type_name: str) -> Factory | None:
    return _REGISTRY.get(type_name)


def registered() -> list[str]:
    """Every registered type name, sorted (for error messages and docs)."""
    return sorted(_REGISTRY)


def producers_of(key: str) -> list[str]:
    """The registered types known to produce ``key`` (a hint for a missing-producer error)."""
    return sorted(t for t, keys in _PRODUCES.items() if key in keys)


def import_plugin_modules(modules: Any, where: str) -> None:
    """Import the user's plugin modules (they register their types as they load)."""
    if modules is None:
        return
    if not isinstance(modules, list):
        raise ConfigError(where, f"must be a list of module import paths, got {type(modules).__name__}")
    for i, mod in enumerate(modules):
        if not isinstance(mod, str) or not mod:
            raise ConfigError(f"{where}[{i}]", f"must be a module import path, got {mod!r}")
        try:
            importlib.import_module(mod)
        except Exception as exc:  # ImportError, or the module's own error while registering
            raise ConfigError(f"{where}[{i}]", f"cannot import {mod!r}: {exc}") from exc
