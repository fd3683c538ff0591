import asyncio

import pytest

from shared import kube
from tests.support.kubeapi import pod
from tests.support.waiting import wait_until

POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "ml"},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
}


@pytest.fixture
async def client(kube_api):
    api = await kube.api_client(host=kube_api.url)
    yield api
    await api.close()


async def test_pods_list_then_watch_with_field_selector(kube_api, client):
    await kube_api.upsert(pod("a", "10.0.0.1", node="node-a"))
    await kube_api.upsert(pod("other", "10.0.0.9", node="node-b"))
    events = []
    watcher = kube.ListWatcher(
        client,
        kube.pods(client),
        lambda k, o: events.append((k, o["metadata"]["name"])),
        field_selector="spec.nodeName=node-a",
        watch_timeout_s=2,
    )
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.synced.wait(), 5)
    assert events == [("ADDED", "a")]
    await kube_api.upsert(pod("b", "10.0.0.2", node="node-a"))
    await kube_api.upsert(pod("b", "10.0.0.2", node="node-a", ready=False))
    await kube_api.upsert(pod("c", "10.0.0.3", node="node-b"))
    await kube_api.delete(pod("a", "10.0.0.1"))
    await wait_until(lambda: len(events) == 4)
    assert events[1:] == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]
    assert set(watcher.objects) == {("default", "b")}
    assert not kube.pod_is_serving(watcher.objects[("default", "b")])
    task.cancel()


async def test_watch_resumes_after_timeout_without_duplicates(kube_api, client):
    events = []
    watcher = kube.ListWatcher(
        client,
        kube.custom(client, *kube.INFERENCE_POOL_V1, namespace="ml"),
        lambda k, o: events.append(k),
        watch_timeout_s=1,
    )
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.synced.wait(), 5)
    await kube_api.upsert(POOL)
    await wait_until(lambda: events == ["ADDED"])
    await asyncio.sleep(1.5)  # the server ends the watch; the watcher resumes from its version
    await kube_api.upsert({**POOL, "spec": {**POOL["spec"], "targetPorts": [{"number": 9000}]}})
    await wait_until(lambda: events == ["ADDED", "MODIFIED"])
    assert watcher.relists == 0
    assert watcher.objects[("ml", "pool")]["spec"]["targetPorts"] == [{"number": 9000}]
    task.cancel()


async def test_410_gone_relists_and_reports_missed_deletes(kube_api, client):
    await kube_api.upsert(pod("a", "10.0.0.1"))
    await kube_api.upsert(pod("b", "10.0.0.2"))
    events = []
    watcher = kube.ListWatcher(
        client,
        kube.pods(client, "default"),
        lambda k, o: events.append((k, o["metadata"]["name"])),
        watch_timeout_s=60,
    )
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.synced.wait(), 5)
    await wait_until(lambda: len(events) == 2)
    # The watch drops; meanwhile "a" is deleted and "c" added, and history is compacted.
    await kube_api.drop_watches()
    await kube_api.delete(pod("a", "10.0.0.1"))
    await kube_api.upsert(pod("c", "10.0.0.3"))
    kube_api.compact()
    await wait_until(lambda: ("DELETED", "a") in events and ("ADDED", "c") in events)
    assert watcher.relists >= 1
    assert set(watcher.objects) == {("default", "b"), ("default", "c")}
    task.cancel()


async def test_handler_errors_do_not_stop_the_watch(kube_api, client):
    seen = []

    def handler(kind, obj):
        seen.append(obj["metadata"]["name"])
        raise RuntimeError("consumer bug")

    watcher = kube.ListWatcher(client, kube.pods(client), handler, watch_timeout_s=5)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.synced.wait(), 5)
    await kube_api.upsert(pod("x", "10.0.0.1"))
    await kube_api.upsert(pod("y", "10.0.0.2"))
    await wait_until(lambda: seen == ["x", "y"])
    task.cancel()
