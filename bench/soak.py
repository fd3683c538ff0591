"""``infergate-bench soak``: the stack for minutes under valid and hostile traffic; memory stays flat.

One :class:`~bench.stack.Stack` (nats-server, 4 simulated pods, 2 collectors, 2 picker
replicas, the autoscaler, Envoy) with ``--unknown-model-policy route`` (the worst case:
every invented model name is routed and labelled). Two loads run side by side through the
gateway for ``--minutes``:

* **valid**: Poisson requests over the configured models (``base``, ``chat``, ``summarize``,
  ``batch``), which must all succeed;
* **hostile**: a Poisson mix of requests each of which must fail alone or be served without
  leaving a trace: ``max_tokens`` past 64 bits, 100,000 nested ``[``, an empty body, 95
  extra headers, a random model name, a 100 KB model name, a random 100-character
  fairness id, a random 8 KB request id.

Each service's resident memory (``VmRSS`` of its process) is sampled before the traffic,
after a warm-up (the interpreters' caches, gRPC and aiohttp pools filling), every
``--sample-s`` and at the end. Growth is measured from the warm-up sample to the end; the
goal is under 10% for every service and zero crashes (every process still the same PID,
no supervised task restarted). A shared machine moves these numbers: the report says so.

Not a test: it takes minutes. ``--minutes 1`` for a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.loadgen import LoadItem, run_load
from bench.stack import BASE_MODEL, Stack, StackConfig, metric_samples

DEFAULT_OUT = Path("bench/results/soak.md")
GOAL_GROWTH = 0.10
VALID_MODELS = (BASE_MODEL, "chat", "summarize")  # not the Sheddable "batch": it may rightly get 429
PROMPT = "Summarize the following: the quick brown fox jumps over the lazy dog. " * 2
HOSTILE_KINDS = (
    "huge max_tokens",
    "deep JSON",
    "empty body",
    "90 headers",
    "random model",
    "100 KB model",
    "random fairness id",
    "8 KB request id",
)


# ------------------------------------------------------------------ memory


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def services(stack: Stack) -> dict[str, int]:
    """Service name -> PID, for every process of the stack."""
    out: dict[str, int] = {}
    if stack.nats.proc is not None:
        out["nats-server"] = stack.nats.proc.pid
    for p in stack.pods:
        out[f"sim {p.plan.name}"] = p.process.proc.pid  # type: ignore[union-attr]
    for node, c in stack.collectors.items():
        out[f"collector {node}"] = c.proc.pid  # type: ignore[union-attr]
    for p in stack.pickers:
        out[p.name] = p.process.proc.pid  # type: ignore[union-attr]
    if stack.autoscaler is not None:
        out["autoscaler"] = stack.autoscaler.proc.pid  # type: ignore[union-attr]
    if stack.envoy is not None and stack.envoy.proc is not None:
        out["envoy"] = stack.envoy.proc.pid
    return out


@dataclass
class Samples:
    pids: dict[str, int]
    at: list[float] = field(default_factory=list)  # seconds since the traffic started
    rss: dict[str, list[int]] = field(default_factory=dict)

    def take(self, t: float) -> None:
        self.at.append(t)
        for name, pid in self.pids.items():
            self.rss.setdefault(name, []).append(rss_kib(pid))


# ------------------------------------------------------------------ traffic


def valid_items(seed: int) -> Iterator[LoadItem]:
    rng = random.Random(seed)
    while True:
        yield LoadItem(PROMPT, rng.choice((8, 16, 32)), model=rng.choice(VALID_MODELS))


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def hostile_request(kind: str, rng: random.Random) -> tuple[dict[str, str], bytes]:
    """(headers, body) of one hostile request of ``kind``."""

    def body(**kw: object) -> bytes:
        return json.dumps({"model": BASE_MODEL, "prompt": "x", "max_tokens": 4, **kw}).encode()

    headers = {"content-type": "application/json"}
    if kind == "huge max_tokens":
        return headers, body(max_tokens=10**30)
    if kind == "deep JSON":
        return headers, b'{"model":"' + BASE_MODEL.encode() + b'","prompt":' + b"[" * 100_000 + b"}"
    if kind == "empty body":
        return headers, b""
    if kind == "90 headers":  # with aiohttp's own 6, past what the picker's headers leave room for
        return {**headers, **{f"x-junk-{i}": _word(rng, 8) for i in range(90)}}, body()
    if kind == "random model":
        return headers, body(model=_word(rng, rng.randint(4, 40)))
    if kind == "100 KB model":
        return headers, body(model=_word(rng, 100_000))
    if kind == "random fairness id":
        return {**headers, "x-llm-d-inference-fairness-id": _word(rng, 100)}, body()
    if kind == "8 KB request id":
        return {**headers, "x-request-id": _word(rng, 8_192)}, body()
    raise ValueError(kind)


async def hostile_load(url: str, qps: float, duration_s: float, seed: int) -> Counter[tuple[str, str]]:
    """Send the hostile mix for ``duration_s``; returns (kind, status) counts."""
    rng = random.Random(seed)
    counts: Counter[tuple[str, str]] = Counter()
    tasks: set[asyncio.Task] = set()
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(session: aiohttp.ClientSession, kind: str) -> None:
        headers, data = hostile_request(kind, rng)
        try:
            async with session.post(f"{url}/v1/completions", data=data, headers=headers) as r:
                await r.read()
                counts[(kind, str(r.status))] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            counts[(kind, type(exc).__name__)] += 1

    t0 = time.monotonic()
    at = 0.0
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as session:
        while True:
            at += rng.expovariate(qps)
            if at > duration_s:
                break
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(session, rng.choice(HOSTILE_KINDS)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=60)
    return counts


# ------------------------------------------------------------------ observation


async def picker_pages(stack: Stack) -> list[str]:
    pages = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for p in stack.pickers:
            try:
                async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
                    pages.append(await r.text())
            except (aiohttp.ClientError, TimeoutError):
                pages.append("")
    return pages


async def autoscaler_tables(stack: Stack) -> list[str]:
    if stack.autoscaler is None or stack.autoscaler.ready_url is None:
        return []
    url = stack.autoscaler.ready_url.replace("/readyz", "/metrics")
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            page = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return ["autoscaler: /metrics not reachable"]
    return [
        f"autoscaler: `{ln}`"
        for ln in page.splitlines()
        if ln.startswith("infergate_autoscaler_table_entries")
    ]


def crashes(stack: Stack, pids: dict[str, int]) -> list[str]:
    """What died or restarted: a changed or exited process, a supervised task that crashed."""
    out = [name for name, pid in services(stack).items() if pids.get(name) != pid]
    procs = [
        *(p.process for p in stack.pods),
        *stack.collectors.values(),
        *(p.process for p in stack.pickers),
    ]
    if stack.autoscaler is not None:
        procs.append(stack.autoscaler)
    out += [f"{p.name} exited" for p in procs if not p.running]
    for path in sorted(stack.log_dir.glob("*.log")):
        n = sum(1 for line in path.open(errors="replace") if " crashed" in line)
        if n:
            out.append(f"{path.stem}: {n} supervised-task crash lines")
    return out


def tracebacks(stack: Stack) -> dict[str, int]:
    """Log lines carrying a traceback, per service (a rejected request may log one: not a crash)."""
    out = {}
    for path in sorted(stack.log_dir.glob("*.log")):
        n = sum(1 for line in path.open(errors="replace") if "Traceback" in line)
        if n:
            out[path.stem] = n
    return out


# ------------------------------------------------------------------ report


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def report(args: argparse.Namespace, s: Samples, warm_i: int, result: dict) -> tuple[str, bool]:
    lines = [
        "| service | RSS before traffic (MiB) | after warm-up | min after warm-up | max after warm-up "
        "| end | growth warm-up -> end | growth over the second half |",
        "|---|---|---|---|---|---|---|---|",
    ]
    half = min(range(len(s.at)), key=lambda i: abs(s.at[i] - s.at[-1] / 2))
    ok = True
    for name, values in s.rss.items():
        warm, end = values[warm_i], values[-1]
        after = values[warm_i:]
        growth = (end - warm) / warm if warm else float("nan")
        second = (end - values[half]) / values[half] if values[half] else float("nan")
        ok &= growth < GOAL_GROWTH
        lines.append(
            f"| {name} | {mib(values[0])} | {mib(warm)} | {mib(min(after))} | {mib(max(after))} | {mib(end)} "
            f"| {growth * 100:+.1f}% | {second * 100:+.1f}% |"
        )
    ok &= not result["crashes"]
    return "\n".join(lines), ok


def render(args: argparse.Namespace, s: Samples, warm_i: int, result: dict, took: float) -> str:
    table, ok = report(args, s, warm_i, result)
    hostile = result["hostile"]
    kinds = "\n".join(
        f"| {kind} | {sum(n for (k, _), n in hostile.items() if k == kind)} | "
        + ", ".join(f"{st}: {n}" for (k, st), n in sorted(hostile.items()) if k == kind)
        + " |"
        for kind in HOSTILE_KINDS
    )
    py = platform.python_version()
    machine = f"{os.cpu_count()} cores, Python {py}, {platform.system()} {platform.machine()}"
    crashes_text = "; ".join(result["crashes"]) or "none"
    times = ", ".join(f"{t:.0f}" for t in s.at)
    pages = " / ".join(
        f"{a:,} -> {b:,}" for a, b in zip(result["page_start"], result["page_end"], strict=True)
    )
    tables = "\n".join(f"- {line}" for line in result["tables"]) or "- (none)"
    return f"""# Soak: {args.minutes:g} minutes of valid and hostile traffic

Command: `infergate-bench soak --minutes {args.minutes:g} --qps {args.qps:g} \
--hostile-qps {args.hostile_qps:g}` at commit `{args.commit}`.
Machine: {machine}, **shared with other helpers' builds and tests**
(RSS is little affected by CPU contention; latencies would be, and are not reported).
The whole run took {took:.0f} s.

Stack: nats-server, 4 simulated pods (time scale {args.time_scale:g}), 2 collectors, 2 pickers
(`--unknown-model-policy route`: invented names are routed, the worst case for labels), the
autoscaler, Envoy. Valid load: {args.qps:g} req/s Poisson over {", ".join(VALID_MODELS)}.
Hostile load: {args.hostile_qps:g} req/s Poisson, one kind at random per request.

**Verdict: {"PASS" if ok else "FAIL"}** (goal: every service's RSS growth from the warm-up sample to
the end under {GOAL_GROWTH:.0%}, zero crashes; the valid requests' outcome is reported below).

## Resident memory

Samples at {times} s after the traffic started (warm-up sample at {s.at[warm_i]:.0f} s).

{table}

## Requests

Valid: {result["valid_sent"]} sent, {result["valid_failed"]} failed ({result["valid_errors"] or "-"}).

| hostile kind | sent | outcome (HTTP status or client error) |
|---|---|---|
{kinds}

Crashes and restarts: {crashes_text}. Log lines with a traceback (not crashes: a request
refused by a server's HTTP parser is logged so): {result["tracebacks"] or "none"}.

## Bounded state at the end

Pickers' `/metrics` page, bytes at the warm-up sample -> end: {pages}.

{tables}
"""


# ------------------------------------------------------------------ main


async def soak(args: argparse.Namespace) -> tuple[str, bool]:
    duration = args.minutes * 60.0
    warm_s = min(60.0, duration / 10)
    config = StackConfig(
        time_scale=args.time_scale,
        unknown_model_policy="route",
        round_robin_envoy=False,
        keep_work_dir=args.keep_logs,
    )
    say("starting the stack (NATS, 4 sim pods, 2 collectors, 2 pickers, autoscaler, Envoy)")
    started = time.monotonic()
    async with Stack(config) as stack:
        pids = services(stack)
        samples = Samples(pids)
        samples.take(0.0)
        say(f"stack up (logs: {stack.log_dir}); {args.minutes:g} min of traffic")
        t0 = time.monotonic()
        valid = asyncio.create_task(
            run_load(
                stack.gateway_url, valid_items(args.seed), args.qps, duration,
                max_requests=int(args.qps * duration * 3) + 100, request_timeout_s=60.0, drain_timeout_s=60.0,
                seed=args.seed,
            )
        )  # fmt: skip
        hostile = asyncio.create_task(
            hostile_load(stack.gateway_url, args.hostile_qps, duration, args.seed + 1)
        )
        await asyncio.sleep(warm_s)
        samples.take(time.monotonic() - t0)
        warm_i = 1
        page_start = [len(p) for p in await picker_pages(stack)]
        while not (valid.done() and hostile.done()):
            await asyncio.wait({valid, hostile}, timeout=args.sample_s)
            samples.take(time.monotonic() - t0)
            say(f"{samples.at[-1]:.0f} s: " + ", ".join(f"{n} {mib(v[-1])}" for n, v in samples.rss.items()))
        result_valid, counts = valid.result(), hostile.result()
        pages = await picker_pages(stack)
        tables = []
        for p, page in zip(stack.pickers, pages, strict=True):
            for line in page.splitlines():
                if line.startswith(
                    ("infergate_picker_table_entries", "infergate_picker_metric_label_values")
                ):
                    tables.append(f"{p.name}: `{line}`")
        tables += await autoscaler_tables(stack)
        summary = result_valid.summary()
        result = {
            "valid_sent": summary["sent"],
            "valid_failed": summary["sent"] - summary["ok"],
            "valid_errors": summary["errors"],
            "hostile": counts,
            "crashes": crashes(stack, pids),
            "tracebacks": tracebacks(stack),
            "page_start": page_start,
            "page_end": [len(p) for p in pages],
            "tables": tables,
        }
        view_ages = [metric_samples(p, "infergate_picker_view_max_age_seconds") for p in pages]
        say(f"view ages at the end: {view_ages}")
    took = time.monotonic() - started
    return render(args, samples, warm_i, result, took), report(args, samples, warm_i, result)[1]


def say(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="infergate-bench soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="traffic duration")
    ap.add_argument("--qps", type=float, default=8.0, help="valid requests per second (Poisson)")
    ap.add_argument("--hostile-qps", type=float, default=8.0, help="hostile requests per second (Poisson)")
    ap.add_argument("--sample-s", type=float, default=30.0, help="RSS sampling period")
    ap.add_argument("--time-scale", type=float, default=10.0, help="sim wall seconds per H100 second")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--keep-logs", action="store_true", help="keep the stack's work dir (logs) after the run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report ('' = none)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    args.commit = commit()  # the code under test: taken before the minutes of traffic
    text, ok = asyncio.run(soak(args))
    print(text)
    if str(args.out):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        say(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
