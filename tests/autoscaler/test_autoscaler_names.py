"""Client-facing names for the autoscaler's model_name label: InferenceModelRewrites and InferenceModels."""

from __future__ import annotations

import asyncio

from autoscaler.aggregate import ModelKey
from autoscaler.models import ModelWatcher, names_of
from shared import crds, kube
from tests.support.waiting import wait_until

DOCS = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: r, namespace: ml}
spec:
  poolRef: {name: pool}
  rules:
    - matches: [{model: {value: assistant}}, {model: {value: helper}}]
      targets: [{modelRewrite: lora-a, weight: 1}, {modelRewrite: lora-b, weight: 1}]
    - matches: [{model: {value: plain}}]
    - targets: [{modelRewrite: base}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat, namespace: ml}
spec: {modelName: chat, poolRef: {name: pool}, targetModels: [{name: lora-c}]}
"""


def test_names_from_rewrites_and_models():
    names = names_of(crds.load_yaml(DOCS))
    assert names == {
        ModelKey("ml", "pool", "lora-a"): "assistant",  # alphabetically first of assistant/helper
        ModelKey("ml", "pool", "lora-b"): "assistant",
        ModelKey("ml", "pool", "plain"): "plain",  # a rule without targets serves its own name
        ModelKey("ml", "pool", "lora-c"): "chat",
    }  # the generic rule names nothing


async def test_watcher_reads_rewrites_in_both_groups(kube_api):
    rewrite = {
        "apiVersion": "llm-d.ai/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": "r", "namespace": "ml"},
        "spec": {
            "poolRef": {"name": "pool"},
            "rules": [{"matches": [{"model": {"value": "tldr"}}], "targets": [{"modelRewrite": "sum-lora"}]}],
        },
    }
    await kube_api.upsert(rewrite)
    seen: list[dict] = []
    api = await kube.api_client(host=kube_api.url)
    watcher = ModelWatcher(api, ["ml"], seen.append)
    tasks = [asyncio.create_task(w.run()) for w in watcher.watchers]
    try:
        await wait_until(watcher.is_synced, 10, "synced")
        await wait_until(
            lambda: seen and seen[-1] == {ModelKey("ml", "pool", "sum-lora"): "tldr"}, 10, "names"
        )
        await kube_api.delete(rewrite)
        await wait_until(lambda: seen[-1] == {}, 10, "deleted")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
