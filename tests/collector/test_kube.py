"""Kubernetes discovery against the local list/watch API server (tests/support/kubeapi.py).

Pods get loopback IPs (127.0.0.x) where fake model servers listen on the pool's target
port, so discovery, scraping and publishing are exercised together.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared import schemas
from shared.natsd import free_port
from tests.support.fakepod import FakePod
from tests.support.kubeapi import pod
from tests.support.waiting import wait_until

NODE = "node-a"


def pool_v1(name="pool", namespace="ml", ports=(8000,), labels=None):
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels or {"app": "vllm"}},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        },
    }


def pool_v1alpha2(name="pool", namespace="ml", port=8000, labels=None):
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": labels or {"app": "vllm"},
            "targetPortNumber": port,
            "extensionRef": {"name": "epp"},
        },
    }


@contextlib.asynccontextmanager
async def servers(ips, ports):
    """Fake model servers on every ip x port."""
    started = []
    try:
        for ip in ips:
            for port in ports:
                started.append(await FakePod(f"{ip}:{port}", port, host=ip).start())
        yield started
    finally:
        for s in started:
            await s.stop()


def endpoint_pods(c) -> set[tuple[str, str, str, int]]:
    return set(c.scrapers)


async def test_pools_and_pods_on_this_node(kube_api, make_collector, subscriber):
    p1, p2 = free_port("127.0.0.2"), free_port("127.0.0.2")
    async with servers(["127.0.0.2", "127.0.0.3", "127.0.0.4"], [p1, p2]):
        await kube_api.upsert(pool_v1(ports=(p1, p2)))
        await kube_api.upsert(pool_v1(name="other-ns-pool", namespace="elsewhere", ports=(p1,)))
        await kube_api.upsert(pod("ready-a", "127.0.0.2", namespace="ml", node=NODE))
        await kube_api.upsert(pod("unready", "127.0.0.5", namespace="ml", node=NODE, ready=False))
        await kube_api.upsert(pod("terminating", "127.0.0.6", namespace="ml", node=NODE, terminating=True))
        await kube_api.upsert(pod("pending", "127.0.0.7", namespace="ml", node=NODE, phase="Pending"))
        await kube_api.upsert(pod("other-app", "127.0.0.8", namespace="ml", node=NODE, labels={"app": "x"}))
        await kube_api.upsert(pod("other-node", "127.0.0.3", namespace="ml", node="node-b"))
        await kube_api.upsert(pod("elsewhere", "127.0.0.4", namespace="elsewhere", node=NODE))

        c = await make_collector(kube_api_server=kube_api.url, namespaces=["ml"])
        await c.wait_ready()
        assert endpoint_pods(c) == {("ml", "pool", "ready-a", p1), ("ml", "pool", "ready-a", p2)}
        # the pods were listed with the node field selector (the API server filters)
        assert any(
            "fieldSelector=spec.nodeName%3Dnode-a" in r or "fieldSelector=spec.nodeName=node-a" in r
            for r in kube_api.requests
        )
        both = {f"127.0.0.2:{p1}", f"127.0.0.2:{p2}"}
        await wait_until(
            lambda: {m.address for m in subscriber.snapshots("ready-a")} == both, what="both ports published"
        )
        assert all(m.healthy and m.node == NODE for m in subscriber.snapshots("ready-a"))

        # a new pod on this node becomes an endpoint; one turning ready does too
        await kube_api.upsert(pod("ready-b", "127.0.0.3", namespace="ml", node=NODE))
        await wait_until(lambda: ("ml", "pool", "ready-b", p1) in c.scrapers, what="new pod")
        await wait_until(lambda: subscriber.last("ready-b") and subscriber.last("ready-b").healthy)

        # unready: tombstoned on that one event
        await kube_api.upsert(pod("ready-b", "127.0.0.3", namespace="ml", node=NODE, ready=False))
        await wait_until(lambda: isinstance(subscriber.last("ready-b"), schemas.Tombstone), what="unready")
        assert subscriber.last("ready-b").reason == "pod not serving"
        assert ("ml", "pool", "ready-b", p1) not in c.scrapers

        # terminating, then deleted
        await kube_api.upsert(pod("ready-a", "127.0.0.2", namespace="ml", node=NODE, terminating=True))
        await wait_until(lambda: not c.scrapers, what="terminating pod removed")
        await wait_until(
            lambda: len([m for m in subscriber.by_pod["ready-a"] if isinstance(m, schemas.Tombstone)]) == 2
        )
        tombs = [m for m in subscriber.by_pod["ready-a"] if isinstance(m, schemas.Tombstone)]
        assert {t.reason for t in tombs} == {"pod terminating"}
        assert {t.address for t in tombs} == {f"127.0.0.2:{p1}", f"127.0.0.2:{p2}"}


async def test_pod_deleted_and_pool_changes(kube_api, make_collector, subscriber):
    p1, p2 = free_port("127.0.0.2"), free_port("127.0.0.2")
    async with servers(["127.0.0.2", "127.0.0.3"], [p1, p2]):
        await kube_api.upsert(pool_v1(ports=(p1,)))
        await kube_api.upsert(pod("a", "127.0.0.2", namespace="ml", node=NODE))
        await kube_api.upsert(pod("b", "127.0.0.3", namespace="ml", node=NODE))
        c = await make_collector(kube_api_server=kube_api.url)  # all namespaces
        await c.wait_ready()
        assert endpoint_pods(c) == {("ml", "pool", "a", p1), ("ml", "pool", "b", p1)}
        await wait_until(lambda: subscriber.last("a") and subscriber.last("b"))

        await kube_api.delete(pod("a", "127.0.0.2", namespace="ml"))
        await wait_until(lambda: isinstance(subscriber.last("a"), schemas.Tombstone), what="deleted pod")
        assert subscriber.last("a").reason == "pod deleted"

        # the pool gains a port: a second endpoint per pod; loses the first: tombstone
        await kube_api.upsert(pool_v1(ports=(p2,)))
        await wait_until(lambda: endpoint_pods(c) == {("ml", "pool", "b", p2)}, what="port change")
        await wait_until(
            lambda: any(
                isinstance(m, schemas.Tombstone) and m.address.endswith(f":{p1}")
                for m in subscriber.by_pod["b"]
            )
        )
        tomb = next(m for m in subscriber.by_pod["b"] if isinstance(m, schemas.Tombstone))
        assert tomb.reason == "pool changed"
        await wait_until(lambda: subscriber.last("b").address == f"127.0.0.3:{p2}")

        # a pool selector that no longer matches, then the pool deleted
        await kube_api.delete(pool_v1())
        await wait_until(lambda: not c.scrapers, what="pool deleted")
        await wait_until(lambda: isinstance(subscriber.last("b"), schemas.Tombstone))
        assert subscriber.last("b").reason == "pool deleted"


async def test_v1alpha2_pools(kube_api, make_collector):
    port = free_port("127.0.0.2")
    async with servers(["127.0.0.2"], [port]):
        await kube_api.upsert(pool_v1alpha2(port=port))
        await kube_api.upsert(pool_v1(name="v1-pool", ports=(port,)))  # ignored with v1alpha2
        await kube_api.upsert(pod("a", "127.0.0.2", namespace="ml", node=NODE))
        c = await make_collector(kube_api_server=kube_api.url, pool_api_version="v1alpha2", namespaces=["ml"])
        await c.wait_ready()
        assert endpoint_pods(c) == {("ml", "pool", "a", port)}
        assert any(
            "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/ml/inferencepools" in r
            for r in kube_api.requests
        )


async def test_invalid_pool_is_ignored_and_the_rest_works(kube_api, make_collector, caplog):
    port = free_port("127.0.0.2")
    await kube_api.upsert(pool_v1(ports=(port,)))
    bad = pool_v1(name="bad")
    bad["spec"]["targetPorts"] = []
    await kube_api.upsert(bad)
    await kube_api.upsert(pod("a", "127.0.0.2", namespace="ml", node=NODE))
    c = await make_collector(kube_api_server=kube_api.url)
    await c.wait_ready()
    assert endpoint_pods(c) == {("ml", "pool", "a", port)}
    assert ("ml", "bad") in c.discovery.invalid_pools
    assert "spec.targetPorts" in c.discovery.invalid_pools[("ml", "bad")]


async def test_watch_relist_after_compaction_tombstones_missed_deletes(kube_api, make_collector, subscriber):
    port = free_port("127.0.0.2")
    async with servers(["127.0.0.2", "127.0.0.3"], [port]):
        await kube_api.upsert(pool_v1(ports=(port,)))
        await kube_api.upsert(pod("a", "127.0.0.2", namespace="ml", node=NODE))
        c = await make_collector(kube_api_server=kube_api.url)
        await c.wait_ready()
        await wait_until(lambda: subscriber.last("a"))
        await kube_api.drop_watches()
        await kube_api.delete(pod("a", "127.0.0.2", namespace="ml"))
        await kube_api.upsert(pod("b", "127.0.0.3", namespace="ml", node=NODE))
        kube_api.compact()
        await wait_until(
            lambda: endpoint_pods(c) == {("ml", "pool", "b", port)}, what="relist", deadline_s=15
        )
        await wait_until(lambda: isinstance(subscriber.last("a"), schemas.Tombstone))


def test_kubernetes_discovery_needs_a_node_name():
    from collector.service import Collector, CollectorConfig

    with pytest.raises(ValueError, match="node-name"):
        Collector(CollectorConfig(node_name="", kube_api_server="http://127.0.0.1:1"))


async def test_not_ready_until_discovery_synced(make_collector):
    # an API server that does not answer: the collector runs but is not ready
    c = await make_collector(kube_api_server=f"http://127.0.0.1:{free_port()}")
    await asyncio.sleep(0.5)
    assert "discovery" in c.health.failing()
