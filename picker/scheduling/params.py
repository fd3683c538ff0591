"""Typed reads of plugin parameters that name the offending field when they fail."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "Params"]


class ConfigError(ValueError):
    """A scheduling config is invalid; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Params:
    """A mapping of parameters read once each; leftovers are reported as unknown fields."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(where, f"must be a mapping, got {type(data).__name__}")
        self._data = dict(data)
        self.where = where

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def number(self, key: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
        v = self._data.pop(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
            raise ConfigError(self.field(key), f"must be a number, got {v!r}")
        if lo is not None and v < lo:
            raise ConfigError(self.field(key), f"must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ConfigError(self.field(key), f"must be <= {hi}, got {v!r}")
        return float(v)

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        v = self._data.pop(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.field(key), f"must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise ConfigError(self.field(key), f"must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            raise ConfigError(self.field(key), f"must be <= {hi}, got {v!r}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self._data.pop(key, default)
        if not isinstance(v, bool):
            raise ConfigError(self.field(key), f"must be true or false, got {v!r}")
        return v

    def string(self, key: str, default: str | None = None) -> str:
        v = self._data.pop(key, default)
        if not isinstance(v, str) or not v:
            raise ConfigError(self.field(key), f"must be a non-empty string, got {v!r}")
        return v

    def done(self) -> None:
        """Reject fields nobody read: a typo must not silently fall back to a default."""
        if self._data:
            key = sorted(map(str, self._data))[0]
            raise ConfigError(self.field(key), "unknown field")
