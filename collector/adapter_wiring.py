"""Wire the adapter reconciler into a running :class:`~collector.service.Collector`.

Off unless ``--adapters-file`` or ``--adapters-configmap`` is given. Once NATS is up the
collector calls :func:`start`: the spec source and the reconciler run under the
collector's supervisor (restarted with backoff if they fail), the KV bucket is opened
(created if absent) with the same retry, and the reconciler sees the node's servers
through the scrapers' last results, never through their private state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from collector.adapters import AdapterReconciler, ReconcilerSettings, ServerView
from shared.adapters import ConfigMapAdapterSource, FileAdapterSource
from shared.kvstore import KvStore, open_bucket

if TYPE_CHECKING:
    from collector.service import Collector

log = logging.getLogger(__name__)


def configured(c: Collector) -> bool:
    return bool(c.config.adapters_file or c.config.adapters_configmap)


def servers_of(c: Collector) -> list[ServerView]:
    """The node's servers from the scrapers' last pages and /v1/models reads."""
    out = []
    for scraper in c.scrapers.values():
        t, st = scraper.target, scraper.state
        snap = st.snapshot
        loaded = scraper.loaded_models
        out.append(
            ServerView(
                namespace=t.namespace,
                pool=t.pool,
                server=f"{t.pod}:{t.port}",
                address=t.address,
                healthy=st.healthy is True and snap is not None,
                base_model=snap.model if snap is not None else "",
                served=frozenset(loaded) if loaded else None,
                served_at=scraper.models_read_at,
                running=frozenset(snap.lora.running) if snap is not None else frozenset(),
                waiting=frozenset(snap.lora.waiting) if snap is not None else frozenset(),
                max_lora=snap.lora.max_lora if snap is not None else 0,
                ts=snap.ts if snap is not None else 0.0,
            )
        )
    return out


def hide_in(c: Collector, namespace: str, pool: str, server: str, adapter: str, hidden: bool) -> None:
    """Hide (or show again) an adapter in a server's published ``served_models``."""
    pod, _, port = server.rpartition(":")
    scraper = c.scrapers.get((namespace, pool, pod, int(port)))
    if scraper is None:
        return
    if hidden:
        scraper.hidden_models.add(adapter)
    else:
        scraper.hidden_models.discard(adapter)
    scraper.served_models = [m for m in scraper.loaded_models if m not in scraper.hidden_models]


async def start(c: Collector) -> None:
    if not configured(c) or c.adapters is not None:
        return
    cfg = c.config
    assert c.session is not None
    settings = ReconcilerSettings(
        interval_s=cfg.adapter_sync_interval,
        slots=cfg.adapter_slots,
        holder_ttl_s=cfg.adapter_holder_ttl,
        drain_s=cfg.adapter_drain,
    )
    rec = AdapterReconciler(
        c.identity,
        _LazyKv(),
        lambda: servers_of(c),
        c.session,
        c.metrics.registry,
        settings,
        hide=lambda *a: hide_in(c, *a),
    )
    c.adapters = rec
    c.supervisor.spawn("collector-adapters", lambda: _run(c, rec), max_backoff=10.0)
    if cfg.adapters_file:
        source = FileAdapterSource(cfg.adapters_file, rec.set_spec, poll_interval_s=cfg.targets_poll_interval)
        c.supervisor.spawn("collector-adapter-spec", source.run, max_backoff=10.0)
    else:
        from shared import kube

        ns, _, name = (cfg.adapters_configmap or "").partition("/")
        api = c._kube_api or await kube.api_client(kubeconfig=cfg.kubeconfig, host=cfg.kube_api_server)
        c._kube_api = api  # closed by Collector.stop()
        cm = ConfigMapAdapterSource(api, ns, name, rec.set_spec)
        c.supervisor.spawn("collector-adapter-spec", cm.run, max_backoff=10.0)
        routing = RoutingWatch(api, cfg.namespaces, rec)
        for i, watcher in enumerate(routing.watchers):
            c.supervisor.spawn(f"collector-adapter-routing-{i}", watcher.run, max_backoff=10.0)


class RoutingWatch:
    """InferenceModelRewrite and InferenceModel (both groups) through list+watch: their targets
    are wanted adapters too (``shared.adapters.wanted``). A missing CRD only logs."""

    def __init__(self, api, namespaces: list[str], rec: AdapterReconciler) -> None:
        from shared import kube

        self.rec = rec
        colls = [
            kube.INFERENCE_MODEL_REWRITE_V1ALPHA2,
            kube.INFERENCE_MODEL_REWRITE_LLMD,
            kube.INFERENCE_MODEL_V1ALPHA2,
        ]
        self.watchers = [
            kube.ListWatcher(api, kube.custom(api, *coll, namespace=ns), self._changed)
            for coll in colls
            for ns in (namespaces or [None])
        ]

    def _changed(self, *_: object) -> None:
        from shared import crds

        out = []
        for w in self.watchers:
            for obj in w.objects.values():
                try:
                    res = crds.from_object(obj)
                except crds.CRDValidationError as exc:
                    log.warning("invalid routing resource ignored", extra={"error": str(exc)})
                    continue
                if res is not None:
                    out.append(res)
        self.rec.set_routing(tuple(out))


class _LazyKv:
    """Placeholder until the bucket is open (the reconciler does not run before that)."""

    async def keys(self) -> list[str]:  # pragma: no cover - never called
        raise RuntimeError("adapter bucket not open yet")


async def _run(c: Collector, rec: AdapterReconciler) -> None:
    kv: KvStore | None = c._adapter_kv
    backoff = 0.2
    while kv is None:
        try:
            kv = await open_bucket(
                c.bus.nc,  # type: ignore[union-attr]
                c.subjects.adapter_bucket,
                replicas=c.config.nats.stream_replicas,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "adapter bucket unavailable; retrying", extra={"error": repr(exc), "backoff_s": backoff}
            )
            await asyncio.sleep(backoff)
            backoff = min(10.0, backoff * 2)
    rec.kv = kv
    log.info("adapter reconciler started", extra={"identity": c.identity})
    await rec.run()
