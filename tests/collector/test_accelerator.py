"""Accelerator and cost per hour reach the snapshots: from the targets file and pod labels/annotations."""

from __future__ import annotations

import re

import pytest

from collector.accel import ACCELERATOR_KEY, COST_KEY, from_pod_metadata
from collector.targets import Target, TargetsError, load_targets_text
from shared import schemas
from shared.natsd import free_port
from tests.collector.test_kube import pool_v1, servers
from tests.support.fakepod import FakePods
from tests.support.kubeapi import pod
from tests.support.waiting import wait_until


def test_targets_file_accelerator_and_cost():
    ts = load_targets_text(
        "- {pool: p, pod: a, address: 10.0.0.1:8000, accelerator: a100-80gb, cost_per_hour: 1.8}\n"
        "- {pool: p, pod: b, address: 10.0.0.2:8000}\n"
    )
    assert (ts[0].accelerator, ts[0].cost_per_hour) == ("a100-80gb", 1.8)
    assert (ts[1].accelerator, ts[1].cost_per_hour) == ("", 0.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("accelerator: 'a b'", "targets[0]: accelerator"),
        ("accelerator: 3", "targets[0]: accelerator"),
        ("cost_per_hour: -1", "targets[0]: cost_per_hour"),
        ("cost_per_hour: .nan", "targets[0]: cost_per_hour"),
        ("cost_per_hour: cheap", "targets[0]: cost_per_hour"),
        ("cost_per_hour: true", "targets[0]: cost_per_hour"),
    ],
)
def test_targets_file_bad_values_name_the_entry(extra, message):
    with pytest.raises(TargetsError, match=re.escape(message)):
        load_targets_text(f"- {{pool: p, pod: a, address: 10.0.0.1:8000, {extra}}}\n")


def test_pod_metadata_label_then_annotation():
    assert from_pod_metadata(
        {"labels": {ACCELERATOR_KEY: "l40s-48gb"}, "annotations": {COST_KEY: "1.0"}}
    ) == (
        "l40s-48gb",
        1.0,
        [],
    )
    assert from_pod_metadata({"annotations": {ACCELERATOR_KEY: "h100-80gb"}})[:2] == ("h100-80gb", 0.0)
    accel, cost, problems = from_pod_metadata(
        {"labels": {ACCELERATOR_KEY: "-bad-"}, "annotations": {COST_KEY: "x"}}
    )
    assert (accel, cost) == ("", 0.0) and len(problems) == 2


async def test_static_targets_publish_accelerator_and_cost(make_collector, subscriber):
    async with FakePods(1) as pods:
        t = Target(
            "default",
            "pool",
            pods[0].name,
            "127.0.0.1",
            pods[0].port,
            accelerator="a100-80gb",
            cost_per_hour=1.8,
        )
        c = await make_collector(targets=[t])
        await c.wait_ready()
        await wait_until(lambda: subscriber.last(pods[0].name), what="a snapshot")
        snap = subscriber.last(pods[0].name)
        assert isinstance(snap, schemas.EndpointSnapshot)
        assert (snap.accelerator, snap.cost_per_hour) == ("a100-80gb", 1.8)


async def test_kubernetes_pod_label_and_annotation(kube_api, make_collector, subscriber):
    port = free_port("127.0.0.2")
    async with servers(["127.0.0.2"], [port]):
        await kube_api.upsert(pool_v1(ports=(port,)))
        p = pod("gpu", "127.0.0.2", namespace="ml", labels={"app": "vllm", ACCELERATOR_KEY: "l40s-48gb"})
        p["metadata"]["annotations"] = {COST_KEY: "0.95"}
        await kube_api.upsert(p)
        c = await make_collector(kube_api_server=kube_api.url, namespaces=["ml"])
        await c.wait_ready()
        await wait_until(lambda: subscriber.last("gpu"), what="a snapshot")
        snap = subscriber.last("gpu")
        assert (snap.accelerator, snap.cost_per_hour) == ("l40s-48gb", 0.95)
        # relabelled: the endpoint is re-added with the new accelerator
        p["metadata"]["labels"][ACCELERATOR_KEY] = "h100-80gb"
        await kube_api.upsert(p)
        await wait_until(
            lambda: getattr(subscriber.last("gpu"), "accelerator", "") == "h100-80gb", what="relabel"
        )
