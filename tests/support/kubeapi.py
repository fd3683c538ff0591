"""A small local HTTP server that speaks the Kubernetes list/watch protocol.

No API server can run here, so the code that talks to Kubernetes through
kubernetes-asyncio is tested against this one. It serves pods and any custom resource
collection, with ``resourceVersion``, ``watch=true`` streaming (one JSON event per
line), ``timeoutSeconds``, equality ``labelSelector`` and ``fieldSelector``, bookmarks,
and a 410 Gone ``ERROR`` event for a version older than the compacted history, the way
etcd compaction makes a real server answer.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

Key = tuple[str, str, str]  # (api path prefix, plural, "") identifies a collection


def _coll_of(obj: dict[str, Any]) -> tuple[str, str]:
    api_version, kind = obj["apiVersion"], obj["kind"]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = kind.lower() + ("es" if kind.lower().endswith("s") else "s")
    return prefix, plural


def _get_path(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _matches(obj: dict[str, Any], label_selector: str | None, field_selector: str | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (label_selector or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip()) != v.strip().lstrip("="):
                return False
        elif term.strip() not in labels:
            return False
    for term in filter(None, (field_selector or "").split(",")):
        k, v = term.split("=", 1)
        if str(_get_path(obj, k.strip().lstrip("="))) != v.strip().lstrip("="):
            return False
    return True


class FakeKubeAPI:
    """In-memory objects plus an event history, served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self.history: list[tuple[int, tuple[str, str], str, dict[str, Any]]] = []
        self.compacted_rv = 0  # watches from a version below this get 410
        self._changed = asyncio.Condition()
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls ---------------------------------------------------------------
    async def upsert(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        coll = _coll_of(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        existing = self.objects.setdefault(coll, {})
        kind = "MODIFIED" if key in existing else "ADDED"
        existing[key] = obj
        await self._record(coll, kind, obj)
        return obj

    async def delete(
        self, obj_or_kind: dict[str, Any], namespace: str | None = None, name: str | None = None
    ) -> None:
        coll = _coll_of(obj_or_kind)
        meta = obj_or_kind.get("metadata") or {}
        key = (namespace or meta.get("namespace", "default"), name or meta["name"])
        obj = self.objects.get(coll, {}).pop(key, None)
        if obj is None:
            return
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._record(coll, "DELETED", obj)

    def compact(self) -> None:
        """Forget history: a watch resuming from an older version now gets 410 Gone."""
        self.compacted_rv = self.rv + 1
        self.history.clear()

    async def drop_watches(self) -> None:
        """Close every open watch stream, as an API server restart would."""
        for task in list(self._watch_tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _record(self, coll: tuple[str, str], kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, coll, kind, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()

    # -- HTTP --------------------------------------------------------------------------
    async def start(self) -> FakeKubeAPI:
        app = web.Application()
        app.router.add_get("/api/v1/{plural}", self._handle)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}", self._handle)
        app.router.add_get("/apis/{group}/{version}/{plural}", self._handle)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        prefix = "/api/v1" if "group" not in m else f"/apis/{m['group']}/{m['version']}"
        coll = (prefix, m["plural"])
        ns = m.get("ns")
        q = request.query
        self.requests.append(str(request.rel_url))
        if q.get("watch") in ("true", "1", "True"):
            task = asyncio.current_task()
            assert task is not None
            self._watch_tasks.add(task)
            try:
                return await self._watch(request, coll, ns)
            except asyncio.CancelledError:
                raise
            finally:
                self._watch_tasks.discard(task)
        items = [
            o
            for (ons, _), o in sorted(self.objects.get(coll, {}).items())
            if (ns is None or ons == ns) and _matches(o, q.get("labelSelector"), q.get("fieldSelector"))
        ]
        kind = (items[0]["kind"] if items else m["plural"][:-1].capitalize()) + "List"
        return web.json_response(
            {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}, "items": items}
        )

    async def _watch(self, request: web.Request, coll: tuple[str, str], ns: str | None) -> web.StreamResponse:
        q = request.query
        since = int(q.get("resourceVersion") or self.rv)
        timeout = float(q.get("timeoutSeconds") or 300)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since < self.compacted_rv - 1:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": f"too old resource version: {since} ({self.compacted_rv})",
                "reason": "Expired",
                "code": 410,
            }
            await resp.write((json.dumps({"type": "ERROR", "object": status}) + "\n").encode())
            return resp
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = since
        while loop.time() < deadline:
            for rv, c, kind, obj in self._events_after(sent):
                sent = rv
                if c != coll:
                    continue
                if ns is not None and obj["metadata"].get("namespace") != ns:
                    continue
                if not _matches(obj, q.get("labelSelector"), q.get("fieldSelector")):
                    continue
                await resp.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=max(0.01, deadline - loop.time()))
                except TimeoutError:
                    break
        return resp

    def _events_after(self, rv: int) -> Iterable[tuple[int, tuple[str, str], str, dict[str, Any]]]:
        return [e for e in self.history if e[0] > rv]


def pod(
    name: str,
    ip: str,
    *,
    namespace: str = "default",
    node: str = "node-a",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    terminating: bool = False,
) -> dict[str, Any]:
    """A minimal Pod object as the API server returns it."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {"app": "vllm"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
