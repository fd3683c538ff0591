"""Kubernetes label selectors, as the HPA sends them in ``?labelSelector=``.

The full string syntax of ``labels.Parse`` is supported: ``k=v``, ``k==v``, ``k!=v``,
``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists) and ``!k`` (does not exist), joined by
commas. Semantics follow Kubernetes: ``!=`` and ``notin`` also match objects without the
label. Anything else raises :class:`SelectorError`, which the API turns into a 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# A qualified label key (optional DNS prefix + name) and a label value, per apimachinery.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")


class SelectorError(ValueError):
    """The selector string is not valid Kubernetes label-selector syntax."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        return not has or labels[self.key] not in self.values  # "!=", "notin"


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)$")
_EQ = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<val>[^=!\s]*)$")


def parse(text: str | None) -> Selector:
    """Parse a selector string; empty or missing selects everything."""
    if text is None or not text.strip():
        return Selector()
    return Selector(tuple(_requirement(part.strip()) for part in _split(text)))


def _split(text: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise SelectorError("nested parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced ')'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError("unbalanced '('")
    parts.append(text[start:])
    return parts


def _requirement(part: str) -> Requirement:
    if not part:
        raise SelectorError("empty requirement")
    if m := _SET.match(part):
        values = [v.strip() for v in m["vals"].split(",")]
        if not values or any(not v for v in values):
            raise SelectorError(f"{part!r}: a set needs non-empty values")
        return Requirement(_key(m["key"]), m["op"], frozenset(_value(v) for v in values))
    if m := _EQ.match(part):
        op = "=" if m["op"] == "==" else m["op"]
        return Requirement(_key(m["key"]), op, frozenset({_value(m["val"])}))
    if part.startswith("!"):
        return Requirement(_key(part[1:].strip()), "!")
    return Requirement(_key(part), "exists")


def _key(key: str) -> str:
    if not _KEY.match(key):
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r}")
    return value
