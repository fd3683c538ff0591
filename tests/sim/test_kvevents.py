"""The simulator's KV events, read with a plain ZMQ subscriber as any vLLM consumer would."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
import zmq
import zmq.asyncio

from shared import kvevents as kv
from shared.kvhash import BlockHasher
from shared.tokens import text_for_tokens
from sim import tokenize
from sim.engine import EngineConfig
from sim.kvevents import KVEventsConfig, offset_endpoint
from sim.pod import PodSpec, SimPod


async def _pod(kv_capacity_tokens: int = 4096) -> SimPod:
    cfg = KVEventsConfig.from_json(
        '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:0",'
        ' "replay_endpoint": "tcp://127.0.0.1:0", "topic": "kv@sim-0@m", "max_queue_size": 5}'
    )
    # "tcp://127.0.0.1:0" is not a wildcard, so vLLM's rule would connect: bind explicitly here
    cfg = KVEventsConfig(**{**cfg.__dict__, "endpoint": "tcp://*:0", "replay_endpoint": "tcp://*:0"})
    eng = EngineConfig(model="m", kv_capacity_tokens=kv_capacity_tokens, max_model_len=4096)
    pod = SimPod(PodSpec(name="sim-0", model="m", engine=eng, time_scale=0.05, kv_events=cfg))
    await pod.start()
    return pod


async def _complete(pod: SimPod, prompt: str) -> None:
    async with aiohttp.ClientSession() as s:
        body = {"model": "m", "prompt": prompt, "max_tokens": 2}
        async with s.post(f"{pod.url}/v1/completions", json=body) as r:
            assert r.status == 200, await r.text()


async def _recv(sub: zmq.asyncio.Socket, timeout: float = 5.0) -> tuple[bytes, int, kv.EventBatch]:
    topic, seq, payload = await asyncio.wait_for(sub.recv_multipart(), timeout)
    return topic, kv.seq_of(seq), kv.decode_batch(payload)


async def test_stored_and_removed_events_carry_vllms_hashes():
    pod = await _pod(kv_capacity_tokens=1024)  # 64 blocks: the second prompt evicts the first
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.connect(pod.kv_publisher.endpoint.replace("0.0.0.0", "127.0.0.1"))
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # A SUB socket joins asynchronously and misses what is sent before (the replay
        # socket covers that): warm up until one batch arrives, then drain.
        warm: set[int] = set()
        for i in range(100):
            warm_prompt = text_for_tokens(20, seed=1000 + i)
            warm.update(BlockHasher(16, "0").hashes(tokenize.encode(warm_prompt)))
            await _complete(pod, warm_prompt)
            with contextlib.suppress(TimeoutError):
                await _recv(sub, timeout=0.1)
                break
        while True:
            try:
                _, _last, _ = await _recv(sub, timeout=0.3)
            except TimeoutError:
                break
        prompt = text_for_tokens(600, seed=1)
        await _complete(pod, prompt)
        topic, seq, batch = await _recv(sub)
        assert topic == b"kv@sim-0@m" and batch.data_parallel_rank == 0
        stored = [e for e in batch.events if isinstance(e, kv.BlockStored)]
        ids = tokenize.encode(prompt)
        want = BlockHasher(16, "0").hashes(ids)
        got = [h for e in stored for h in e.block_hashes]
        assert got == want[: len(got)] and len(got) >= 1
        first = stored[0]
        assert first.parent_block_hash is None and first.block_size == 16 and first.medium == "GPU"
        assert first.token_ids == ids[: 16 * len(first.block_hashes)]
        seen = set(got)
        seqs = [seq]
        # the rest of the first prompt, then a second prompt that needs the space back
        await _complete(pod, text_for_tokens(900, seed=2))
        removed: set[int] = set()
        while len(seen) < 600 // 16 or not removed:
            _, seq, batch = await _recv(sub)
            seqs.append(seq)
            for e in batch.events:
                if isinstance(e, kv.BlockStored):
                    seen.update(e.block_hashes)
                elif isinstance(e, kv.BlockRemoved):
                    removed.update(e.block_hashes)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive
        assert removed and removed <= set(want) | warm  # only finished prompts' blocks were evictable
    finally:
        sub.close(0)
        ctx.term()
        await pod.stop()


async def test_replay_socket_returns_missed_batches_then_the_end_marker():
    pod = await _pod()
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    try:
        await _complete(pod, text_for_tokens(200, seed=3))
        await _complete(pod, text_for_tokens(200, seed=4))
        assert pod.kv_publisher.published >= 2
        dealer.connect(pod.kv_publisher.replay_endpoint.replace("0.0.0.0", "127.0.0.1"))
        await dealer.send_multipart([b"", kv.seq_bytes(1)])
        seqs = []
        while True:
            _, seq, payload = await asyncio.wait_for(dealer.recv_multipart(), 5.0)
            if kv.seq_of(seq) == -1:
                assert payload == b""
                break
            kv.decode_batch(payload)
            seqs.append(kv.seq_of(seq))
        assert seqs == list(range(1, pod.kv_publisher.published))
    finally:
        dealer.close(0)
        ctx.term()
        await pod.stop()


async def test_restarted_pod_starts_a_new_sequence():
    pod = await _pod()
    try:
        await _complete(pod, text_for_tokens(100, seed=5))
        assert pod.kv_publisher.published >= 1
        await pod.restart()
        assert pod.kv_publisher.published == 0
        await _complete(pod, text_for_tokens(100, seed=5))
        assert pod.kv_publisher.published >= 1
    finally:
        await pod.stop()


def test_config_parsing_and_port_offsets():
    c = KVEventsConfig.from_json('{"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}')
    assert c.for_pod(2).endpoint == "tcp://*:5559" and c.for_pod(2).replay_endpoint == "tcp://*:5560"
    assert offset_endpoint("ipc:///tmp/kv", 1) == "ipc:///tmp/kv_dp1"
    with pytest.raises(ValueError):
        KVEventsConfig.from_json("[1]")
    with pytest.raises(ValueError):
        KVEventsConfig.from_json('{"publisher": "kafka"}')
