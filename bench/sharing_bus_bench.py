"""Peer sharing: the cost on the NATS bus, and how fast a peer's event reaches another replica.

    .venv/bin/python -m bench.sharing_bus_bench [--seconds 5] [--out bench/results/sharing-bus.md]

A real ``nats-server -js`` (with InferGate's event stream, so every batch is also
stored) runs as a child process. This process plays P picker replicas: a Poisson load
generator calls each replica's :class:`~picker.sharing.PeerPublisher` the way the
ext_proc path does (an assignment per request, its completion 0.5-5 s later), with
realistic events: 12 chained prefix-block hashes per request from
:func:`shared.hashing.prefix_block_hashes`, lognormal prompt/output lengths, a model and
a LoRA target. Another **process** plays the observing replica: a
:class:`~picker.sharing.PeerListener` applying everything to a real pool state
(``build_profile("default").state``), plus a raw subscription counting messages and payload
bytes on the pool's event subjects. Publish-to-apply latency is the wall-clock time from
the publisher's ``on_local_*`` call (the event's ``ts``) to the pool-state hook call in
the other process (same machine, same clock).

Each scenario runs with batching on (the defaults: 5 ms linger, 128 events) and off
(one message per event), in the same run, and reports the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid

SCENARIOS = [  # (publishing replicas, total requests/s)
    (1, 200),
    (1, 1000),
    (4, 1000),
    (1, 3000),
]
NS, POOL, PREFIX = "default", "vllm-llama2-7b", "infergate"  # realistic lengths: they are on every event


# ---------------------------------------------------------------------------------------
# the observing replica (child process)
# ---------------------------------------------------------------------------------------


async def observer(url: str) -> None:
    from picker.scheduling import build_profile
    from picker.sharing import PeerListener, SharingSettings
    from shared.natsbus import NatsBus
    from shared.natsconn import NatsOptions, connect
    from shared.subjects import Subjects

    state = build_profile("default", rng=random.Random(1)).state
    applied: list[tuple[float, float]] = []  # (applied at, event ts)

    class Recording:
        def on_assigned(self, request, address, now, *, replica=""):
            applied.append((time.time(), now))
            state.on_assigned(request, address, now, replica=replica)

        def on_completed(self, request_id, now, *, replica=""):
            applied.append((time.time(), now))
            state.on_completed(request_id, now, replica=replica)

        def set_peer_rank(self, index, count, unseen=1.0):
            state.set_peer_rank(index, count, unseen)

    subjects = Subjects(PREFIX)
    nc = await connect(NatsOptions(servers=[url], name="observer", subject_prefix=PREFIX))
    received: list[tuple[float, int, int]] = []  # (received at, payload bytes, wire bytes)

    async def count(msg) -> None:
        # payload, and the payload plus the MSG protocol line a subscriber reads for it
        n = len(msg.data)
        received.append((time.time(), n, n + len(msg.subject) + len(str(n)) + 12))

    await nc.subscribe(subjects.events_of_pool(NS, POOL), cb=count)
    listener = PeerListener(
        NatsBus(nc, subjects), NS, POOL, SharingSettings(replica="observer", peer_timeout_s=0), Recording()
    )
    task = asyncio.create_task(listener.run())
    await listener.ready.wait()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    # The parent sends the measurement window (wall-clock seconds) when its load is over.
    window = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    cpu = time.process_time() - cpu0
    await asyncio.sleep(0.3)  # let the last batches arrive
    task.cancel()
    t0, t1 = window["t0"], window["t1"]
    msgs = [(n, w) for t, n, w in received if t0 <= t < t1]
    # events made in the window, wherever they were applied (the tail of the window lands after t1)
    lags = sorted(at - ts for at, ts in applied if t0 <= ts < t1)
    out = {
        "msgs": len(msgs),
        "bytes": sum(n for n, _ in msgs),
        "wire_bytes": sum(w for _, w in msgs),
        "events": len(lags),
        "duplicates": listener.applier.duplicates,
        "decode_errors": listener.decoder.failures,
        "lag_p50_ms": 1000 * lags[len(lags) // 2] if lags else math.nan,
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else math.nan,
        "lag_max_ms": 1000 * lags[-1] if lags else math.nan,
        "cpu_frac": cpu / max(1e-9, window["total"]),
    }
    print(json.dumps(out), flush=True)
    await nc.close()


# ---------------------------------------------------------------------------------------
# the publishing replicas and the load (this process)
# ---------------------------------------------------------------------------------------


def _prompts(n: int, rng: random.Random) -> list[str]:
    """768-character prompts (12 full 64-character blocks); half share a 256-character system prompt."""
    system = ("You are a helpful assistant. Answer briefly, cite your sources. " * 4)[:256]

    def text(k: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(k))

    return [system + text(512) if i % 2 else text(768) for i in range(n)]


COMPLETION_DELAY_S = (0.5, 3.0)  # a request's latency; the warm-up lets completions reach steady state


async def run_scenario(url: str, replicas: int, rate: float, seconds: float, batching: bool) -> dict:
    from picker.scheduling import RequestInfo
    from picker.sharing import PeerPublisher, SharingSettings
    from shared.hashing import prefix_block_hashes
    from shared.natsbus import NatsBus
    from shared.natsconn import NatsOptions, connect, ensure_streams
    from shared.schemas import now
    from shared.subjects import Subjects

    subjects = Subjects(PREFIX)
    nc = await connect(NatsOptions(servers=[url], name="bench-publishers", subject_prefix=PREFIX))
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    await js.purge_stream(subjects.event_stream)

    child = subprocess.Popen(  # noqa: ASYNC220 - started once per scenario, before the measurement
        [sys.executable, "-m", "bench.sharing_bus_bench", "--observer", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
    assert line.strip() == "ready", line

    kw = {} if batching else {"max_batch": 1, "flush_interval_s": 0.0}
    pubs = [
        PeerPublisher(
            NatsBus(nc, subjects),
            NS,
            POOL,
            SharingSettings(replica=f"infergate-picker-7d9f8c5b6-x2k4{i}", **kw),
        )
        for i in range(replicas)
    ]
    tasks = [asyncio.create_task(p.run()) for p in pubs]
    rng = random.Random(42)
    prompts = _prompts(256, rng)
    hashes = [prefix_block_hashes("llama-2-7b", p) for p in prompts]
    addresses = [f"10.244.{i // 4}.{17 + i}:8000" for i in range(16)]
    loop = asyncio.get_running_loop()
    sent = 0
    start = loop.time()
    warm = COMPLETION_DELAY_S[1]
    wall_start = time.time()
    next_at = start
    end = start + warm + seconds

    def counters() -> tuple[int, int, int]:
        return (
            sum(p.published_batches for p in pubs),
            sum(p.published_events for p in pubs),
            sum(p.published_bytes for p in pubs),
        )

    at_t0 = at_t1 = None
    while True:
        now_t = loop.time()
        if at_t0 is None and now_t >= start + warm:
            at_t0 = counters()
        while next_at <= now_t and next_at < end:
            k = sent % len(prompts)
            pub = pubs[sent % replicas]
            rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # Envoy's x-request-id
            req = RequestInfo(
                rid,
                "llama-2-7b",
                "sql-lora" if k % 3 == 0 else "llama-2-7b",
                prompt_tokens=int(rng.lognormvariate(4.69, 1.29)) + 1,
                prefix_hashes=hashes[k],
                expected_output_tokens=int(rng.lognormvariate(4.97, 0.94)) + 1,
            )
            addr = addresses[rng.randrange(len(addresses))]
            pub.on_local_assignment(req, addr, now())
            loop.call_later(
                rng.uniform(*COMPLETION_DELAY_S),
                lambda p=pub, r=req, a=addr: p.on_local_completion(r, a, 200, 300, 200, 2.0, 0.05, now()),
            )
            sent += 1
            next_at += rng.expovariate(rate)
        if next_at >= end:
            break
        await asyncio.sleep(max(0.0, min(next_at - loop.time(), 0.002)))
    at_t1 = counters()
    measured = loop.time() - start - warm
    total = loop.time() - start
    for p in pubs:
        await p.flush()
    await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    window = {"t0": wall_start + warm, "t1": wall_start + warm + seconds, "total": total}
    child.stdin.write(json.dumps(window) + "\n")
    child.stdin.flush()
    out = json.loads(await loop.run_in_executor(None, child.stdout.readline))
    await loop.run_in_executor(None, child.wait, 10)
    await nc.close()
    rps = sent / total
    scale = 1000.0 / rps
    # Bus ingress from the publishers' own counters over the measured window; framing (the
    # MSG line per delivery) from what the observing subscriber read in the same window.
    d_msgs, d_events, d_bytes = (b - a for a, b in zip(at_t0, at_t1, strict=True))
    msgs_s, bytes_s = d_msgs / measured, d_bytes / measured
    framing_per_msg = (out["wire_bytes"] - out["bytes"]) / max(1, out["msgs"])
    return {
        "replicas": replicas,
        "rate": rate,
        "batching": batching,
        "achieved_rps": rps,
        "events": d_events,
        "msgs_s": msgs_s,
        "bytes_s": bytes_s,
        "msgs_s_per_1k": msgs_s * scale,
        "bytes_s_per_1k": bytes_s * scale,
        "wire_bytes_s_per_1k": (d_bytes + framing_per_msg * d_msgs) / measured * scale,
        "bytes_per_event": d_bytes / max(1, d_events),
        "events_per_msg": d_events / max(1, d_msgs),
        "lag_p50_ms": out["lag_p50_ms"],
        "lag_p99_ms": out["lag_p99_ms"],
        "lag_max_ms": out["lag_max_ms"],
        "observer_cpu": out["cpu_frac"],
        "dropped": sum(p.dropped for p in pubs),
        "decode_errors": out["decode_errors"],
    }


def _median(runs: list[dict]) -> dict:
    """Each number is the median over the repeats: the machine is shared, and stalls are not ours."""
    out = dict(runs[0])
    for k, v in out.items():
        if isinstance(v, float | int) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in runs)
    out["repeats"] = len(runs)
    return out


def _table(rows: list[dict]) -> str:
    head = (
        "| publishers | req/s (achieved) | batching | msgs/s | KB/s | msgs/s per 1k req/s "
        "| KB/s per 1k req/s (with framing) "
        "| events/msg | B/event | apply p50 / p99 (max) ms | observer CPU |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['replicas']} | {r['rate']:.0f} ({r['achieved_rps']:.0f}) "
            f"| {'on' if r['batching'] else 'off'} "
            f"| {r['msgs_s']:,.0f} | {r['bytes_s'] / 1000:,.0f} | {r['msgs_s_per_1k']:,.0f} "
            f"| {r['bytes_s_per_1k'] / 1000:,.0f} ({r['wire_bytes_s_per_1k'] / 1000:,.0f}) "
            f"| {r['events_per_msg']:.1f} | {r['bytes_per_event']:.0f} "
            f"| {r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f} ({r['lag_max_ms']:.0f}) "
            f"| {100 * r['observer_cpu']:.0f}% |"
        )
    return head + "\n".join(lines)


def _ratios(rows: list[dict]) -> str:
    out = []
    for on in rows:
        if not on["batching"]:
            continue
        off = next(
            (
                r
                for r in rows
                if not r["batching"] and r["replicas"] == on["replicas"] and r["rate"] == on["rate"]
            ),
            None,
        )
        if off is None:
            continue
        out.append(
            f"- {on['replicas']} publisher(s), {on['rate']:.0f} req/s: batching cuts messages "
            f"{off['msgs_s'] / on['msgs_s']:.1f}x and bytes with framing "
            f"{off['wire_bytes_s_per_1k'] / on['wire_bytes_s_per_1k']:.2f}x; "
            f"apply p50 {on['lag_p50_ms']:.1f} ms vs {off['lag_p50_ms']:.1f} ms unbatched"
        )
    return "\n".join(out)


async def bench_replay(url: str, rate: float = 1000.0, window_s: float = 30.0, peers: int = 4) -> dict:
    """A replica starting in a pool that served ``rate`` req/s: time to replay the stream and be ready."""
    from picker.scheduling import build_profile
    from picker.sharing import PeerListener, SharingSettings
    from shared.hashing import prefix_block_hashes
    from shared.natsbus import NatsBus
    from shared.natsconn import NatsOptions, connect, ensure_streams
    from shared.schemas import Assignment, Completion, EventBatch, encode, now
    from shared.subjects import Subjects

    subjects = Subjects(PREFIX)
    nc = await connect(NatsOptions(servers=[url], name="bench-history", subject_prefix=PREFIX))
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    await js.purge_stream(subjects.event_stream)
    rng = random.Random(7)
    hashes = [prefix_block_hashes("llama-2-7b", p) for p in _prompts(256, rng)]
    t_now = now()
    per_peer: list[list[Assignment | Completion]] = [[] for _ in range(peers)]
    for i in range(int(rate * window_s)):
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        addr = f"10.244.{i % 4}.{17 + i % 16}:8000"
        ts = t_now - window_s + i / rate
        evs = per_peer[i % peers]
        evs.append(
            Assignment(
                request_id=rid,
                replica="",
                address=addr,
                model="llama-2-7b",
                target_model="llama-2-7b",
                prompt_tokens=int(rng.lognormvariate(4.69, 1.29)) + 1,
                prefix_hashes=hashes[i % 256],
                expected_output_tokens=int(rng.lognormvariate(4.97, 0.94)) + 1,
                ts=ts,
            )
        )
        done = ts + rng.uniform(*COMPLETION_DELAY_S)
        if done < t_now:
            evs.append(
                Completion(request_id=rid, replica="", address=addr, status=200, output_tokens=200, ts=done)
            )
    n_events = n_msgs = n_bytes = 0
    for k, evs in enumerate(per_peer):
        evs.sort(key=lambda e: e.ts)
        name = f"infergate-picker-7d9f8c5b6-x2k4{k}"
        subject = subjects.events(NS, POOL, name)
        per_batch = 15  # what 5 ms of linger collects at 1,000 req/s per replica, measured above
        for j in range(0, len(evs), per_batch):
            data = encode(EventBatch(replica=name, events=evs[j : j + per_batch], ts=evs[j].ts))
            await nc.publish(subject, data)
            n_msgs += 1
            n_bytes += len(data)
        n_events += len(evs)
    await nc.flush()
    state = build_profile("default", rng=random.Random(1)).state
    listener = PeerListener(
        NatsBus(nc, subjects), NS, POOL, SharingSettings(replica="newcomer", peer_timeout_s=0), state
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    task = asyncio.create_task(listener.run())
    await listener.ready.wait()
    ready_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    task.cancel()
    await nc.close()
    return {
        "rate": rate,
        "window_s": window_s,
        "events": n_events,
        "messages": n_msgs,
        "bytes": n_bytes,
        "applied": listener.applier.applied,
        "open": len(state.inflight),
        "ready_s": ready_s,
        "cpu_s": cpu_s,
    }


async def main_async(args) -> list[dict]:
    from shared.natsd import NatsServer

    server = NatsServer().start()
    rows = []
    try:
        for _ in range(args.repeats):
            r = await bench_replay(server.url)
            args.replays.append(r)
            print(
                f"replay: {r['events']:,} events in {r['messages']:,} messages ({r['bytes'] / 1e6:.1f} MB) "
                f"applied {r['applied']:,}, ready after {r['ready_s']:.2f} s (CPU {r['cpu_s']:.2f} s)",
                flush=True,
            )
        for replicas, rate in SCENARIOS if not args.replay_only else ():
            for batching in (True, False):
                runs = [
                    await run_scenario(server.url, replicas, rate, args.seconds, batching)
                    for _ in range(args.repeats)
                ]
                r = _median(runs)
                rows.append(r)
                print(
                    f"publishers={replicas} rate={rate} batching={'on' if batching else 'off'}: "
                    f"{r['msgs_s_per_1k']:,.0f} msgs/s, {r['bytes_s_per_1k'] / 1000:,.0f} KB/s per 1k req/s, "
                    f"{r['events_per_msg']:.1f} events/msg, apply p50 {r['lag_p50_ms']:.1f} ms "
                    f"p99 {r['lag_p99_ms']:.1f} ms, dropped {r['dropped']}",
                    flush=True,
                )
    finally:
        server.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (after a warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per scenario; the table shows medians")
    ap.add_argument("--out", default=None, help="write the markdown results here")
    ap.add_argument("--replay-only", action="store_true", help="only the start-up replay measurement")
    ap.add_argument("--observer", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.observer:
        asyncio.run(observer(args.observer))
        return 0
    t0 = time.time()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    args.replays = []
    rows = asyncio.run(main_async(args))
    rp = sorted(args.replays, key=lambda r: r["ready_s"])[len(args.replays) // 2]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    text = (
        "# Peer sharing on the bus (`.venv/bin/python -m bench.sharing_bus_bench`)\n\n"
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime(t0))} on this machine ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), {args.seconds:.0f} s measured per run after a "
        f"{COMPLETION_DELAY_S[1]:.0f} s warm-up, median of {args.repeats} runs, "
        f"load average {load0:.1f} at the start and {load:.1f} at the end (other engineers' jobs "
        "share the machine). Real nats-server "
        "with the event stream (every batch is also stored).\n\n"
        + _table(rows)
        + "\n\n"
        + _ratios(rows)
        + "\n\n## Start-up replay\n\n"
        + f"A replica starting in a pool that served {rp['rate']:,.0f} req/s (4 peers) replays the last "
        f"{rp['window_s']:.0f} s: {rp['events']:,} events in {rp['messages']:,} batches "
        f"({rp['bytes'] / 1e6:.1f} MB), applied {rp['applied']:,} into a real scheduler "
        f"({rp['open']:,} requests still open), **ready after {rp['ready_s']:.2f} s** "
        f"({rp['cpu_s']:.2f} s CPU; median of {len(args.replays)}).\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
