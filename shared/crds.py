"""InferencePool and InferenceModel, parsed and validated the way upstream's API server would.

The same objects come from the Kubernetes API (a watch) or from multi-document YAML
files (runs without Kubernetes), so both paths go through :func:`from_object`.
Validation follows the Gateway API Inference Extension's CRD rules; every error names
the field path (``spec.targetModels[2].weight``) so the user can find it.

Supported API versions:
- InferencePool ``inference.networking.k8s.io/v1`` (``spec.selector.matchLabels``,
  ``spec.targetPorts[].number``, ``spec.endpointPickerRef``) and
  ``inference.networking.x-k8s.io/v1alpha2`` (``spec.selector``, ``spec.targetPortNumber``,
  ``spec.extensionRef``);
- InferenceModel ``inference.networking.x-k8s.io/v1alpha2``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POOL_V1 = "inference.networking.k8s.io/v1"
POOL_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
MODEL_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"

CRITICALITIES = ("Critical", "Standard", "Sheddable")
FAILURE_MODES = ("FailOpen", "FailClose")
MAX_TARGET_MODELS = 10
MAX_MODEL_NAME = 256
MIN_WEIGHT, MAX_WEIGHT = 1, 1_000_000
MAX_TARGET_PORTS = 8

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CRDValidationError(ValueError):
    """One or more invalid fields of one object; ``errors`` lists them with their paths."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]) -> None:
        self.kind, self.name, self.errors = kind, name, errors
        detail = "; ".join(str(e) for e in errors)
        super().__init__(f"invalid {kind} {name!r}: {detail}")


@dataclass(frozen=True, slots=True)
class EndpointPickerRef:
    name: str
    port: int = 9002
    failure_mode: str = "FailClose"


@dataclass(frozen=True, slots=True)
class InferencePool:
    name: str
    namespace: str
    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    picker: EndpointPickerRef | None = None
    api_version: str = POOL_V1

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def selects(self, labels: Mapping[str, str] | None) -> bool:
        """True when a pod with ``labels`` belongs to this pool (matchLabels semantics)."""
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True, slots=True)
class TargetModel:
    name: str
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class InferenceModel:
    name: str
    namespace: str
    model_name: str
    pool_ref: str
    criticality: str = "Standard"
    target_models: tuple[TargetModel, ...] = field(default_factory=tuple)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


Resource = InferencePool | InferenceModel


class _Checker:
    """Collects field errors while reading an untrusted mapping."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, value: Any, path: str, required: bool = True) -> Mapping[str, Any]:
        if value is None:
            if required:
                self.fail(path, "required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {type(value).__name__}")
            return {}
        return value

    def string(self, value: Any, path: str, required: bool = True, max_len: int | None = None) -> str:
        if value is None or value == "":
            if required:
                self.fail(path, "required")
            return ""
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {type(value).__name__}")
            return ""
        if max_len is not None and len(value) > max_len:
            self.fail(path, f"must be at most {max_len} characters (got {len(value)})")
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int, required: bool = True) -> int | None:
        if value is None:
            if required:
                self.fail(path, "required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {type(value).__name__}")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be between {lo} and {hi} (got {value})")
            return None
        return value

    def labels(self, value: Any, path: str) -> dict[str, str]:
        labels = self.mapping(value, path)
        if not labels and not any(e.path == path for e in self.errors):
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


def _metadata(obj: Mapping[str, Any], c: _Checker, default_namespace: str) -> tuple[str, str]:
    meta = c.mapping(obj.get("metadata"), "metadata")
    name = c.string(meta.get("name"), "metadata.name")
    namespace = c.string(meta.get("namespace"), "metadata.namespace", required=False) or default_namespace
    return name, namespace


def _parse_pool(obj: Mapping[str, Any], default_namespace: str) -> InferencePool:
    c = _Checker()
    name, namespace = _metadata(obj, c, default_namespace)
    api_version = obj.get("apiVersion")
    spec = c.mapping(obj.get("spec"), "spec")
    picker: EndpointPickerRef | None = None
    if api_version == POOL_V1:
        sel = c.mapping(spec.get("selector"), "spec.selector")
        selector = c.labels(sel.get("matchLabels"), "spec.selector.matchLabels") if sel else {}
        raw_ports = spec.get("targetPorts")
        ports: list[int] = []
        if not isinstance(raw_ports, list) or not raw_ports:
            c.fail("spec.targetPorts", "required: a list of 1 to 8 ports")
        else:
            if len(raw_ports) > MAX_TARGET_PORTS:
                c.fail(
                    "spec.targetPorts", f"must have at most {MAX_TARGET_PORTS} items (got {len(raw_ports)})"
                )
            for i, item in enumerate(raw_ports):
                entry = c.mapping(item, f"spec.targetPorts[{i}]")
                port = (
                    c.integer(entry.get("number"), f"spec.targetPorts[{i}].number", 1, 65535)
                    if entry
                    else None
                )
                if port is not None:
                    if port in ports:
                        c.fail(f"spec.targetPorts[{i}].number", f"duplicate port {port}")
                    ports.append(port)
        ref = spec.get("endpointPickerRef")
        if ref is not None:
            r = c.mapping(ref, "spec.endpointPickerRef")
            ref_port = c.mapping(r.get("port"), "spec.endpointPickerRef.port", required=False)
            picker = EndpointPickerRef(
                name=c.string(r.get("name"), "spec.endpointPickerRef.name"),
                port=c.integer(ref_port.get("number", 9002), "spec.endpointPickerRef.port.number", 1, 65535)
                or 9002,
                failure_mode=_failure_mode(c, r.get("failureMode"), "spec.endpointPickerRef.failureMode"),
            )
    else:  # v1alpha2
        selector = c.labels(spec.get("selector"), "spec.selector")
        port = c.integer(spec.get("targetPortNumber"), "spec.targetPortNumber", 1, 65535)
        ports = [port] if port is not None else []
        ref = spec.get("extensionRef")
        if ref is not None:
            r = c.mapping(ref, "spec.extensionRef")
            picker = EndpointPickerRef(
                name=c.string(r.get("name"), "spec.extensionRef.name"),
                port=c.integer(r.get("portNumber", 9002), "spec.extensionRef.portNumber", 1, 65535) or 9002,
                failure_mode=_failure_mode(c, r.get("failureMode"), "spec.extensionRef.failureMode"),
            )
    if c.errors:
        raise CRDValidationError("InferencePool", name, c.errors)
    return InferencePool(name, namespace, selector, tuple(ports), picker, str(api_version))


def _failure_mode(c: _Checker, value: Any, path: str) -> str:
    if value is None:
        return "FailClose"
    if value not in FAILURE_MODES:
        c.fail(path, f"must be one of {', '.join(FAILURE_MODES)} (got {value!r})")
        return "FailClose"
    return str(value)


def _parse_model(obj: Mapping[str, Any], default_namespace: str) -> InferenceModel:
    c = _Checker()
    name, namespace = _metadata(obj, c, default_namespace)
    spec = c.mapping(obj.get("spec"), "spec")
    model_name = c.string(spec.get("modelName"), "spec.modelName", max_len=MAX_MODEL_NAME)
    criticality = spec.get("criticality")
    if criticality is None:
        criticality = "Standard"
    elif criticality not in CRITICALITIES:
        c.fail("spec.criticality", f"must be one of {', '.join(CRITICALITIES)} (got {criticality!r})")
    pool_ref = c.mapping(spec.get("poolRef"), "spec.poolRef")
    pool_name = c.string(pool_ref.get("name"), "spec.poolRef.name") if pool_ref else ""
    targets: list[TargetModel] = []
    raw_targets = spec.get("targetModels")
    if raw_targets is not None:
        if not isinstance(raw_targets, list):
            c.fail("spec.targetModels", "must be a list")
            raw_targets = []
        if len(raw_targets) > MAX_TARGET_MODELS:
            c.fail(
                "spec.targetModels", f"must have at most {MAX_TARGET_MODELS} items (got {len(raw_targets)})"
            )
        for i, item in enumerate(raw_targets):
            entry = c.mapping(item, f"spec.targetModels[{i}]")
            tname = c.string(entry.get("name"), f"spec.targetModels[{i}].name", max_len=MAX_MODEL_NAME)
            weight = None
            if entry.get("weight") is not None:
                weight = c.integer(
                    entry.get("weight"), f"spec.targetModels[{i}].weight", MIN_WEIGHT, MAX_WEIGHT
                )
            targets.append(TargetModel(tname, weight))
        weighted = [isinstance(x, Mapping) and x.get("weight") is not None for x in raw_targets]
        if any(weighted) and not all(weighted):
            c.fail("spec.targetModels", "weights must be set on all targets or on none")
    if c.errors:
        raise CRDValidationError("InferenceModel", name, c.errors)
    return InferenceModel(name, namespace, model_name, pool_name, criticality, tuple(targets))


def from_object(obj: Mapping[str, Any], default_namespace: str = "default") -> Resource | None:
    """Parse one Kubernetes object; ``None`` for kinds this module does not model."""
    if not isinstance(obj, Mapping):
        raise CRDValidationError(
            "object", "", [FieldError("", f"must be a mapping, got {type(obj).__name__}")]
        )
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind == "InferencePool":
        if api_version not in (POOL_V1, POOL_V1ALPHA2):
            raise CRDValidationError(
                "InferencePool", _name_of(obj), [FieldError("apiVersion", f"unsupported {api_version!r}")]
            )
        return _parse_pool(obj, default_namespace)
    if kind == "InferenceModel":
        if api_version != MODEL_V1ALPHA2:
            raise CRDValidationError(
                "InferenceModel", _name_of(obj), [FieldError("apiVersion", f"unsupported {api_version!r}")]
            )
        return _parse_model(obj, default_namespace)
    return None


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, Mapping) else ""


def load_yaml(text: str, default_namespace: str = "default", source: str = "<yaml>") -> list[Resource]:
    """Parse every InferencePool/InferenceModel in a multi-document YAML text (others are skipped)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: invalid YAML: {exc}") from exc
    out: list[Resource] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items: Iterable[Any] = doc.get("items") or []
        else:
            items = [doc]
        for item in items:
            res = from_object(item, default_namespace)
            if res is not None:
                out.append(res)
    return out


def load_files(paths: Iterable[str | Path], default_namespace: str = "default") -> list[Resource]:
    """Load every YAML file (or every ``*.yaml``/``*.yml`` in a directory), in order."""
    out: list[Resource] = []
    for p in paths:
        path = Path(p)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        for f in files:
            out.extend(load_yaml(f.read_text(), default_namespace, source=str(f)))
    return out


def pools_of(resources: Iterable[Resource]) -> list[InferencePool]:
    return [r for r in resources if isinstance(r, InferencePool)]


def models_of(resources: Iterable[Resource]) -> list[InferenceModel]:
    return [r for r in resources if isinstance(r, InferenceModel)]
