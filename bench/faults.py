"""``infergate-bench faults`` / ``make faults``: what each fault costs the clients, through a real Envoy.

One :class:`~bench.stack.Stack` (NATS, 4 simulated pods, 2 collectors, 2 picker
replicas, Envoy in FailClose plus a second Envoy in FailOpen on the same pickers). For
each fault a steady, low Poisson load of short Critical requests goes through the
gateway; the fault is injected a few seconds in; the report counts what the clients saw.

Faults:

* ``nats-outage``: nats-server stopped for 10 s, then restarted (in-memory JetStream: the
  stream is lost and rebuilt by the collectors and pickers);
* ``collector-killed``: SIGKILL of one node's collector (its pods' snapshots go stale);
* ``pod-killed``: SIGKILL of one simulated vLLM pod (in-flight requests on it fail; new
  ones walk to the picker's fallback endpoints);
* ``picker-killed``: SIGKILL of one of two picker replicas (its in-flight ext_proc streams
  fail; Envoy's outlier detection ejects it on the first refused connection);
* ``picker-killed (no outlier detection)``: the same kill seen at the same time by a second
  Envoy whose picker cluster has no outlier detection (:func:`without_outlier_detection`),
  the baseline: only the gRPC health check removes the dead replica there;
* ``all-pickers-down``: every picker SIGKILLed for 5 s, then restarted, seen through the
  FailClose and the FailOpen Envoy at the same time;
* ``nats-node-killed``: on a second stack whose NATS is a 3-node JetStream cluster (streams
  R3, every service given the three URLs), SIGKILL of the node leading the endpoint
  stream, restarted 1 s after every picker's view is fresh again without it; the notes
  give the worst picker view age during the fault (``infergate_picker_view_max_age_seconds``)
  and how long the node took to rejoin (routes to both peers, ``/healthz`` ok, every
  replica of both streams current);
* ``poison-request`` and ``model-name-flood``: hostile clients among normal ones, on a
  stack of their own (see :mod:`bench.faults_hostile`).

Recovery time, defined precisely: the reference instant is the injection for the kills
and the end of the fault for ``nats-outage`` and ``all-pickers-down`` (restart issued).
Recovery is the send time of the first successful request after the last failed one,
minus the reference (0 when nothing failed after the reference), and it only counts if
every request sent in the ≥ 2 s after it succeeded; otherwise the fault is reported as
not recovered within the window. Failures before the reference (during an outage) are
counted in the table but do not extend recovery. For ``nats-outage`` the report also
gives the *view resync* time: from the restart until every picker's view again holds
metrics younger than 1 s (``infergate_picker_view_max_age_seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import LoadItem, LoadResult, RequestRecord, run_load
from bench.natscluster import NatsCluster
from bench.stack import BASE_MODEL, Stack, StackConfig, metric_samples
from shared.subjects import Subjects

DEFAULT_OUT = Path("bench/results/faults.md")
SHORT_PROMPT = "Summarize the following: the quick brown fox jumps over the lazy dog. " * 2


def short_items(max_tokens: int = 8) -> itertools.repeat[LoadItem]:
    """Endless short Critical requests: the load must not saturate, so failures are the fault's."""
    return itertools.repeat(LoadItem(SHORT_PROMPT, max_tokens))


@dataclass
class FaultRun:
    """The records of one load run plus the fault's instants, all in seconds from the load start."""

    name: str
    url: str
    result: LoadResult
    injected_at: float
    ref_at: float  # recovery is measured from here (injection, or the fault's end)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def records(self) -> list[RequestRecord]:
        return [r for r in self.result.records if not math.isnan(r.sent_at)]

    @property
    def failures(self) -> Counter[str]:
        return Counter(str(r.status) if r.status else (r.error or "error") for r in self.records if not r.ok)

    def window(self, start: float, end: float = math.inf) -> list[RequestRecord]:
        return [r for r in self.records if start <= r.sent_at < end]

    def success_ratio(self, start: float = 0.0, end: float = math.inf) -> float:
        rs = self.window(start, end)
        return sum(r.ok for r in rs) / len(rs) if rs else math.nan

    def recovery_s(self, hold_s: float = 2.0) -> float | None:
        """See the module docstring; None = not recovered within the run."""
        after = sorted(self.window(self.ref_at), key=lambda r: r.sent_at)
        failed = [r for r in after if not r.ok]
        if not failed:
            return 0.0
        later_ok = [r for r in after if r.sent_at > failed[-1].sent_at]
        if not later_ok or later_ok[-1].sent_at - later_ok[0].sent_at < hold_s:
            return None
        return later_ok[0].sent_at - self.ref_at


async def with_load(
    name: str,
    urls: dict[str, str],
    fault: Callable[[Callable[[], float]], Awaitable[tuple[float, float] | None]],
    duration_s: float,
    *,
    qps: float = 15.0,
    seed: int = 0,
) -> dict[str, FaultRun]:
    """Run the steady load against each URL while ``fault(now)`` runs; ``now()`` = s since load start.

    ``fault`` returns ``(injected_at, ref_at)`` (or None: no fault, both 0).
    """
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    loads = {
        key: asyncio.create_task(
            run_load(url, short_items(), qps, duration_s, model=BASE_MODEL, seed=seed + i,
                     request_timeout_s=30.0, drain_timeout_s=30.0)
        )
        for i, (key, url) in enumerate(urls.items())
    }  # fmt: skip
    try:
        instants = await fault(now) or (0.0, 0.0)
        results = {key: await task for key, task in loads.items()}
    finally:
        for task in loads.values():
            task.cancel()
    return {key: FaultRun(name, urls[key], res, *instants) for key, res in results.items()}


# ------------------------------------------------------------------ observation helpers


async def picker_view_max_age(stack: Stack) -> float:
    """The oldest endpoint metrics any live picker routes from (inf if a picker cannot be asked)."""
    worst = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for p in stack.pickers:
            try:
                async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                return math.inf
            ages = metric_samples(text, "infergate_picker_view_max_age_seconds")
            worst = max([worst, *ages]) if ages else math.inf
    return worst


async def wait_view_fresh(stack: Stack, max_age_s: float = 1.0, timeout_s: float = 30.0) -> float | None:
    """Seconds until every picker's view is fresher than ``max_age_s``; None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await picker_view_max_age(stack) < max_age_s:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    return None


async def retries(stack: Stack) -> tuple[int, int]:
    """Envoy's retries onto the picker's fallback endpoints so far: (tried, succeeded)."""
    assert stack.envoy is not None
    stats = await stack.envoy.stats("cluster.infergate_model_servers.upstream_rq_retry")
    prefix = "cluster.infergate_model_servers.upstream_rq_retry"
    return stats.get(prefix, 0), stats.get(prefix + "_success", 0)


# ------------------------------------------------------------------ the faults


async def nats_outage(
    stack: Stack, outage_s: float = 10.0, lead_s: float = 3.0, tail_s: float = 8.0
) -> FaultRun:
    resync: list[float | None] = []

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(lead_s)
        injected = now()
        await asyncio.to_thread(stack.nats.stop)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(stack.nats.start)
        ended = now()
        resync.append(await wait_view_fresh(stack, timeout_s=tail_s))
        return injected, ended

    run = (await with_load("nats-outage", {"gw": stack.gateway_url}, fault, lead_s + outage_s + tail_s))["gw"]
    run.notes["view resync"] = "not within the run" if resync[0] is None else f"{resync[0]:.1f} s"
    return run


async def kill_and_restore(
    stack: Stack,
    name: str,
    kill: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
    *,
    lead_s: float = 3.0,
    after_s: float = 9.0,
    urls: dict[str, str] | None = None,
) -> Any:
    """The fault's run through the gateway, or one run per URL (a dict) when ``urls`` is given."""

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(lead_s)
        injected = now()
        await kill()
        return injected, injected

    try:
        runs = await with_load(name, urls or {"gw": stack.gateway_url}, fault, lead_s + after_s)
        return runs if urls else runs["gw"]
    finally:
        await restore()


async def all_pickers_down(
    stack: Stack, fail_open_url: str, down_s: float = 5.0, tail_s: float = 14.0
) -> dict[str, FaultRun]:
    """Both pickers down, then restarted; ``tail_s`` covers their start (seconds of imports on a
    busy 2-core machine) plus Envoy's health checks seeing them again."""
    ready: list[float] = []

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(3.0)
        injected = now()
        await asyncio.gather(*(p.process.kill() for p in stack.pickers))
        await asyncio.sleep(down_s)
        restarted = now()
        await asyncio.gather(*(p.process.start(60) for p in stack.pickers))
        ready.append(now() - restarted)
        return injected, restarted

    urls = {"FailClose": stack.gateway_url, "FailOpen": fail_open_url}
    runs = await with_load("all-pickers-down", urls, fault, 3.0 + down_s + tail_s)
    for key, run in runs.items():
        run.name = f"all-pickers-down ({key})"
        run.notes["pickers ready"] = f"{ready[0]:.1f} s after the restart"
    return runs


SERVICES = ("collector", "picker", "autoscaler")


def cluster_stack_config(cluster: NatsCluster, **kwargs: Any) -> StackConfig:
    """A stack on ``cluster``: every service gets the three URLs and creates the streams R3."""
    replicas = ("--nats-stream-replicas", str(len(cluster.nodes)))
    return StackConfig(nats_url=cluster.urls, nats_args={s: replicas for s in SERVICES}, **kwargs)


async def stream_replicas_current(cluster: NatsCluster) -> bool:
    """Both InferGate streams have a leader and every replica is online and current."""
    import nats

    subjects = Subjects()
    nc = await nats.connect(cluster.url_list, connect_timeout=2, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=2)
        for stream in (subjects.endpoint_stream, subjects.event_stream):
            info = (await js.stream_info(stream)).cluster
            replicas = (info.replicas or []) if info else []
            if not info or not info.leader or len(replicas) != len(cluster.nodes) - 1:
                return False
            if not all(r.current and not r.offline for r in replicas):
                return False
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def endpoint_stream_leader(cluster: NatsCluster) -> str:
    import nats

    nc = await nats.connect(cluster.url_list, connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=2).stream_info(Subjects().endpoint_stream)
        assert info.cluster is not None and info.cluster.leader, "the endpoint stream has no leader"
        return info.cluster.leader
    finally:
        await nc.close()


@dataclass
class ClusterFault:
    """What :func:`nats_node_killed` saw besides the clients' records."""

    node: str = ""
    worst_view_age_s: float = 0.0  # the oldest metrics any picker routed from while the node was down
    fresh_after_s: float | None = None  # from the kill until every picker's view is fresh again (node down)
    ready_pods_seen: set[float] = field(default_factory=set)  # every picker's ready-pod count, sampled
    rejoined_s: float | None = None  # from the restart until the node is routed and current


async def nats_node_killed(
    stack: Stack, cluster: NatsCluster, *, lead_s: float = 3.0, down_s: float = 15.0, tail_s: float = 4.0
) -> tuple[FaultRun, ClusterFault]:
    """SIGKILL the node leading the endpoint stream under load; restart it 1 s after every
    picker's view is fresh again without it, or after ``down_s`` at the latest.

    A picker follows live snapshots on a core subscription and reads the endpoint stream
    only to bootstrap, so its view stays fresh while the survivors elect a new stream leader
    (NATS's Raft election takes seconds); before it did, the view stalled for the election.
    """
    seen = ClusterFault()

    async def watch(until: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not until.is_set():
                seen.worst_view_age_s = max(seen.worst_view_age_s, await picker_view_max_age(stack))
                for p in stack.pickers:
                    try:
                        async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp:
                            page = await resp.text()
                    except (aiohttp.ClientError, TimeoutError):
                        seen.ready_pods_seen.add(math.nan)  # a picker that cannot be asked shows
                        continue
                    seen.ready_pods_seen.update(metric_samples(page, "inference_pool_ready_pods"))
                await asyncio.sleep(0.2)

    async def fault(now: Callable[[], float]) -> tuple[float, float]:
        await asyncio.sleep(lead_s)
        node = cluster.node(await endpoint_stream_leader(cluster))
        seen.node = node.name
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        injected = now()
        try:
            await asyncio.to_thread(cluster.kill_node, node)
            # A view younger than 1 s at kill + 2 s holds metrics that arrived after the kill.
            await asyncio.sleep(2.0)
            waited = await wait_view_fresh(stack, timeout_s=down_s - 2.0)
            seen.fresh_after_s = None if waited is None else 2.0 + waited
            await asyncio.sleep(1.0)
        finally:
            done.set()
            await watcher
        restarted = time.monotonic()
        await asyncio.to_thread(cluster.start_node, node)
        await asyncio.to_thread(cluster.wait_healthy, 30.0)
        for _ in range(150):  # the replicas catch up within a few seconds; give up after ~30 s
            if await stream_replicas_current(cluster):
                seen.rejoined_s = time.monotonic() - restarted
                break
            await asyncio.sleep(0.2)
        return injected, injected

    total = lead_s + down_s + tail_s
    run = (await with_load("nats-node-killed", {"gw": stack.gateway_url}, fault, total))["gw"]
    run.notes["node"] = f"{seen.node} (endpoint stream leader)"
    run.notes["worst view age while down"] = f"{seen.worst_view_age_s:.1f} s"
    fresh = "not while down" if seen.fresh_after_s is None else f"{seen.fresh_after_s:.1f} s after the kill"
    run.notes["pickers' views fresh again"] = fresh
    run.notes["ready pods seen"] = "/".join(f"{v:g}" for v in sorted(seen.ready_pods_seen))
    rejoin = "not within 30 s" if seen.rejoined_s is None else f"{seen.rejoined_s:.1f} s after the restart"
    run.notes["rejoined"] = rejoin
    return run, seen


def without_outlier_detection(bootstrap: dict) -> None:
    """The baseline: the generated bootstrap minus outlier detection on the picker cluster.

    Without it a replica that dies is only removed by the gRPC health check (2 misses at
    2 s), and LEAST_REQUEST meanwhile *prefers* the dead replica, which has no active
    requests.
    """
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "infergate_picker":
            cluster.pop("outlier_detection", None)


# ------------------------------------------------------------------ report


def row(run: FaultRun, what: str) -> str:
    rec = run.recovery_s()
    recovery = "not recovered in the run" if rec is None else f"{rec:.1f} s"
    failed = sum(run.failures.values())
    by_status = ", ".join(f"{k}: {v}" for k, v in sorted(run.failures.items())) or "-"
    fault_end = run.ref_at if run.ref_at > run.injected_at else run.injected_at + 5.0
    during = run.success_ratio(run.injected_at, fault_end)
    notes = "; ".join(f"{k} {v}" for k, v in run.notes.items())
    after = run.success_ratio(run.ref_at + (rec or 0.0) + 0.001)
    return (f"| {run.name} | {what} | {len(run.records)} | {failed} ({by_status}) | {during:.2f} | "
            f"{after:.2f} | {recovery} | {notes or '-'} |")  # fmt: skip


HEADER = (
    "| fault | what was done | requests sent | failed (by status) | success ratio during the fault | "
    "success ratio after recovery | recovery time | notes |\n|---|---|---|---|---|---|---|---|"
)


FAULTS = (
    "nats-outage",
    "collector-killed",
    "pod-killed",
    "picker-killed",
    "all-pickers-down",
    "nats-node-killed",
    "poison-request",  # bench/faults_hostile.py
    "model-name-flood",
)


async def report(args: argparse.Namespace) -> list[str]:
    rows: list[str] = []
    only = set(args.only or FAULTS)
    if only & set(FAULTS[:5]):
        rows += await single_node_report(args, only)
    if "nats-node-killed" in only:
        rows += await cluster_report(args)
    if only & {"poison-request", "model-name-flood"}:
        from bench.faults_hostile import hostile_report

        rows += await hostile_report(args.time_scale, only)
    return rows


async def single_node_report(args: argparse.Namespace, only: set[str]) -> list[str]:
    rows: list[str] = []
    config = StackConfig(time_scale=args.time_scale, autoscaler=False, round_robin_envoy=False)
    say("starting the stack (NATS, 4 sim pods, 2 collectors, 2 pickers, Envoy FailClose + FailOpen)")
    async with Stack(config) as stack:
        fail_open = await stack.add_gateway("FailOpen")
        baseline = await stack.add_gateway("FailClose", without_outlier_detection)
        say(f"stack ready (logs: {stack.log_dir}); {args.qps:g} req/s of short Critical requests")

        if "nats-outage" in only:
            say("NATS stopped for 10 s ...")
            run = await nats_outage(stack)
            rows.append(row(run, "nats-server stopped 10 s, restarted (JetStream in memory: rebuilt)"))

        if "collector-killed" in only:
            collector = stack.collectors[stack.nodes[-1]]
            say("collector SIGKILL ...")
            restore = lambda: collector.start(60)  # noqa: E731
            run = await kill_and_restore(stack, "collector-killed", collector.kill, restore)
            run.notes["view"] = "node's pods kept as stale, routable"
            rows.append(row(run, f"SIGKILL collector of {stack.nodes[-1]} (2 pods)"))

        if "pod-killed" in only:
            pod = stack.pods[-1]
            say("pod SIGKILL ...")
            before = await retries(stack)
            run = await kill_and_restore(stack, "pod-killed", pod.process.kill, lambda: pod.process.start(60))
            tried, won = (a - b for a, b in zip(await retries(stack), before, strict=True))
            run.notes["Envoy fallback retries"] = f"{tried} ({won} succeeded)"
            rows.append(row(run, f"SIGKILL sim pod {pod.plan.name}"))

        if "picker-killed" in only:
            picker = stack.pickers[-1]
            say("picker replica SIGKILL (generated Envoy and an Envoy without outlier detection) ...")
            urls = {"generated": stack.gateway_url, "baseline": baseline}
            runs = await kill_and_restore(
                stack, "picker-killed", picker.process.kill, lambda: picker.process.start(60), after_s=10.0,
                urls=urls,
            )  # fmt: skip
            rows.append(row(runs["generated"], f"SIGKILL {picker.name} of 2"))
            runs["baseline"].name = "picker-killed (no outlier detection)"
            what = "the same kill, seen by an Envoy without outlier detection on the picker cluster"
            rows.append(row(runs["baseline"], what))

        if "all-pickers-down" in only:
            say("all pickers down for 5 s (FailClose and FailOpen Envoys side by side) ...")
            for mode, run in (await all_pickers_down(stack, fail_open)).items():
                rows.append(row(run, f"SIGKILL both pickers, restarted after 5 s; Envoy {mode}"))
    return rows


async def cluster_report(args: argparse.Namespace) -> list[str]:
    say("starting a 3-node NATS cluster and a stack on it (streams R3) ...")
    with NatsCluster() as cluster:
        config = cluster_stack_config(
            cluster, time_scale=args.time_scale, autoscaler=False, round_robin_envoy=False
        )
        async with Stack(config) as stack:
            say("NATS node leading the endpoint stream SIGKILLed, restarted once the views are fresh ...")
            run, _ = await nats_node_killed(stack, cluster)
    what = (
        "SIGKILL of the endpoint-stream leader of a 3-node cluster (streams R3), "
        "restarted 1 s after the views are fresh"
    )
    return [row(run, what)]


def merge_rows(text: str, rows: list[str]) -> str:
    """``text`` (a report) with its table rows of the same faults replaced, new ones appended."""
    lines = text.splitlines()
    new = {r.split("|")[1].strip(): r for r in rows}
    table = [i for i, line in enumerate(lines) if line.startswith("| ") and not line.startswith("| fault |")]
    for i in table:
        name = lines[i].split("|")[1].strip()
        if name in new:
            lines[i] = new.pop(name)
    at = (table[-1] + 1) if table else len(lines)
    lines[at:at] = list(new.values())
    return "\n".join(lines) + "\n"


def say(msg: str) -> None:
    print(f"[faults] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="infergate-bench faults", description=__doc__.splitlines()[0])
    ap.add_argument("--qps", type=float, default=15.0, help="Poisson rate of short requests (wall req/s)")
    ap.add_argument("--time-scale", type=float, default=10.0, help="sim wall seconds per H100 second")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report ('' = none)")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=FAULTS,
        help="run only these faults; their rows replace (or join) those already in --out",
    )
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    rows = asyncio.run(report(args))
    table = "\n".join([HEADER, *rows])
    print(table)
    took = time.monotonic() - started
    if str(args.out) and args.only and args.out.exists():
        args.out.write_text(merge_rows(args.out.read_text(), rows))
        say(f"updated {len(rows)} row(s) of {args.out}")
    elif str(args.out):
        machine = (
            f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Fault report\n\n"
            f"Command: `infergate-bench faults` (`make faults`), {args.qps:g} req/s Poisson of short "
            f"Critical requests (`{BASE_MODEL}`, 8 output tokens), sim time scale {args.time_scale:g}. "
            f"Machine: {machine}. The whole run took {took:.0f} s.\n\n"
            f"{table}\n\nRecovery time, defined precisely:{__doc__.split('defined precisely:')[1]}"
        )  # fmt: skip
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
