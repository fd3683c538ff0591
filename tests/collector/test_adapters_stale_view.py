"""A release never trusts a /v1/models list older than the load it would judge (no I/O but the KV dict)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from collector import adapter_place as place
from collector.adapters import AdapterReconciler, ReconcilerSettings, ServerView
from shared.adapters import AdapterSpec
from shared.kvstore import MemoryKv

BASE = "meta-llama/Llama-2-7b-hf"
SERVER = "p0:8000"


def view(served: set[str] | None, served_at: float) -> ServerView:
    return ServerView(
        namespace="default", pool="llama", server=SERVER, address="127.0.0.1:1", healthy=True,
        base_model=BASE, served=None if served is None else frozenset(served), served_at=served_at,
        max_lora=4, ts=time.time(),
    )  # fmt: skip


async def test_an_adapter_missing_from_a_list_older_than_its_load_is_not_taken_as_gone() -> None:
    kv = MemoryKv()
    key = place.record_key("default", "llama", "a")
    now = time.time()
    holder = place.Holder(collector="me", address="127.0.0.1:1", claimed=now, seen=now, state=place.RELEASING)
    await kv.create(key, place.encode(place.Record(replicas=0, holders={SERVER: holder})))
    servers: list[ServerView] = []
    hidden: list[tuple] = []
    rec = AdapterReconciler(
        "me", kv, lambda: servers, session=None, registry=CollectorRegistry(),  # type: ignore[arg-type]
        settings=ReconcilerSettings(drain_s=0.0), hide=lambda *a: hidden.append(a),
    )  # fmt: skip
    rec.set_spec(AdapterSpec())  # "a" is no longer wanted
    loaded = time.monotonic()
    rec._acted_at[("default", "llama", SERVER, "a")] = loaded  # our load of "a" just returned

    async def settle() -> None:
        await rec.pass_once()
        await asyncio.gather(*rec._ops.values())

    # a list asked for before the load returned, and no list at all: neither proves "a" gone
    for served, at in (({BASE}, loaded - 0.05), (None, 0.0)):
        servers[:] = [view(served, at)]
        await settle()
        assert SERVER in place.decode(kv.data[key].value).holders, "holder dropped on a stale view"
    # a list read after the load that shows "a": hidden, then (idle, fresh metrics) it would be unloaded
    servers[:] = [view({BASE, "a"}, loaded + 0.01)]
    await settle()
    assert hidden == [("default", "llama", SERVER, "a", True)]
    # a list read after the load that lacks "a": it is gone (unloaded by someone else), drop the holder
    servers[:] = [view({BASE}, loaded + 0.02)]
    await settle()
    assert SERVER not in place.decode(kv.data[key].value).holders
    assert hidden[-1] == ("default", "llama", SERVER, "a", False)
    await rec.pass_once()
    assert key not in kv.data, "the finished record is deleted"
