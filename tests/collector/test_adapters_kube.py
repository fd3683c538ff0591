"""The desired adapters from a ConfigMap and the routing resources, through the (fake) Kubernetes API."""

from __future__ import annotations

from collector.service import Collector, CollectorConfig
from shared.bus import MemoryBus
from shared.kvstore import MemoryKv
from shared.subjects import Subjects
from sim.server import SimCluster
from tests.collector.conftest import targets_of
from tests.support.waiting import wait_until


def configmap(text: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "adapters", "namespace": "default"},
        "data": {"adapters.yaml": text},
    }


REWRITE = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModelRewrite",
    "metadata": {"name": "chat", "namespace": "default"},
    "spec": {
        "poolRef": {"name": "llama"},
        "rules": [
            {
                "matches": [{"model": {"type": "Exact", "value": "chat"}}],
                "targets": [
                    {"modelRewrite": "chat-v1", "weight": 9},
                    {"modelRewrite": "chat-v2", "weight": 1},
                ],
            }
        ],
    },
}


async def test_configmap_and_rewrite_targets_drive_the_loads(kube_api) -> None:
    await kube_api.upsert(configmap('defaults: {source: "/adapters/{name}"}\n'))
    async with SimCluster(n=1) as cluster:
        config = CollectorConfig(
            node_name="n1",
            targets=targets_of(cluster.pods, pool="llama"),
            ops_port=None,
            models_interval=0.1,
            adapters_configmap="default/adapters",
            kube_api_server=kube_api.url,
            adapter_sync_interval=0.1,
            adapter_drain=0.3,
        )
        kv = MemoryKv()
        c = Collector(config, bus=MemoryBus(Subjects()), adapter_kv=kv)
        await c.start()
        try:
            pod = cluster.pods[0]
            await kube_api.upsert(REWRITE)  # both targets are adapters nobody declared: defaults apply
            await wait_until(lambda: {"chat-v1", "chat-v2"} <= set(pod.loras), 20, "rewrite targets loaded")
            assert pod.loras["chat-v2"] == "/adapters/chat-v2"
            await kube_api.upsert(configmap("adapters: [{name: sql, source: /x/sql}]\n"))
            await wait_until(lambda: "sql" in pod.loras, 20, "the ConfigMap's adapter loaded")
            # without defaults the undeclared rewrite targets are no longer wanted: unloaded
            await wait_until(lambda: "chat-v2" not in pod.loras, 30, "undeclared targets released")
            await wait_until(lambda: len(kv.data) == 1, 10, "finished records deleted")
            assert c.metrics.registry.get_sample_value("infergate_collector_adapter_undeclared_targets") == 2
        finally:
            await c.stop()
