"""List+watch over kubernetes-asyncio, for the collector, the picker and the autoscaler.

:class:`ListWatcher` keeps a local cache of one resource collection in sync with the API
server the way client-go's reflector does: list, then watch from the list's
``resourceVersion``, resume each watch from the last version seen, and relist when the
server answers 410 Gone (the version was compacted away). A relist is diffed against the
cache, so objects deleted while the watch was down still produce a ``DELETED`` event.
Consumers see plain ``dict`` objects (camelCase, as in YAML) whatever the API's model
classes, so the same parsing code serves files and the cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

Handler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Collection:
    """One watchable collection: a list function and its fixed arguments."""

    list_fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...] = ()
    description: str = ""


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class ListWatcher:
    """Mirror one collection into ``self.objects`` and call ``handler(event_type, obj)`` on changes."""

    def __init__(
        self,
        api: client.ApiClient,
        collection: Collection,
        handler: Handler,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout_s: int = 300,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.api = api
        self.collection = collection
        self.handler = handler
        self.selectors: dict[str, str] = {}
        if label_selector:
            self.selectors["label_selector"] = label_selector
        if field_selector:
            self.selectors["field_selector"] = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.relists = 0

    async def run(self) -> None:
        """List and watch forever; returns only when cancelled."""
        backoff = 0.2
        while True:
            try:
                await self._list()
                backoff = 0.2
                while True:
                    await self._watch_once()
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    log.info(
                        "watch expired (410 Gone); relisting",
                        extra={"collection": self.collection.description},
                    )
                    self.relists += 1
                    continue
                log.warning(
                    "kubernetes api error; relisting",
                    extra={
                        "collection": self.collection.description,
                        "status": exc.status,
                        "reason": exc.reason,
                    },
                )
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning(
                    "kubernetes connection failed; relisting",
                    extra={"collection": self.collection.description, "error": repr(exc)},
                )
            self.relists += 1
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    async def _list(self) -> None:
        resp = await self.collection.list_fn(*self.collection.args, **self.selectors)
        data = resp if isinstance(resp, dict) else self.api.sanitize_for_serialization(resp)
        self.resource_version = (data.get("metadata") or {}).get("resourceVersion")
        fresh = {object_key(o): o for o in data.get("items") or []}
        for key, obj in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                await self._emit(DELETED, obj)
        for key, obj in fresh.items():
            old = self.objects.get(key)
            self.objects[key] = obj
            if old is None:
                await self._emit(ADDED, obj)
            elif _version(old) != _version(obj):
                await self._emit(MODIFIED, obj)
        self.synced.set()

    async def _watch_once(self) -> None:
        w = watch.Watch()
        try:
            stream = w.stream(
                self.collection.list_fn,
                *self.collection.args,
                resource_version=self.resource_version,
                timeout_seconds=self.watch_timeout_s,
                allow_watch_bookmarks=True,
                **self.selectors,
            )
            async for event in stream:
                kind = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    obj = self.api.sanitize_for_serialization(obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind == "BOOKMARK":
                    continue
                key = object_key(obj)
                if kind == DELETED:
                    self.objects.pop(key, None)
                elif kind in (ADDED, MODIFIED):
                    kind = MODIFIED if key in self.objects else ADDED
                    self.objects[key] = obj
                else:
                    continue
                await self._emit(kind, obj)
        finally:
            await w.close()

    async def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            result = self.handler(kind, obj)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:  # a consumer bug must not stop the watch
            log.exception("watch handler failed", extra={"event": kind, "object": object_key(obj)})


def _version(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def pods(api: client.ApiClient, namespace: str | None = None) -> Collection:
    core = client.CoreV1Api(api)
    if namespace:
        return Collection(core.list_namespaced_pod, (namespace,), f"pods/{namespace}")
    return Collection(core.list_pod_for_all_namespaces, (), "pods")


def custom(
    api: client.ApiClient, group: str, version: str, plural: str, namespace: str | None = None
) -> Collection:
    objs = client.CustomObjectsApi(api)
    if namespace:
        return Collection(
            objs.list_namespaced_custom_object,
            (group, version, namespace, plural),
            f"{plural}.{group}/{namespace}",
        )
    return Collection(objs.list_cluster_custom_object, (group, version, plural), f"{plural}.{group}")


INFERENCE_POOL_V1 = ("inference.networking.k8s.io", "v1", "inferencepools")
INFERENCE_POOL_V1ALPHA2 = ("inference.networking.x-k8s.io", "v1alpha2", "inferencepools")
INFERENCE_MODEL_V1ALPHA2 = ("inference.networking.x-k8s.io", "v1alpha2", "inferencemodels")
# InferenceObjective and InferenceModelRewrite: the same kinds in GIE's group and in llm-d's.
INFERENCE_OBJECTIVE_V1ALPHA2 = ("inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives")
INFERENCE_OBJECTIVE_LLMD = ("llm-d.ai", "v1alpha2", "inferenceobjectives")
INFERENCE_MODEL_REWRITE_V1ALPHA2 = ("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites")
INFERENCE_MODEL_REWRITE_LLMD = ("llm-d.ai", "v1alpha2", "inferencemodelrewrites")
# Everything that decides a request's priority and target model, watched together.
MODEL_CONFIG_COLLECTIONS = (
    INFERENCE_OBJECTIVE_V1ALPHA2,
    INFERENCE_OBJECTIVE_LLMD,
    INFERENCE_MODEL_REWRITE_V1ALPHA2,
    INFERENCE_MODEL_REWRITE_LLMD,
    INFERENCE_MODEL_V1ALPHA2,
)


async def api_client(kubeconfig: str | None = None, host: str | None = None) -> client.ApiClient:
    """An ApiClient for in-cluster config, a kubeconfig file, or a plain ``host`` (tests)."""
    if host:
        cfg = client.Configuration(host=host)
        return client.ApiClient(cfg)
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            await config.load_kube_config()
    return client.ApiClient()


def pod_is_serving(pod: dict[str, Any]) -> bool:
    """A pod counts as an endpoint only while Ready, running, with an IP, and not terminating."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
