"""Inference resources, parsed and validated the way upstream's API server would.

The same objects come from the Kubernetes API (a watch) or from multi-document YAML
files (runs without Kubernetes), so both paths go through :func:`from_object`.
Validation follows the Gateway API Inference Extension's CRD rules; every error names
the field path (``spec.targetModels[2].weight``) so the user can find it.

Supported kinds and versions:
- InferencePool ``inference.networking.k8s.io/v1`` (``spec.selector.matchLabels``,
  ``spec.targetPorts[]`` (1 to 8, each ``ip:port`` an endpoint), ``spec.appProtocol``,
  ``spec.endpointPickerRef`` with ``failureMode``) and ``inference.networking.x-k8s.io/v1alpha2``
  (``spec.selector``, ``spec.targetPortNumber``, ``spec.extensionRef``);
- InferenceObjective and InferenceModelRewrite in ``inference.networking.x-k8s.io/v1alpha2``
  and ``llm-d.ai/v1alpha2`` (see :mod:`shared.crds_routing`);
- InferenceModel ``inference.networking.x-k8s.io/v1alpha2`` (deprecated upstream, still
  supported: :mod:`picker.models` maps it onto objectives and rewrite rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .crdcheck import Checker, CRDValidationError, FieldError, name_of
from .crds_routing import (
    GIE_V1ALPHA2,
    LLMD_V1ALPHA2,
    ROUTING_VERSIONS,
    InferenceModelRewrite,
    InferenceObjective,
    RewriteRule,
    RewriteTarget,
    parse_objective,
    parse_rewrite,
)

__all__ = [
    "GIE_V1ALPHA2",
    "LLMD_V1ALPHA2",
    "CRDValidationError",
    "EndpointPickerRef",
    "FieldError",
    "InferenceModel",
    "InferenceModelRewrite",
    "InferenceObjective",
    "InferencePool",
    "Resource",
    "RewriteRule",
    "RewriteTarget",
    "TargetModel",
    "from_object",
    "load_files",
    "load_yaml",
]

POOL_V1 = "inference.networking.k8s.io/v1"
POOL_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
MODEL_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"

CRITICALITIES = ("Critical", "Standard", "Sheddable")
FAILURE_MODES = ("FailOpen", "FailClose")
APP_PROTOCOLS = ("http", "kubernetes.io/h2c")
MAX_TARGET_MODELS = 10
MAX_MODEL_NAME = 256
MIN_WEIGHT, MAX_WEIGHT = 1, 1_000_000
MAX_TARGET_PORTS = 8
MAX_SELECTOR_LABELS = 64


@dataclass(frozen=True, slots=True)
class EndpointPickerRef:
    name: str
    port: int = 9002
    failure_mode: str = "FailClose"
    kind: str = "Service"
    group: str = ""


@dataclass(frozen=True, slots=True)
class InferencePool:
    """One pool; every ``(pod IP, target port)`` pair of a selected pod is an endpoint."""

    name: str
    namespace: str
    selector: Mapping[str, str]
    target_ports: tuple[int, ...]
    picker: EndpointPickerRef | None = None
    api_version: str = POOL_V1
    app_protocol: str = "http"
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def selects(self, labels: Mapping[str, str] | None) -> bool:
        """True when a pod with ``labels`` belongs to this pool (matchLabels semantics)."""
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.selector.items())

    def endpoints(self, pod_ip: str) -> list[str]:
        """The ``ip:port`` endpoints a selected pod contributes, in ``targetPorts`` order."""
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        return [f"{host}:{port}" for port in self.target_ports]


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
    created: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


Resource = InferencePool | InferenceModel | InferenceObjective | InferenceModelRewrite


def _parse_pool(obj: Mapping[str, Any], default_namespace: str) -> InferencePool:
    c = Checker()
    meta = c.metadata(obj, default_namespace)
    api_version = obj.get("apiVersion")
    spec = c.mapping(obj.get("spec"), "spec")
    picker: EndpointPickerRef | None = None
    app_protocol = "http"
    if api_version == POOL_V1:
        sel = c.mapping(spec.get("selector"), "spec.selector")
        selector = c.labels(sel.get("matchLabels"), "spec.selector.matchLabels") if sel else {}
        if len(selector) > MAX_SELECTOR_LABELS:
            c.fail("spec.selector.matchLabels", f"must have at most {MAX_SELECTOR_LABELS} labels")
        ports: list[int] = []
        raw_ports = spec.get("targetPorts")
        if not isinstance(raw_ports, list) or not raw_ports:
            c.fail("spec.targetPorts", f"required: a list of 1 to {MAX_TARGET_PORTS} ports")
            raw_ports = []
        elif len(raw_ports) > MAX_TARGET_PORTS:
            c.fail("spec.targetPorts", f"must have at most {MAX_TARGET_PORTS} items (got {len(raw_ports)})")
        for i, item in enumerate(raw_ports):
            entry = c.mapping(item, f"spec.targetPorts[{i}]")
            port = (
                c.integer(entry.get("number"), f"spec.targetPorts[{i}].number", 1, 65535) if entry else None
            )
            if port is not None:
                if port in ports:
                    c.fail(f"spec.targetPorts[{i}].number", f"duplicate port {port}")
                ports.append(port)
        app_protocol = c.enum(spec.get("appProtocol"), "spec.appProtocol", APP_PROTOCOLS, "http")
        if spec.get("endpointPickerRef") is not None:  # optional since GIE v1.5
            picker = _picker_ref_v1(c, spec.get("endpointPickerRef"))
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
                failure_mode=c.enum(
                    r.get("failureMode"), "spec.extensionRef.failureMode", FAILURE_MODES, "FailClose"
                ),
            )
    c.raise_if_failed("InferencePool", meta.name)
    return InferencePool(
        meta.name, meta.namespace, selector, tuple(ports), picker, str(api_version), app_protocol, meta.labels
    )


def _picker_ref_v1(c: Checker, value: Any) -> EndpointPickerRef:
    path = "spec.endpointPickerRef"
    r = c.mapping(value, path)
    kind = c.kind(r.get("kind"), f"{path}.kind", "Service")
    group = c.group(r.get("group"), f"{path}.group", "")
    name = c.string(r.get("name"), f"{path}.name", max_len=253)
    port = 9002
    if r.get("port") is None:
        if kind == "Service" and group == "":
            c.fail(f"{path}.port", "required when the referent is a Kubernetes Service")
    else:
        ref_port = c.mapping(r.get("port"), f"{path}.port")
        port = c.integer(ref_port.get("number"), f"{path}.port.number", 1, 65535) or 9002
    failure = c.enum(r.get("failureMode"), f"{path}.failureMode", FAILURE_MODES, "FailClose")
    return EndpointPickerRef(name, port, failure, kind, group)


def _parse_model(obj: Mapping[str, Any], default_namespace: str) -> InferenceModel:
    c = Checker()
    meta = c.metadata(obj, default_namespace)
    spec = c.mapping(obj.get("spec"), "spec")
    model_name = c.string(spec.get("modelName"), "spec.modelName", max_len=MAX_MODEL_NAME)
    criticality = c.enum(spec.get("criticality"), "spec.criticality", CRITICALITIES, "Standard")
    pool_ref = c.mapping(spec.get("poolRef"), "spec.poolRef")
    pool_name = c.string(pool_ref.get("name"), "spec.poolRef.name") if pool_ref else ""
    targets: list[TargetModel] = []
    raw_targets = c.array(spec.get("targetModels"), "spec.targetModels", max_items=MAX_TARGET_MODELS)
    for i, item in enumerate(raw_targets):
        entry = c.mapping(item, f"spec.targetModels[{i}]")
        tname = c.string(entry.get("name"), f"spec.targetModels[{i}].name", max_len=MAX_MODEL_NAME)
        weight = c.integer(
            entry.get("weight"), f"spec.targetModels[{i}].weight", MIN_WEIGHT, MAX_WEIGHT, required=False
        )
        targets.append(TargetModel(tname, weight))
    weighted = [isinstance(x, Mapping) and x.get("weight") is not None for x in raw_targets]
    if any(weighted) and not all(weighted):
        c.fail("spec.targetModels", "weights must be set on all targets or on none")
    c.raise_if_failed("InferenceModel", meta.name)
    return InferenceModel(
        meta.name, meta.namespace, model_name, pool_name, criticality, tuple(targets), meta.created
    )


def _parse_routing(obj: Mapping[str, Any], default_namespace: str) -> Resource:
    kind = str(obj.get("kind"))
    c = Checker()
    meta = c.metadata(obj, default_namespace)
    res: Resource = (
        parse_objective(obj, meta, c) if kind == "InferenceObjective" else parse_rewrite(obj, meta, c)
    )
    c.raise_if_failed(kind, meta.name)
    return res


_VERSIONS: dict[str, tuple[str, ...]] = {
    "InferencePool": (POOL_V1, POOL_V1ALPHA2),
    "InferenceModel": (MODEL_V1ALPHA2,),
    "InferenceObjective": ROUTING_VERSIONS,
    "InferenceModelRewrite": ROUTING_VERSIONS,
}


def from_object(obj: Mapping[str, Any], default_namespace: str = "default") -> Resource | None:
    """Parse one Kubernetes object; ``None`` for kinds this module does not model."""
    if not isinstance(obj, Mapping):
        raise CRDValidationError(
            "object", "", [FieldError("", f"must be a mapping, got {type(obj).__name__}")]
        )
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    versions = _VERSIONS.get(kind) if isinstance(kind, str) else None
    if versions is None:
        return None
    if api_version not in versions:
        raise CRDValidationError(
            str(kind),
            name_of(obj),
            [FieldError("apiVersion", f"unsupported {api_version!r} (supported: {', '.join(versions)})")],
        )
    if kind == "InferencePool":
        return _parse_pool(obj, default_namespace)
    if kind == "InferenceModel":
        return _parse_model(obj, default_namespace)
    return _parse_routing(obj, default_namespace)


def load_yaml(text: str, default_namespace: str = "default", source: str = "<yaml>") -> list[Resource]:
    """Parse every inference resource in a multi-document YAML text (other kinds are skipped)."""
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
            try:
                res = from_object(item, default_namespace)
            except CRDValidationError as exc:
                raise CRDValidationError(exc.kind, exc.name, exc.errors, source) from None
            if res is not None:
                out.append(res)
    return out


def yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    """Each path, or every ``*.yaml``/``*.yml`` in it when it is a directory (sorted)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        out.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path])
    return out


def load_files(paths: Iterable[str | Path], default_namespace: str = "default") -> list[Resource]:
    """Load every YAML file (or every ``*.yaml``/``*.yml`` in a directory), in order."""
    out: list[Resource] = []
    for f in yaml_files(paths):
        out.extend(load_yaml(f.read_text(), default_namespace, source=str(f)))
    return out


def pools_of(resources: Iterable[Any]) -> list[InferencePool]:
    return [r for r in resources if isinstance(r, InferencePool)]


def models_of(resources: Iterable[Any]) -> list[InferenceModel]:
    return [r for r in resources if isinstance(r, InferenceModel)]


def objectives_of(resources: Iterable[Any]) -> list[InferenceObjective]:
    return [r for r in resources if isinstance(r, InferenceObjective)]


def rewrites_of(resources: Iterable[Any]) -> list[InferenceModelRewrite]:
    return [r for r in resources if isinstance(r, InferenceModelRewrite)]
