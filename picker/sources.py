"""Where the picker's model configuration comes from: nothing, YAML files or Kubernetes.

A config source keeps a :class:`~picker.models.ModelTable` current and says when it has
loaded once (a readiness condition). The model configuration is InferenceObjective and
InferenceModelRewrite (``inference.networking.x-k8s.io/v1alpha2`` and ``llm-d.ai/v1alpha2``)
plus the deprecated InferenceModel (v1alpha2). Three sources:

* none: no configuration at all (every model follows the unknown-model policy);
* YAML files (``--config-files``, no Kubernetes): polled for changes; a file that does
  not parse or validate keeps the previous configuration and logs the error;
* Kubernetes (``--kube``/``--kubeconfig``): list+watch of InferencePool (v1 and
  v1alpha2) and of the five model-configuration collections in the pool's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import crds

from .config import PickerConfig
from .models import ModelTable

__all__ = ["FileSource", "KubeSource", "ModelsChanged", "StaticSource"]

log = logging.getLogger(__name__)


ModelsChanged = Callable[[ModelTable], None]


class StaticSource:
    """No configuration files or cluster: loaded at once."""

    def __init__(self, cfg: PickerConfig, on_change: ModelsChanged, resources: list[Any] | None = None):
        self.loaded = True
        on_change(
            ModelTable(resources or [], cfg.pool_name, cfg.unknown_model_policy, namespace=cfg.pool_namespace)
        )

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
        return crds.yaml_files(self.cfg.config_files)

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
        table = ModelTable(
            resources, self.cfg.pool_name, self.cfg.unknown_model_policy, namespace=self.cfg.pool_namespace
        )
        self.on_change(table)
        self.loaded = True
        self.reloads += 1
        log.info(
            "config loaded",
            extra={
                "models": len(table.client_names()),
                "objectives": len(table.objectives),
                "files": len(stamp),
            },
        )
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
    """List+watch, in the pool namespace, of InferencePool (v1, v1alpha2) and the model config.

    The model configuration is InferenceObjective and InferenceModelRewrite in both API groups
    plus InferenceModel v1alpha2 (``kube.MODEL_CONFIG_COLLECTIONS``). A cluster need not have
    every CRD: a collection whose list keeps failing (no such CRD) stops blocking readiness
    after two attempts, and every model then follows what the other kinds say.
    """

    def __init__(self, cfg: PickerConfig, on_change: ModelsChanged) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.watchers: list[Any] = []
        self.config_watchers: list[Any] = []
        self.pool: crds.InferencePool | None = None
        self.errors = 0

    @property
    def loaded(self) -> bool:
        if not self.config_watchers:
            return False
        settled = all(w.synced.is_set() or w.relists >= 2 for w in self.config_watchers)
        return settled and any(w.synced.is_set() for w in self.watchers)

    def _rebuild(self, *_: Any) -> None:
        resources: list[Any] = []
        for watcher in self.config_watchers:
            for obj in watcher.objects.values():
                try:
                    res = crds.from_object(obj, self.cfg.pool_namespace)
                except crds.CRDValidationError as exc:
                    self.errors += 1
                    log.error("invalid %s ignored", exc.kind, extra={"error": str(exc)})
                    continue
                if res is not None:
                    resources.append(res)
        labels = self.pool.labels if self.pool is not None else None
        self.on_change(
            ModelTable(
                resources,
                self.cfg.pool_name,
                self.cfg.unknown_model_policy,
                namespace=self.cfg.pool_namespace,
                pool_labels=labels,
            )
        )

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
            labels_changed = self.pool is None or self.pool.labels != res.labels
            self.pool = res
            if labels_changed and self.config_watchers:  # objectives may select the pool by label
                self._rebuild()

    async def run(self) -> None:
        from shared import kube

        api = await kube.api_client(self.cfg.kubeconfig, self.cfg.kube_host)
        ns = self.cfg.pool_namespace
        self.config_watchers = [
            kube.ListWatcher(api, kube.custom(api, *coll, namespace=ns), self._rebuild)
            for coll in kube.MODEL_CONFIG_COLLECTIONS
        ]
        self.watchers = [
            *self.config_watchers,
            kube.ListWatcher(api, kube.custom(api, *kube.INFERENCE_POOL_V1, namespace=ns), self._pool_event),
            kube.ListWatcher(
                api, kube.custom(api, *kube.INFERENCE_POOL_V1ALPHA2, namespace=ns), self._pool_event
            ),
        ]
        tasks = [asyncio.create_task(w.run(), name=f"watch-{i}") for i, w in enumerate(self.watchers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api.close()
