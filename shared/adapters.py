"""The desired LoRA adapters of each pool: what the collectors load, and where.

One YAML document (a file, or the ``adapters.yaml`` key of a ConfigMap) declares them::

    adapters:
      - name: sql-lora                       # the model name clients (or rewrites) use
        source: /models/adapters/sql-lora    # lora_path, as vLLM's /v1/load_lora_adapter takes it
        baseModel: meta-llama/Llama-2-7b-hf  # optional: only servers of this base model load it
        replicas: 2                          # how many servers of the pool serve it (default 1)
        pool: llama                          # optional: default every pool
        namespace: default                   # optional: default every namespace
    defaults:                                # optional: for adapters only routing names
      source: /models/adapters/{name}
      replicas: 1

Every adapter a rewrite rule (InferenceModelRewrite) or an InferenceModel targets is wanted
too: when the document does not declare it, ``defaults.source`` (with ``{name}``) says where
it comes from, and without a default it is reported as undeclared (it cannot be loaded
without a source). The same file may also carry those routing resources as further YAML
documents (``---``), which is how a deployment without Kubernetes declares both at once.
A target that is some server's base model is never an adapter.

Errors name the entry (``adapters[1].replicas: must be an integer >= 0``); a broken
version is rejected whole and the sources keep the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from shared import crds

log = logging.getLogger(__name__)

__all__ = [
    "AdapterSpec",
    "AdaptersError",
    "ConfigMapAdapterSource",
    "DesiredAdapter",
    "FileAdapterSource",
    "load_text",
    "parse_spec",
    "wanted",
]

MAX_ADAPTERS = 1000
MAX_REPLICAS = 10_000
CONFIGMAP_KEY = "adapters.yaml"


class AdaptersError(ValueError):
    """An invalid adapters document; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class DesiredAdapter:
    name: str
    source: str
    replicas: int = 1
    base_model: str = ""  # "" = any base model
    pool: str = ""  # "" = every pool
    namespace: str = ""  # "" = every namespace
    implied: bool = False  # from a rewrite rule or InferenceModel, not declared

    def applies_to(self, namespace: str, pool: str) -> bool:
        return (not self.pool or self.pool == pool) and (not self.namespace or self.namespace == namespace)


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One version of the adapters document plus the routing resources it came with."""

    adapters: tuple[DesiredAdapter, ...] = ()
    default_source: str = ""  # with "{name}"; "" = undeclared targets are not loaded
    default_replicas: int = 1
    routing: tuple[Any, ...] = field(default_factory=tuple)  # rewrites / InferenceModels


def _string(entry: Mapping[str, Any], key: str, where: str, required: bool) -> str:
    value = entry.get(key)
    if value is None or value == "":
        if required:
            raise AdaptersError(f"{where}.{key}: is required")
        return ""
    if not isinstance(value, str):
        raise AdaptersError(f"{where}.{key}: must be a string, got {type(value).__name__}")
    if len(value) > 1024:
        raise AdaptersError(f"{where}.{key}: longer than 1024 characters")
    return value


def _replicas(entry: Mapping[str, Any], where: str, default: int) -> int:
    value = entry.get("replicas", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPLICAS:
        raise AdaptersError(f"{where}.replicas: must be an integer in [0, {MAX_REPLICAS}]")
    return value


_ADAPTER_FIELDS = {"name", "source", "baseModel", "replicas", "pool", "namespace"}


def parse_spec(data: Any, source: str = "<adapters>", routing: Iterable[Any] = ()) -> AdapterSpec:
    """Validate one loaded ``{adapters: [...], defaults: {...}}`` document."""
    if data is None:
        return AdapterSpec(routing=tuple(routing))
    if not isinstance(data, Mapping):
        raise AdaptersError(f"{source}: expected a mapping with 'adapters', got {type(data).__name__}")
    unknown = set(data) - {"adapters", "defaults"}
    if unknown:
        raise AdaptersError(f"{source}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    raw = data.get("adapters") or []
    if not isinstance(raw, list):
        raise AdaptersError(f"{source}: adapters must be a list")
    if len(raw) > MAX_ADAPTERS:
        raise AdaptersError(f"{source}: more than {MAX_ADAPTERS} adapters")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping) or set(defaults) - {"source", "replicas"}:
        raise AdaptersError(f"{source}: defaults takes only 'source' and 'replicas'")
    default_replicas = _replicas(defaults, f"{source}: defaults", 1)
    default_source = _string(defaults, "source", f"{source}: defaults", required=False)
    out: list[DesiredAdapter] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, entry in enumerate(raw):
        where = f"{source}: adapters[{i}]"
        if not isinstance(entry, Mapping):
            raise AdaptersError(f"{where}: must be a mapping")
        bad = set(entry) - _ADAPTER_FIELDS
        if bad:
            raise AdaptersError(f"{where}: unknown field(s) {', '.join(sorted(map(str, bad)))}")
        a = DesiredAdapter(
            name=_string(entry, "name", where, True),
            source=_string(entry, "source", where, True),
            replicas=_replicas(entry, where, default_replicas),
            base_model=_string(entry, "baseModel", where, False),
            pool=_string(entry, "pool", where, False),
            namespace=_string(entry, "namespace", where, False),
        )
        k = (a.namespace, a.pool, a.name)
        if k in seen:
            raise AdaptersError(f"{where}: duplicate of adapters[{seen[k]}] ({a.name})")
        seen[k] = i
        out.append(a)
    return AdapterSpec(tuple(out), default_source, default_replicas, tuple(routing))


def load_text(text: str, source: str = "<adapters>", default_namespace: str = "default") -> AdapterSpec:
    """A YAML stream: the adapters document plus any InferenceModelRewrite/InferenceModel ones."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise AdaptersError(f"{source}: invalid YAML: {exc}") from exc
    spec_doc: Any = None
    routing: list[Any] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, Mapping) and "kind" in doc:
            try:
                res = crds.from_object(doc, default_namespace)
            except crds.CRDValidationError as exc:
                raise AdaptersError(f"{source}: document {i}: {exc}") from exc
            if res is not None:
                routing.append(res)
        elif spec_doc is None:
            spec_doc = doc
        else:
            raise AdaptersError(f"{source}: more than one adapters document")
    return parse_spec(spec_doc, source, routing)


def _targets(resources: Iterable[Any], namespace: str, pool: str) -> list[str]:
    """Model names that rewrite rules and InferenceModels of the pool send requests to."""
    names: list[str] = []
    for r in crds.rewrites_of(resources):
        if r.pool_ref == pool and r.namespace == namespace:
            names += [t.model for rule in r.rules for t in rule.targets]
    for m in crds.models_of(resources):
        if m.pool_ref == pool and m.namespace == namespace:
            names += [t.name for t in m.target_models] or [m.model_name]
    return names


def wanted(
    spec: AdapterSpec,
    namespace: str,
    pool: str,
    base_models: Iterable[str] = (),
    routing: Iterable[Any] = (),
) -> tuple[dict[str, DesiredAdapter], list[str]]:
    """The adapters the pool should serve, by name, and the routing targets without a source.

    ``base_models`` are the pool's servers' base models (never adapters); ``routing`` adds
    rewrite/InferenceModel resources watched elsewhere to those the spec came with.
    """
    out = {a.name: a for a in spec.adapters if a.applies_to(namespace, pool)}
    bases = set(base_models)
    undeclared: list[str] = []
    for name in _targets([*spec.routing, *routing], namespace, pool):
        if name in out or name in bases:
            continue
        if spec.default_source:
            out[name] = DesiredAdapter(
                name=name,
                source=spec.default_source.replace("{name}", name),
                replicas=spec.default_replicas,
                pool=pool,
                namespace=namespace,
                implied=True,
            )
        elif name not in undeclared:
            undeclared.append(name)
    return out, undeclared


SpecChanged = Callable[[AdapterSpec], None]


class FileAdapterSource:
    """The adapters file, polled (stat and read in a thread); a broken edit keeps the last spec."""

    def __init__(self, path: str, on_change: SpecChanged, *, poll_interval_s: float = 1.0) -> None:
        self.path = path
        self.on_change = on_change
        self.poll_interval_s = poll_interval_s
        self.synced = asyncio.Event()
        self.errors = 0
        self.last_error = ""
        self._stamp: tuple | None = None

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.poll_interval_s)

    async def check(self) -> None:
        try:
            st = await asyncio.to_thread(os.stat, self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            text = await asyncio.to_thread(_read, self.path)
            spec = load_text(text, self.path)
        except (OSError, AdaptersError) as exc:
            message = str(exc)
            if message != self.last_error:
                self.errors += 1
                log.error("adapters file rejected; keeping the previous spec", extra={"error": message})
            self.last_error = message
            return
        self.last_error = ""
        log.info("adapters file loaded", extra={"path": self.path, "adapters": len(spec.adapters)})
        self.on_change(spec)
        self.synced.set()


class ConfigMapAdapterSource:
    """One ConfigMap (key ``adapters.yaml``) through the list+watch the other sources use."""

    def __init__(
        self, api: Any, namespace: str, name: str, on_change: SpecChanged, *, key: str = CONFIGMAP_KEY
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.key = key
        self.on_change = on_change
        self.synced = asyncio.Event()
        self.errors = 0
        self.watcher: Any = None

    def _event(self, kind: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("name") != self.name:
            return
        where = f"configmap {self.namespace}/{self.name}"
        if kind == "DELETED":
            log.warning("adapters ConfigMap deleted; no adapters wanted", extra={"configmap": where})
            self.on_change(AdapterSpec())
            return
        text = (obj.get("data") or {}).get(self.key, "")
        try:
            spec = load_text(text, f"{where}[{self.key}]", self.namespace)
        except AdaptersError as exc:
            self.errors += 1
            log.error("adapters ConfigMap rejected; keeping the previous spec", extra={"error": str(exc)})
            return
        log.info("adapters ConfigMap loaded", extra={"configmap": where, "adapters": len(spec.adapters)})
        self.on_change(spec)

    async def run(self) -> None:
        from kubernetes_asyncio import client

        from shared import kube

        core = client.CoreV1Api(self.api)
        coll = kube.Collection(
            core.list_namespaced_config_map, (self.namespace,), f"configmaps/{self.namespace}"
        )
        self.watcher = kube.ListWatcher(
            self.api, coll, self._event, field_selector=f"metadata.name={self.name}"
        )
        task = asyncio.create_task(self.watcher.run())
        try:
            await self.watcher.synced.wait()
            self.synced.set()
            await task
        finally:
            task.cancel()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
