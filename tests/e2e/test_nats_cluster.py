"""NATS as production runs it: a 3-node JetStream cluster, InferGate's streams replicated R3.

The whole stack (collectors, two pickers, Envoy) runs on the cluster with the three URLs.
Under a steady load through Envoy, the node leading the endpoint stream is SIGKILLed and
restarted: no request may fail, every picker keeps every endpoint, snapshots keep
flowing (to the pickers and through the stream), and the node rejoins with both streams'
replicas current again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest

from bench import faults
from bench.natscluster import NatsCluster
from bench.stack import Stack
from shared.subjects import Subjects

pytestmark = [pytest.mark.e2e]

SUBJECTS = Subjects()


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[NatsCluster]:
    c = NatsCluster(work_dir=tmp_path / "nats")
    try:
        await asyncio.to_thread(c.start)
        yield c
    finally:
        await asyncio.to_thread(c.close)


async def test_killed_node_costs_no_request_and_rejoins(cluster: NatsCluster) -> None:
    config = faults.cluster_stack_config(cluster, pickers=2, autoscaler=False, round_robin_envoy=False)
    async with Stack(config) as stack:
        pods = {p.plan.name for p in stack.pods}
        seen_after_kill: set[str] = set()

        async def on_snapshot(msg) -> None:  # counts the pods heard from while a node is down
            origin = SUBJECTS.parse(msg.subject)
            if origin is not None and not all(n.running for n in cluster.nodes):
                seen_after_kill.add(origin.name)

        # An observer on the live subjects, connected to all three nodes like the services.
        observer = await nats.connect(cluster.url_list, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        await observer.subscribe(SUBJECTS.all_endpoints(), cb=on_snapshot)
        try:
            js = observer.jetstream()
            for stream in (SUBJECTS.endpoint_stream, SUBJECTS.event_stream):  # created R3
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, info.config
            assert await faults.stream_replicas_current(cluster)
            run, seen = await faults.nats_node_killed(stack, cluster, lead_s=2.0, down_s=10.0, tail_s=1.0)
            # Zero failed requests through Envoy, before, during and after the node loss.
            assert len(run.records) > 50
            assert not run.failures, run.failures
            # The view stayed whole: every picker always held all 4 endpoints; snapshots kept
            # flowing on the bus, and reached every picker again while the node was still
            # down (once the survivors elected a new stream leader), not only after its restart.
            assert seen.ready_pods_seen == {4.0}, seen
            assert seen_after_kill == pods
            assert seen.fresh_after_s is not None, seen
            # The node came back into the cluster, with both streams' replicas current.
            assert seen.rejoined_s is not None, seen
            node = cluster.node(seen.node)
            assert node.running and cluster.routes_of(node) == 2
            # And the stream it led still holds the last snapshot of every endpoint.
            for pod in stack.pods:
                msg = await js.get_last_msg(
                    SUBJECTS.endpoint_stream,
                    SUBJECTS.endpoint("default", "vllm-llama2-7b", pod.plan.name, pod.port),
                )
                assert msg.data
        finally:
            await observer.close()
