"""Collector CPU at idle, before and after the idle scrape rate, in the same run.

    .venv/bin/python -m bench.collector_idle_bench [--pods 8] [--seconds 60] [--warmup 5]

One simulator process serves ``--pods`` idle vLLM pods (``python -m sim serve``, no load);
one nats-server; two collector processes (``python -m collector``, their real command
line) scrape the same pods at the same time, so they share the machine's contention:

* **before**: ``--scrape-interval 0.05 --idle-scrape-interval 0`` (the fast rate always);
* **after**: the defaults (``--idle-scrape-interval 0.1``);
* with ``--also 0.125,...``: one more collector per extra idle interval, in the same run.

They publish under different namespaces, so their subjects never mix; each has one picker
(``python -m picker``, its pool in that namespace) applying its snapshots, since a
picker's idle cost is mostly applying snapshots and the idle rate changes how many are
published (``--no-pickers`` leaves them out). After ``--warmup``
seconds (connections open, pods settled on the idle rate) each collector's process CPU
time (user + system, from ``/proc/<pid>/stat``: what it used, whatever else runs on the
machine) is read over ``--seconds``, with its scrapes and publishes from its own
``/metrics``. A NATS subscriber (in this process, not measured) records what a picker
would see: for every endpoint, how old its newest snapshot (``ts``, the scrape time) is
when the next one arrives, i.e. the worst age between two updates; the pickers count a
snapshot older than 0.2 s as stale. Prints a Markdown table and the ratio after/before of
CPU seconds.

The price of the idle rate is the delay before a pod's first request shows in its
snapshot: after the CPU window, ``--rounds`` times, one request is sent to every pod at once
(all pods back on the idle rate first) and the subscriber records when each collector's
first snapshot showing it (running or waiting > 0) arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included, children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def wait_port_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            text = path.read_text()
            if text:
                return {k: int(v) for k, v in json.loads(text)["ports"].items()}
        time.sleep(0.1)
    raise RuntimeError(f"no port file {path} after {timeout} s")


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"collector on ops port {port} not ready after {timeout} s")


def counters(port: int) -> dict[str, float]:
    """Scrapes, publishes and idle endpoints from one collector's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"scrapes": 0.0, "publishes": 0.0, "idle": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "infergate_collector_scrape_duration_seconds_count":
                out["scrapes"] += s.value
            elif s.name == "infergate_collector_publish_total" and s.labels.get("kind") == "snapshot":
                out["publishes"] += s.value
            elif s.name == "infergate_collector_idle_rate_endpoints":
                out["idle"] = s.value
    return out


class AgeWatcher:
    """Subscribes to every endpoint subject; records each snapshot's age when the next arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.recording = False
        self.ages: dict[str, list[float]] = {}  # namespace (= collector variant) -> ages (s)
        self._last_ts: dict[str, float] = {}
        self.busy_since: dict[tuple[str, str], float] = {}  # (namespace, pod) -> first busy receipt
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> AgeWatcher:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the NATS subscriber did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        import nats

        from shared import schemas
        from shared.subjects import Subjects

        decoder = schemas.endpoint_decoder()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        async def on_msg(msg) -> None:
            now = time.time()
            m = decoder.decode(msg.data)
            if not isinstance(m, schemas.EndpointSnapshot):
                return
            if m.running + m.waiting > 0:
                self.busy_since.setdefault((m.namespace, m.pod), now)
            prev = self._last_ts.get(msg.subject)
            if self.recording and prev is not None:
                self.ages.setdefault(m.namespace, []).append(now - prev)
            self._last_ts[msg.subject] = max(m.ts, prev or 0.0)

        nc = await nats.connect(self.url)
        await nc.subscribe(Subjects().all_endpoints(), cb=on_msg)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()


def send_request(port: int, sent: dict[int, float]) -> None:
    """One completion request (blocking: run it in a thread); its send time in ``sent``."""
    body = json.dumps(
        {"model": "meta-llama/Llama-2-7b-hf", "prompt": "Say something. " * 20, "max_tokens": 64}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
    )
    sent[port] = time.time()
    with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def start_end_cpu(start: dict, end: dict, name: str) -> float:
    return end[name][0] - start[name][0]


def gauge(port: int, name: str) -> float:
    """One unlabelled-or-single-series gauge from a service's /metrics (NaN if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name:
                return smp.value
    return float("nan")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "?"


def pool_yaml(namespace: str) -> str:
    """The InferencePool a variant's picker serves (its collector publishes in ``namespace``)."""
    return (
        "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\n"
        f"metadata: {{name: pool, namespace: {namespace}}}\n"
        "spec: {selector: {matchLabels: {app: pool}}, targetPorts: [{number: 8000}],\n"
        "  endpointPickerRef: {name: infergate-picker, port: {number: 9002}}}\n"
    )


def run(
    pods: int, seconds: float, warmup: float, also: list[float], pickers: bool = True, rounds: int = 3
) -> dict:
    from shared.natsd import NatsServer

    tmp = Path(tempfile.mkdtemp(prefix="collector-idle-"))
    procs: list[subprocess.Popen] = []
    nats = NatsServer().start()
    watcher = AgeWatcher(nats.url).start()

    def spawn(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        sim_ports = tmp / "sim.ports.json"
        sim = spawn(
            "sim",
            [sys.executable, "-m", "sim", "serve", "--ports", ",".join(["0"] * pods),
             "--ops-port", "0", "--port-file", str(sim_ports), "--log-level", "WARNING"],
        )  # fmt: skip
        ports = wait_port_file(sim_ports, sim)
        variants = {
            "before": ["--scrape-interval", "0.05", "--idle-scrape-interval", "0"],
            "after": [],  # the defaults
            **{f"after-{v:g}": ["--idle-scrape-interval", str(v)] for v in also},
        }
        collectors: dict[str, tuple[subprocess.Popen, int]] = {}
        for name, extra in variants.items():
            argv = [sys.executable, "-m", "collector", "--node-name", "bench", "--collector-name", name,
                    "--nats-url", nats.url, "--ops-port", "0", "--port-file", str(tmp / f"{name}.ports.json"),
                    "--log-level", "WARNING", *extra]  # fmt: skip
            for i in range(pods):
                argv += ["--target", f"{name}/pool/sim-{i}=127.0.0.1:{ports[f'pod-{i}']}"]
            p = spawn(name, argv)
            collectors[name] = (p, 0)
        picker_procs: dict[str, subprocess.Popen] = {}
        for name in variants if pickers else ():
            (tmp / f"{name}.pool.yaml").write_text(pool_yaml(name))
            picker_procs[name] = spawn(
                f"picker-{name}",
                [sys.executable, "-m", "picker", "--pool-name", "pool", "--pool-namespace", name,
                 "--config-files", str(tmp / f"{name}.pool.yaml"), "--nats-url", nats.url,
                 "--grpc-host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0",
                 "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--replica-name", f"picker-{name}",
                 "--port-file", str(tmp / f"picker-{name}.ports.json"), "--log-level", "WARNING"],
            )  # fmt: skip
        for name, (p, _) in list(collectors.items()):
            ops = wait_port_file(tmp / f"{name}.ports.json", p)["ops"]
            wait_ready(ops)
            collectors[name] = (p, ops)
        picker_ports: dict[str, int] = {}
        for name, p in picker_procs.items():
            picker_ports[name] = wait_port_file(tmp / f"picker-{name}.ports.json", p)["metrics"]
            wait_ready(picker_ports[name])
        time.sleep(warmup)
        start = {n: (cpu_seconds(p.pid), counters(ops)) for n, (p, ops) in collectors.items()}
        pstart = {n: cpu_seconds(p.pid) for n, p in picker_procs.items()}
        t0 = time.monotonic()
        watcher.recording = True
        time.sleep(seconds)
        watcher.recording = False
        wall = time.monotonic() - t0
        end = {n: (cpu_seconds(p.pid), counters(ops)) for n, (p, ops) in collectors.items()}
        pend = {n: cpu_seconds(p.pid) for n, p in picker_procs.items()}
        seen = {n: gauge(port, "infergate_picker_view_endpoints") for n, port in picker_ports.items()}
        res: dict = {"pods": pods, "seconds": wall}
        for n in collectors:
            (c0, m0), (c1, m1) = start[n], end[n]
            res[n] = {
                "cpu_s": c1 - c0,
                "cores": (c1 - c0) / wall,
                "scrapes_per_s": (m1["scrapes"] - m0["scrapes"]) / wall,
                "publishes_per_s": (m1["publishes"] - m0["publishes"]) / wall,
                "idle_endpoints": m1["idle"],
                "ratio": (c1 - c0) / max(1e-9, start_end_cpu(start, end, "before")),
                "age_p50": _pct(watcher.ages.get(n, []), 0.5),
                "age_p99": _pct(watcher.ages.get(n, []), 0.99),
                "age_max": max(watcher.ages.get(n, [float("nan")])),
                "age_over_200ms": sum(a > 0.2 for a in watcher.ages.get(n, [])),
                "age_samples": len(watcher.ages.get(n, [])),
                "picker_cpu_s": pend[n] - pstart[n] if n in pend else None,
                "picker_endpoints": seen.get(n),
            }
        res["variants"] = list(collectors)
        # the first request to an idle pod: how long until each collector's snapshot shows it
        delays: dict[str, list[float]] = {n: [] for n in collectors}
        for _ in range(rounds):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(
                counters(ops)["idle"] < pods for n, (_p, ops) in collectors.items() if n != "before"
            ):
                time.sleep(0.2)
            watcher.busy_since.clear()
            sent: dict[int, float] = {}
            threads = [
                threading.Thread(target=send_request, args=(ports[f"pod-{i}"], sent), daemon=True)
                for i in range(pods)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for n in collectors:
                for i in range(pods):
                    seen = watcher.busy_since.get((n, f"sim-{i}"))
                    if seen is not None and ports[f"pod-{i}"] in sent:
                        delays[n].append(seen - sent[ports[f"pod-{i}"]])
        for n in collectors:
            d = delays[n]
            res[n]["first_request"] = {
                "n": len(d),
                "missed": rounds * pods - len(d),
                "p50": _pct(d, 0.5),
                "max": max(d) if d else float("nan"),
            }
        res["ratio"] = res["after"]["ratio"]
        return res
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        watcher.stop()
        nats.close()


def report(res: dict, argv: list[str]) -> str:
    lines = [
        f"command: `python -m bench.collector_idle_bench {' '.join(argv)}`".rstrip(),
        f"commit: {res['commit']}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"{res['pods']} idle simulated vLLM pods, the collectors scraping them at the same time for "
        f"{res['seconds']:.1f} s; process CPU (user + system) of each collector, and the age of an "
        "endpoint's newest snapshot when the next one arrives (what a picker sees at worst between "
        "two updates; stale above 0.2 s):",
        "",
        "| collector | idle rate | CPU s | cores | scrapes/s | snapshots published/s "
        "| endpoints on the idle rate | CPU vs before | age p50 / p99 / max (ms) | ages > 200 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in res["variants"]:
        labels = {"before": "off (0.05 s always)", "after": "0.1 s (default)"}
        label = labels.get(n, n.split("-", 1)[-1] + " s")
        r = res[n]
        lines.append(
            f"| {n} | {label} | {r['cpu_s']:.2f} | {r['cores']:.3f} | {r['scrapes_per_s']:.0f} "
            f"| {r['publishes_per_s']:.0f} | {r['idle_endpoints']:.0f} | {r['ratio']:.2f} "
            f"| {r['age_p50'] * 1e3:.0f} / {r['age_p99'] * 1e3:.0f} / {r['age_max'] * 1e3:.0f} "
            f"| {r['age_over_200ms']} of {r['age_samples']} |"
        )
    lines += ["", f"ratio after/before (CPU s): **{res['ratio']:.2f}**"]
    lines += [
        "",
        "The first request to an idle pod: from its send to the first snapshot showing it "
        "(running or waiting > 0) at a subscriber; the same requests for every collector:",
        "",
        "| collector | requests | p50 (ms) | max (ms) | not seen (finished between two scrapes) |",
        "|---|---|---|---|---|",
    ]
    for n in res["variants"]:
        f = res[n]["first_request"]
        lines.append(f"| {n} | {f['n']} | {f['p50'] * 1e3:.0f} | {f['max'] * 1e3:.0f} | {f['missed']} |")
    if res["before"]["picker_cpu_s"] is not None:
        lines += [
            "",
            "One picker per collector, applying its snapshots (idle: no requests):",
            "",
            "| variant | endpoints in its view | picker CPU s | picker cores | collector + picker cores "
            "| vs before |",
            "|---|---|---|---|---|---|",
        ]
        both0 = res["before"]["cpu_s"] + res["before"]["picker_cpu_s"]
        for n in res["variants"]:
            r = res[n]
            both = r["cpu_s"] + r["picker_cpu_s"]
            lines.append(
                f"| {n} | {r['picker_endpoints']:.0f} | {r['picker_cpu_s']:.2f} "
                f"| {r['picker_cpu_s'] / res['seconds']:.3f} "
                f"| {both / res['seconds']:.3f} | {both / both0:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--also", default="", help="comma-separated extra idle intervals to measure too")
    p.add_argument("--no-pickers", action="store_true", help="no picker per collector")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one request per pod (first delay)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()
    also = [float(v) for v in args.also.split(",") if v.strip()]
    commit = git_commit()  # what the collectors run: taken before they start
    res = run(args.pods, args.seconds, args.warmup, also, pickers=not args.no_pickers, rounds=args.rounds)
    res["commit"] = commit
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(report(res, sys.argv[1:]))


if __name__ == "__main__":
    main()
