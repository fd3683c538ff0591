"""Lag from a change on the bus to the value the External Metrics API serves, p50 and p99.

Run: ``.venv/bin/python -m bench.autoscaler_lag_bench [--trials N] [--pods N] [--nats-url URL]``

Against a real nats-server (started here unless ``--nats-url`` is given) and the real
autoscaler service in-process, with a pool of ``--pods`` endpoints heart-beating in the
background so the aggregation has realistic work to do. Each trial changes one pod's
``waiting`` count (published as a collector publishes: a snapshot onto its JetStream
subject) and polls ``GET .../infergate-waiting-requests?labelSelector=model_name=...``
over HTTPS back to back until the served sum shows the change; the lag is publish ->
first response showing it. The same is done for the event path (an ``Assignment`` batch
-> ``infergate-inflight-requests``). The baseline measured in the same run is one API
round trip with nothing changing (what polling alone costs); the ratio column divides by
its p50. A Prometheus + prometheus-adapter chain is not measured here: its lag is set by
configured intervals (see bench/results/autoscaler-lag.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import random
import ssl
import statistics
import time

import aiohttp

from autoscaler.quantity import parse_quantity
from autoscaler.service import Autoscaler, AutoscalerConfig
from shared.natsconn import NatsOptions, connect, ensure_streams
from shared.natsd import NatsServer
from shared.schemas import Assignment, EndpointSnapshot, EventBatch, encode
from shared.subjects import Subjects

NS, POOL, MODEL = "bench", "pool", "llama-2-7b"
PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/bench/"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Rig:
    def __init__(self, nc, base_url: str, ca_file: str, pods: int) -> None:
        self.nc, self.base_url, self.pods = nc, base_url, pods
        self.subjects = Subjects()
        self.waiting = [0] * pods
        self.seq = 0
        self.ssl = ssl.create_default_context(cafile=ca_file)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl))

    async def snapshot(self, i: int) -> None:
        self.seq += 1
        snap = EndpointSnapshot(
            namespace=NS,
            pool=POOL,
            pod=f"vllm-{i}",
            address=f"10.0.0.{i}:8000",
            model=MODEL,
            waiting=self.waiting[i],
            kv_usage=0.5,
            ts=time.time(),
            seq=self.seq,
            epoch="bench",
        )
        await self.nc.publish(self.subjects.endpoint(NS, POOL, f"vllm-{i}", 8000), encode(snap))

    async def heartbeat(self) -> None:
        """Every pod re-publishes every second, as idle collectors do."""
        while True:
            for i in range(self.pods):
                await self.snapshot(i)
            await asyncio.sleep(1.0)

    async def served(self, metric: str) -> float | None:
        async with self.http.get(
            self.base_url + PATH + metric, params={"labelSelector": f"model_name={MODEL}"}
        ) as r:
            body = await r.json()
        return sum(parse_quantity(i["value"]) for i in body["items"]) if body["items"] else None

    async def lag(self, metric: str, expected: float, change) -> float:
        t0 = time.perf_counter()
        await change()
        await self.nc.flush()
        while await self.served(metric) != expected:
            if time.perf_counter() - t0 > 10:
                raise TimeoutError(f"{metric} never showed {expected}")
        return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    server = None
    url = args.nats_url
    if url is None:
        server = NatsServer().start()
        url = server.url
    nc = await connect(NatsOptions(servers=[url]))
    await ensure_streams(nc.jetstream(), Subjects())
    scaler = Autoscaler(
        AutoscalerConfig(nats=NatsOptions(servers=[url]), secure_host="127.0.0.1", secure_port=0, ops_port=0)
    )
    await scaler.start()
    rig = Rig(nc, f"https://127.0.0.1:{scaler.secure_port}", scaler.ca_file or "", args.pods)
    beat = asyncio.create_task(rig.heartbeat())
    rng = random.Random(7)
    results: dict[str, list[float]] = {
        "baseline: one API round trip": [],
        "snapshot -> waiting": [],
        "assignment -> in-flight": [],
    }
    try:
        await asyncio.sleep(0.5)
        for _ in range(args.trials):
            t0 = time.perf_counter()
            await rig.served("infergate-waiting-requests")
            results["baseline: one API round trip"].append(time.perf_counter() - t0)
        subject = rig.subjects.events(NS, POOL, "bench")
        for k in range(args.trials):
            i = rng.randrange(args.pods)
            rig.waiting[i] = (rig.waiting[i] + rng.randint(1, 9)) % 50
            results["snapshot -> waiting"].append(
                await rig.lag("infergate-waiting-requests", sum(rig.waiting), lambda i=i: rig.snapshot(i))
            )
            batch = EventBatch(
                replica="bench",
                events=[
                    Assignment(
                        request_id=f"req-{k}",
                        replica="bench",
                        address="10.0.0.0:8000",
                        model=MODEL,
                        target_model=MODEL,
                        namespace=NS,
                        pool=POOL,
                        ts=time.time(),
                    )
                ],
            )
            results["assignment -> in-flight"].append(
                await rig.lag(
                    "infergate-inflight-requests", k + 1, lambda b=batch: nc.publish(subject, encode(b))
                )
            )
            await asyncio.sleep(rng.random() * 0.01)  # do not phase-lock with the heartbeat
    finally:
        beat.cancel()
        await rig.http.close()
        await scaler.stop()
        await nc.close()
        if server is not None:
            server.close()
    return results


def report(results: dict[str, list[float]], args: argparse.Namespace) -> str:
    base = statistics.median(results["baseline: one API round trip"])
    lines = [
        f"autoscaler lag: {args.trials} trials, {args.pods} pods heart-beating at 1 Hz, "
        f"Python {platform.python_version()}, {platform.machine()}",
        "",
        "| path | p50 (ms) | p99 (ms) | max (ms) | p50 / baseline p50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in results.items():
        lines.append(
            f"| {name} | {pct(values, 0.5) * 1e3:.2f} | {pct(values, 0.99) * 1e3:.2f} | "
            f"{max(values) * 1e3:.2f} | {pct(values, 0.5) / base:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoscaler_lag_bench", description=__doc__)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--nats-url", default=None, help="use this NATS server instead of starting one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the shutdown's 'nats disconnected' is expected
    results = asyncio.run(run(args))
    print(report(results, args))
    worst = pct(results["snapshot -> waiting"] + results["assignment -> in-flight"], 0.99)
    print(f"\np99 target < 1000 ms: {'met' if worst < 1.0 else 'MISSED'} ({worst * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
