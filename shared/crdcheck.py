"""Field-by-field reading of untrusted Kubernetes objects, with the error's field path.

Shared by :mod:`shared.crds` (pools, InferenceModel, the loaders) and
:mod:`shared.crds_routing` (InferenceObjective, InferenceModelRewrite): every parser
collects :class:`FieldError` values while it reads, then raises one
:class:`CRDValidationError` naming them all (``spec.rules[0].targets[1].weight: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MAX_OBJECT_NAME = 253


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CRDValidationError(ValueError):
    """One or more invalid fields of one object; ``errors`` lists them with their paths."""

    def __init__(self, kind: str, name: str, errors: list[FieldError], source: str = "") -> None:
        self.kind, self.name, self.errors, self.source = kind, name, errors, source
        detail = "; ".join(str(e) for e in errors)
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid {kind} {name!r}: {detail}")


@dataclass(frozen=True, slots=True)
class Meta:
    """The metadata fields the parsers use."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    created: float | None  # creationTimestamp as epoch seconds; None when absent (files)


class Checker:
    """Collects field errors while reading an untrusted mapping."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def has_error(self, path: str) -> bool:
        return any(e.path == path for e in self.errors)

    def raise_if_failed(self, kind: str, name: str) -> None:
        if self.errors:
            raise CRDValidationError(kind, name, self.errors)

    def mapping(self, value: Any, path: str, required: bool = True) -> Mapping[str, Any]:
        if value is None:
            if required:
                self.fail(path, "required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {type(value).__name__}")
            return {}
        return value

    def array(
        self, value: Any, path: str, required: bool = False, min_items: int = 0, max_items: int | None = None
    ) -> list[Any]:
        if value is None:
            if required:
                self.fail(path, "required")
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {type(value).__name__}")
            return []
        if len(value) < min_items:
            self.fail(path, f"must have at least {min_items} item{'s' if min_items > 1 else ''}")
        if max_items is not None and len(value) > max_items:
            self.fail(path, f"must have at most {max_items} items (got {len(value)})")
        return value

    def string(
        self,
        value: Any,
        path: str,
        required: bool = True,
        max_len: int | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> str:
        if value is None or value == "":
            if required:
                self.fail(path, "required")
            return ""
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {type(value).__name__}")
            return ""
        if max_len is not None and len(value) > max_len:
            self.fail(path, f"must be at most {max_len} characters (got {len(value)})")
        elif pattern is not None and not pattern.match(value):
            self.fail(path, f"invalid value {value!r}")
        return value

    def enum(self, value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.fail(path, f"must be one of {', '.join(choices)} (got {value!r})")
            return default
        return str(value)

    def integer(
        self, value: Any, path: str, lo: int | None, hi: int | None, required: bool = True
    ) -> int | None:
        if value is None:
            if required:
                self.fail(path, "required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {type(value).__name__}")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(path, f"must be between {lo} and {hi} (got {value})")
            return None
        return value

    def labels(self, value: Any, path: str, required: bool = True) -> dict[str, str]:
        labels = self.mapping(value, path, required=required)
        if required and not labels and not self.has_error(path):
            self.fail(path, "must select at least one label")
        out: dict[str, str] = {}
        for k, v in labels.items():
            if not isinstance(k, str) or not k:
                self.fail(path, f"label key {k!r} must be a non-empty string")
                continue
            if not isinstance(v, str) or not _LABEL_VALUE.match(v) or len(v) > 63:
                self.fail(f"{path}.{k}", f"invalid label value {v!r}")
                continue
            out[k] = v
        return out

    def group(self, value: Any, path: str, default: str) -> str:
        if value is None:
            return default
        return self.string(value, path, required=False, max_len=253, pattern=_GROUP)

    def kind(self, value: Any, path: str, default: str) -> str:
        if value is None:
            return default
        return self.string(value, path, max_len=63, pattern=_KIND) or default

    def metadata(self, obj: Mapping[str, Any], default_namespace: str) -> Meta:
        meta = self.mapping(obj.get("metadata"), "metadata")
        name = self.string(meta.get("name"), "metadata.name", max_len=MAX_OBJECT_NAME)
        namespace = self.string(meta.get("namespace"), "metadata.namespace", required=False)
        raw_labels = meta.get("labels")
        labels = {str(k): str(v) for k, v in (raw_labels.items() if isinstance(raw_labels, Mapping) else ())}
        created = _timestamp(self, meta.get("creationTimestamp"), "metadata.creationTimestamp")
        return Meta(name, namespace or default_namespace, labels, created)


def _timestamp(c: Checker, value: Any, path: str) -> float | None:
    """RFC 3339 text (the API) or a datetime (YAML parses unquoted timestamps) to epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            c.fail(path, f"must be an RFC 3339 timestamp (got {value!r})")
            return None
    else:
        c.fail(path, f"must be an RFC 3339 timestamp, got {type(value).__name__}")
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, Mapping) else ""
