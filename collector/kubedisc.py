"""Kubernetes discovery: InferencePools in the watched namespaces x serving pods on this node.

Two kinds of list+watch (:class:`shared.kube.ListWatcher`), per watched namespace (or
cluster-wide when no namespace is given):

* InferencePools (``inference.networking.k8s.io/v1`` or, with ``--pool-api-version
  v1alpha2``, ``inference.networking.x-k8s.io/v1alpha2``), parsed by
  :func:`shared.crds.from_object`;
* Pods with the field selector ``spec.nodeName=<this node>``, so a collector only ever
  sees its own node's pods (the API server filters, the collector's cache stays small).

After every event the desired endpoint set is recomputed: for every pod that is serving
(:func:`shared.kube.pod_is_serving`: Running, Ready, has an IP, not terminating) and every
pool of the same namespace whose selector matches the pod's labels, one endpoint per
target port. The difference is applied at once, so a pod that turns unready, starts
terminating or is deleted gets its tombstone on that single watch event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from collector.accel import from_pod_metadata
from collector.kvevents import kv_addresses
from collector.targets import Key, Target
from shared import crds, kube

log = logging.getLogger(__name__)

POOL_VERSIONS = {"v1": kube.INFERENCE_POOL_V1, "v1alpha2": kube.INFERENCE_POOL_V1ALPHA2}


class KubeDiscovery:
    def __init__(
        self,
        apply,
        api,
        *,
        node: str,
        namespaces: list[str] | None = None,
        api_version: str = "v1",
        watch_timeout_s: int = 300,
    ) -> None:
        self.apply = apply
        self.api = api
        self.node = node
        self.namespaces = list(namespaces or [])
        self.group, self.version, self.plural = POOL_VERSIONS[api_version]
        self.watch_timeout_s = watch_timeout_s
        self.pools: dict[tuple[str, str], crds.InferencePool] = {}
        self.pool_watchers: list[kube.ListWatcher] = []
        self.pod_watchers: list[kube.ListWatcher] = []
        self.synced = asyncio.Event()
        self.current: dict[Key, Target] = {}
        self.invalid_pools: dict[tuple[str, str], str] = {}
        self._accel_warned: set[tuple[str, str]] = set()  # pods whose bad label was logged (bounded)

    async def run(self) -> None:
        scopes: list[str | None] = list(self.namespaces) or [None]
        self.pool_watchers, self.pod_watchers = [], []  # fresh ones if the collector restarts us
        for ns in scopes:
            self.pool_watchers.append(
                kube.ListWatcher(
                    self.api,
                    kube.custom(self.api, self.group, self.version, self.plural, ns),
                    self._on_pool,
                    watch_timeout_s=self.watch_timeout_s,
                )
            )
            self.pod_watchers.append(
                kube.ListWatcher(
                    self.api,
                    kube.pods(self.api, ns),
                    self._on_pod,
                    field_selector=f"spec.nodeName={self.node}",
                    watch_timeout_s=self.watch_timeout_s,
                )
            )
        watchers = [*self.pool_watchers, *self.pod_watchers]
        tasks = [asyncio.create_task(w.run(), name=f"watch {w.collection.description}") for w in watchers]
        try:
            await asyncio.gather(*(w.synced.wait() for w in watchers))
            self.synced.set()
            self._recompute({})
            log.info(
                "kubernetes discovery synced",
                extra={"pools": len(self.pools), "endpoints": len(self.current), "node": self.node},
            )
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- events ---------------------------------------------------------------------------
    def _on_pool(self, event: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        reason = "pool deleted" if event == kube.DELETED else "pool changed"
        if event == kube.DELETED:
            self.pools.pop(key, None)
            self.invalid_pools.pop(key, None)
        else:
            obj = dict(obj)
            obj.setdefault("apiVersion", f"{self.group}/{self.version}")
            obj.setdefault("kind", "InferencePool")
            try:
                pool = crds.from_object(obj, default_namespace=key[0] or "default")
            except crds.CRDValidationError as exc:
                if self.invalid_pools.get(key) != str(exc):
                    log.error("invalid InferencePool ignored", extra={"pool": key, "error": str(exc)})
                self.invalid_pools[key] = str(exc)
                self.pools.pop(key, None)
            else:
                self.invalid_pools.pop(key, None)
                if isinstance(pool, crds.InferencePool):
                    self.pools[key] = pool
        if self.synced.is_set():
            self._recompute({"pool": (key, reason)})

    def _on_pod(self, event: str, obj: dict[str, Any]) -> None:
        if not self.synced.is_set():
            return
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if event == kube.DELETED:
            reason = "pod deleted"
        elif meta.get("deletionTimestamp"):
            reason = "pod terminating"
        else:
            reason = "pod not serving"
        self._recompute({"pod": (key, reason)})

    # -- the desired set ------------------------------------------------------------------
    def desired(self) -> dict[Key, Target]:
        out: dict[Key, Target] = {}
        for w in self.pod_watchers:
            for (ns, name), pod in w.objects.items():
                if not kube.pod_is_serving(pod):
                    continue
                meta, status, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
                if spec.get("nodeName") and spec.get("nodeName") != self.node:
                    continue  # the API server filters by node; this guards a lax one
                labels = meta.get("labels") or {}
                ip = status.get("podIP")
                accel, cost, problems = from_pod_metadata(meta)
                if problems and (ns, name) not in self._accel_warned:
                    if len(self._accel_warned) >= 4096:
                        self._accel_warned.clear()
                    self._accel_warned.add((ns, name))
                    log.warning(
                        "ignoring a bad accelerator label",
                        extra={"pod": f"{ns}/{name}", "problems": problems},
                    )
                for pool in self.pools.values():
                    if pool.namespace != ns or not pool.selects(labels):
                        continue
                    for rank, port in enumerate(pool.target_ports):
                        kv_ev, kv_rp = kv_addresses(meta.get("annotations"), ip, rank)
                        t = Target(
                            ns, pool.name, name, ip, port, self.node,
                            kv_events=kv_ev, kv_replay=kv_rp, accelerator=accel, cost_per_hour=cost,
                        )  # fmt: skip
                        out[t.key] = t
        return out

    def _recompute(self, hint: dict[str, tuple[tuple[str, str], str]]) -> None:
        new = self.desired()
        reasons: dict[Key, str] = {}
        for key in self.current.keys() - new.keys():
            ns, pool, pod, _port = key
            if "pod" in hint and hint["pod"][0] == (ns, pod):
                reasons[key] = hint["pod"][1]
            elif "pool" in hint and hint["pool"][0] == (ns, pool):
                reasons[key] = hint["pool"][1]
            else:
                reasons[key] = "no longer selected"
        self.current = new
        self.apply(list(new.values()), reasons)
