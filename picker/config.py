"""The picker's settings and where its InferenceModels come from (files or Kubernetes).

A config source keeps a :class:`~picker.models.ModelTable` current and says when it has
loaded once (a readiness condition). Three sources:

* none: no InferenceModels at all (every model follows the unknown-model policy);
* YAML files (``--config-files``, no Kubernetes): polled for changes; a file that does
  not parse or validate keeps the previous configuration and logs the error;
* Kubernetes (``--kube``/``--kubeconfig``): list+watch of InferencePool (v1 and
  v1alpha2) and InferenceModel in the pool's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import crds
from shared.natsconn import NatsOptions

from .models import ModelTable

__all__ = ["FileSource", "KubeSource", "PickerConfig", "StaticSource"]

log = logging.getLogger(__name__)


@dataclass
class PickerConfig:
    """Everything a :class:`~picker.server.Picker` needs; the CLI fills it from flags."""

    pool_name: str = "default-pool"
    pool_namespace: str = "default"
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 9002  # 0 = any free port
    grpc_health_port: int = 9003
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    profile: str = "default"
    scheduler_config: str | None = None  # path to a scheduler YAML
    config_files: list[str] = field(default_factory=list)
    kube: bool = False
    kubeconfig: str | None = None
    kube_host: str | None = None  # a plain API URL (tests)
    unknown_model_policy: str = "sheddable"
    max_body_bytes: int = 8 * 1024 * 1024
    replica_name: str = field(default_factory=socket.gethostname)
    refresh_metrics_interval: float = 0.05
    metrics_staleness_threshold: float = 2.0
    nats: NatsOptions | None = None  # None: no NATS, the view is fed in-process
    secure_serving: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    grace_period: float = 10.0
    config_poll_interval: float = 1.0
    default_body_mode: str = "FULL_DUPLEX_STREAMED"
    # The whole ordered list in x-gateway-destination-endpoint (default: the choice only;
    # the list always goes in the envoy.lb dynamic metadata).
    destination_header_list: bool = False
    # Conformance test hooks: honour test-epp-endpoint-selection and echo the served
    # endpoint as x-conformance-test-served-endpoint. Off: any client could pin a pod.
    conformance_test_hooks: bool = False
    # picker.sharing.SharingSettings: peer sharing over the same NATS connection (None: off)
    sharing: Any = None


ModelsChanged = Callable[[ModelTable], None]


class StaticSource:
    """No InferenceModels: loaded at once."""

    def __init__(
        self, cfg: PickerConfig, on_change: ModelsChanged, models: list[crds.InferenceModel] | None = None
    ):
        self.loaded = True
        on_change(ModelTable(models or [], cfg.pool_name, cfg.unknown_model_policy))

    async def run(self) -> None:
        return None


class FileSource:
    """YAML files polled for changes; a broken edit keeps the last good configuration."""

    def __init__(self, cfg: PickerConfig, on_change: ModelsChanged) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.loaded = False
        self.errors = 0
        self.reloads = 0
        self._stamp: tuple | None = None
        self.last_error = ""

    def _files(self) -> list[Path]:
        out: list[Path] = []
        for p in self.cfg.config_files:
            path = Path(p)
            if path.is_dir():
                out.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
            else:
                out.append(path)
        return out

    def _current_stamp(self) -> tuple:
        stamp = []
        for f in self._files():
            try:
                st = os.stat(f)
                stamp.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((str(f), None, None))
        return tuple(stamp)

    def _read(self) -> tuple[tuple, list[crds.Resource] | None, Exception | None] | None:
        """Blocking part (stat + read + validate); ``None`` when nothing changed."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return None
        try:
            return stamp, crds.load_files(self.cfg.config_files, self.cfg.pool_namespace), None
        except (OSError, ValueError) as exc:  # CRDValidationError is a ValueError
            return stamp, None, exc

    def _apply(self, result: tuple[tuple, list[crds.Resource] | None, Exception | None] | None) -> bool:
        if result is None:
            return False
        stamp, resources, exc = result
        self._stamp = stamp
        if resources is None:
            self.errors += 1
            self.last_error = str(exc)
            log.error("config files rejected; keeping the previous configuration", extra={"error": str(exc)})
            return False
        pools = [p for p in crds.pools_of(resources) if p.name == self.cfg.pool_name]
        if not pools:
            log.warning("no InferencePool named %s in the config files", self.cfg.pool_name)
        models = [m for m in crds.models_of(resources) if m.namespace == self.cfg.pool_namespace]
        self.on_change(ModelTable(models, self.cfg.pool_name, self.cfg.unknown_model_policy))
        self.loaded = True
        self.reloads += 1
        log.info("config loaded", extra={"models": len(models), "files": len(stamp)})
        return True

    def load_once(self) -> bool:
        """Reload when the files changed (blocking; the first load at start-up)."""
        return self._apply(self._read())

    async def run(self) -> None:
        while True:
            # Stat and read are blocking I/O: keep them off the event loop.
            self._apply(await asyncio.to_thread(self._read))
            await asyncio.sleep(self.cfg.config_poll_interval)


class KubeSource:
    """InferencePool (v1, v1alpha2) and InferenceModel list+watch in the pool namespace."""

    def __init__(self, cfg: PickerConfig, on_change: ModelsChanged) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.watchers: list[Any] = []
        self.models_watcher: Any = None
        self.pool: crds.InferencePool | None = None
        self.errors = 0

    @property
    def loaded(self) -> bool:
        mw = self.models_watcher
        if mw is None:
            return False
        if mw.synced.is_set():
            return True
        # No InferenceModel CRD (a v1-only install): the list keeps failing; once a pool
        # list works, go ready without models (every model follows the unknown policy).
        return mw.relists >= 2 and any(w.synced.is_set() for w in self.watchers[1:])

    def _rebuild(self, *_: Any) -> None:
        models = []
        for obj in self.models_watcher.objects.values():
            try:
                res = crds.from_object(obj, self.cfg.pool_namespace)
            except crds.CRDValidationError as exc:
                self.errors += 1
                log.error("invalid InferenceModel ignored", extra={"error": str(exc)})
                continue
            if isinstance(res, crds.InferenceModel):
                models.append(res)
        self.on_change(ModelTable(models, self.cfg.pool_name, self.cfg.unknown_model_policy))

    def _pool_event(self, kind: str, obj: dict) -> None:
        if (obj.get("metadata") or {}).get("name") != self.cfg.pool_name:
            return
        if kind == "DELETED":
            self.pool = None
            return
        try:
            res = crds.from_object(obj, self.cfg.pool_namespace)
        except crds.CRDValidationError as exc:
            log.error("invalid InferencePool", extra={"error": str(exc)})
            return
        if isinstance(res, crds.InferencePool):
            self.pool = res

    async def run(self) -> None:
        from shared import kube

        api = await kube.api_client(self.cfg.kubeconfig, self.cfg.kube_host)
        ns = self.cfg.pool_namespace
        self.models_watcher = kube.ListWatcher(
            api, kube.custom(api, *kube.INFERENCE_MODEL_V1ALPHA2, namespace=ns), self._rebuild
        )
        self.watchers = [
            self.models_watcher,
            kube.ListWatcher(api, kube.custom(api, *kube.INFERENCE_POOL_V1, namespace=ns), self._pool_event),
            kube.ListWatcher(
                api, kube.custom(api, *kube.INFERENCE_POOL_V1ALPHA2, namespace=ns), self._pool_event
            ),
        ]
        tasks = [asyncio.create_task(w.run(), name=f"watch-{i}") for i, w in enumerate(self.watchers)]
        try:
            await self.models_watcher.synced.wait()
            self._rebuild()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api.close()
