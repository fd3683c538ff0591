"""A narrow, fast parser for the few vLLM and SGLang ``/metrics`` families a scheduler needs.

A vLLM page is tens of kilobytes, mostly histogram buckets nobody here reads;
``prometheus_client.parser`` takes ~18 ms for one, too slow for 16 pods at 20 Hz. This
module finds only the sample lines of the wanted families with one regular expression
over the raw bytes (an alternation grouped under the literal prefixes ``vllm:`` and
``sglang:``, so the regex engine rejects other lines after a character or two), and
parses labels and values only on those few lines. The engine (vLLM or SGLang) is
detected from the families found; see :func:`summarize`.

Two layers:

* :func:`scan` returns the raw samples ``(name, labels, value)`` of the wanted families
  in page order, with the same semantics as ``prometheus_client``'s text parser
  (escapes ``\\\\``, ``\\"``, ``\\n`` in label values; ``NaN``/``+Inf``/``-Inf``; optional
  timestamps ignored; comments, blank lines, unknown families, ``*_created`` series
  skipped). It raises :class:`ParseError` on a malformed line *of a wanted family*;
  lines of other families are not validated (that is where the speed comes from).
  The property tests compare it with ``prometheus_client`` as the oracle.
* :func:`parse` aggregates those samples into a :class:`PageMetrics` and never raises:
  a page it cannot use gives a result whose ``error`` is set.

Aggregation across data-parallel engines (one series per ``engine`` label):

* ``running``, ``waiting``, the prefix-cache counters and preemptions are **summed**;
* KV-cache capacity (``num_gpu_blocks x block_size`` of each ``vllm:cache_config_info``
  series) is **summed**;
* KV-cache usage is the **capacity-weighted mean** of the engines' usage when every
  usage series has a matching ``cache_config_info`` series (same ``engine`` label) with
  a known capacity, else the plain mean; that is the fraction of the pod's whole KV
  cache in use. ``vllm:kv_cache_usage_perc`` is preferred to the older
  ``vllm:gpu_cache_usage_perc`` when a page has both;
* LoRA state comes from the ``vllm:lora_requests_info`` series with the largest value
  (the value is the time it was last updated, so the largest is the newest).

Non-finite values (``NaN``, ``+Inf``) never reach a snapshot: counts and counters treat
them as 0, KV usage ignores them; usage is clamped to [0, 1].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREEMPTIONS = "vllm:num_preemptions_total"
CACHE_CONFIG = "vllm:cache_config_info"
LORA_INFO = "vllm:lora_requests_info"

# SGLang (``python/sglang/srt/metrics/collector.py``): scheduler gauges labelled
# ``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank`` and, with data parallelism,
# ``dp_rank``; tokenizer counters labelled ``model_name`` (plus e.g. ``cache_source``).
SGL_RUNNING = "sglang:num_running_reqs"
SGL_WAITING = "sglang:num_queue_reqs"
SGL_KV_USAGE = "sglang:token_usage"
SGL_KV_CAPACITY = "sglang:max_total_num_tokens"
SGL_PROMPT_TOKENS = "sglang:prompt_tokens_total"
SGL_CACHED_TOKENS = "sglang:cached_tokens_total"
SGL_RETRACTIONS = "sglang:num_retracted_requests_total"

VLLM_FAMILIES: tuple[str, ...] = (
    RUNNING,
    WAITING,
    KV_USAGE,
    KV_USAGE_LEGACY,
    PREFIX_QUERIES,
    PREFIX_HITS,
    PREEMPTIONS,
    CACHE_CONFIG,
    LORA_INFO,
)
SGLANG_FAMILIES: tuple[str, ...] = (
    SGL_RUNNING,
    SGL_WAITING,
    SGL_KV_USAGE,
    SGL_KV_CAPACITY,
    SGL_PROMPT_TOKENS,
    SGL_CACHED_TOKENS,
    SGL_RETRACTIONS,
)
WANTED: tuple[str, ...] = VLLM_FAMILIES + SGLANG_FAMILIES

_VLLM_CORE = frozenset((RUNNING, WAITING, KV_USAGE, KV_USAGE_LEGACY))
_SGLANG_CORE = frozenset((SGL_RUNNING, SGL_WAITING, SGL_KV_USAGE))


def _alternation(prefix: str, names: tuple[str, ...]) -> bytes:
    """``prefix(?:rest1|rest2|...)``: one literal prefix per engine keeps the regex fast."""
    rests = b"|".join(re.escape(n[len(prefix) :].encode()) for n in names)
    return re.escape(prefix.encode()) + b"(?:" + rests + b")"


_ALT = _alternation("vllm:", VLLM_FAMILIES) + b"|" + _alternation("sglang:", SGLANG_FAMILIES)
# A wanted sample line: after a newline and optional blanks, the exact family name, then
# "{" or a blank (so "vllm:num_requests_running_created" and "..._foo" never match).
_LINE = re.compile(rb"\n[ \t]*(" + _ALT + rb")([ \t]*\{[^\n]*|[ \t][^\n]*)")
_FIRST_LINE = re.compile(rb"[ \t]*(" + _ALT + rb")([ \t]*\{[^\n]*|[ \t][^\n]*)")
_NAMES = {n.encode(): n for n in WANTED}

_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*')
_ESCAPE = re.compile(r'\\[\\n"]')
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


class ParseError(ValueError):
    """A line of a wanted family is malformed."""


@dataclass(slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _unescape(s: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], s) if "\\" in s else s


def _parse_value(tok: str, line: str) -> float:
    if "_" in tok:
        raise ParseError(f"invalid value {tok!r} in line {line[:200]!r}")
    try:
        return float(tok)
    except ValueError:
        raise ParseError(f"invalid value {tok!r} in line {line[:200]!r}") from None


def _parse_rest(name: str, rest: str) -> tuple[Sample, int]:
    """``rest`` is the line after the metric name: optional ``{labels}``, value, timestamp.

    Returns the sample and the length of ``rest`` up to the end of the label block
    (``-1`` without labels), which :func:`scan` uses as the label cache key.
    """
    labels: dict[str, str] = {}
    s = rest.lstrip(" \t")
    lead = len(rest) - len(s)
    label_end = -1
    if s.startswith("{"):
        pos, n = 1, len(s)
        while True:
            while pos < n and s[pos] in " \t":
                pos += 1
            if pos < n and s[pos] == "}":
                pos += 1
                break
            m = _LABEL.match(s, pos)
            if m is None:
                raise ParseError(f"invalid labels in line {name}{rest[:200]!r}")
            key = m.group(1)
            if key in labels:
                raise ParseError(f"duplicate label {key!r} in line {name}{rest[:200]!r}")
            labels[key] = _unescape(m.group(2))
            pos = m.end()
            if pos < n and s[pos] == ",":
                pos += 1
            elif pos < n and s[pos] == "}":
                pos += 1
                break
            else:
                raise ParseError(f"invalid labels in line {name}{rest[:200]!r}")
        label_end = lead + pos
        s = s[pos:]
    parts = s.split()
    if not parts:
        raise ParseError(f"missing value in line {name}{rest[:200]!r}")
    return Sample(name, labels, _parse_value(parts[0], name + rest)), label_end


# Parsed label blocks by their raw bytes. Label blocks repeat from scrape to scrape (the
# 15-label cache_config_info line is most of the label work), so a hit leaves only the
# value to parse. Bounded: cleared when full. The cached dicts are shared: read-only.
_LABEL_CACHE: dict[bytes, dict[str, str]] = {}
_LABEL_CACHE_MAX = 4096


def scan(page: bytes | str) -> list[Sample]:
    """The samples of the wanted families, in page order. Raises :class:`ParseError`.

    The returned ``labels`` dicts may be shared between calls: do not modify them.
    """
    data = page.encode() if isinstance(page, str) else page
    out: list[Sample] = []
    first = _FIRST_LINE.match(data)
    matches = ([first] if first is not None else []) + list(_LINE.finditer(data))
    cache = _LABEL_CACHE
    for m in matches:
        name = _NAMES[m.group(1)]
        raw = m.group(2)
        brace = raw.rfind(b"}") + 1
        if brace:
            labels = cache.get(raw[:brace])
            if labels is not None:
                tail = raw[brace:]
                parts = tail.split()
                if parts and tail.isascii() and b"_" not in parts[0]:
                    try:
                        out.append(Sample(name, labels, float(parts[0])))
                        continue
                    except ValueError:
                        pass  # the full parse below reports it
        rest = raw.decode("utf-8", "replace").rstrip("\r")
        sample, label_end = _parse_rest(name, rest)
        out.append(sample)
        if brace and label_end >= 0:
            block = rest[:label_end]
            if block.endswith("}") and block.encode() == raw[:brace]:
                if len(cache) >= _LABEL_CACHE_MAX:
                    cache.clear()
                cache[raw[:brace]] = sample.labels
    return out


@dataclass(slots=True)
class PageMetrics:
    """What one scrape tells the scheduler; ``error`` is set when the page was unusable."""

    model: str = ""
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_capacity_tokens: int = 0
    block_size: int = 16
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    lora_running: list[str] = field(default_factory=list)
    lora_waiting: list[str] = field(default_factory=list)
    max_lora: int = 0
    engines: int = 0
    engine: str = ""  # the model server's kind: "vllm" or "sglang"
    error: str = ""


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def _int_label(labels: dict[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        v = int(raw.strip())
    except ValueError:
        return None  # vLLM reports "None" before the KV cache is profiled
    return v if v >= 0 else None


def _adapters(raw: str) -> list[str]:
    return [a.strip() for a in raw.split(",") if a.strip()]


def summarize(samples: list[Sample]) -> PageMetrics:
    """Aggregate raw samples (from :func:`scan`, or from the oracle in tests).

    The engine is detected from the page: vLLM's load families make it a vLLM page (only
    its families are then read), else SGLang's make it an SGLang page.
    """
    if any(s.name in _VLLM_CORE for s in samples):
        return _summarize_vllm(samples)
    if any(s.name in _SGLANG_CORE for s in samples):
        return _summarize_sglang(samples)
    return PageMetrics(
        error="no vLLM or SGLang load metrics (vllm:num_requests_running/waiting, "
        "vllm:kv_cache_usage_perc, sglang:num_running_reqs/num_queue_reqs/token_usage) in page"
    )


def _summarize_vllm(samples: list[Sample]) -> PageMetrics:
    pm = PageMetrics(engine="vllm")
    running = waiting = 0.0
    kv_new: list[tuple[str | None, float]] = []
    kv_old: list[tuple[str | None, float]] = []
    capacity_by_engine: dict[str | None, int] = {}
    block_size: int | None = None
    lora: Sample | None = None
    engines: set[str | None] = set()
    for s in samples:
        name, labels, v = s.name, s.labels, s.value
        if not name.startswith("vllm:"):
            continue
        if not pm.model and labels.get("model_name"):
            pm.model = labels["model_name"]
        if name == RUNNING:
            running += _finite(v)
            engines.add(labels.get("engine"))
        elif name == WAITING:
            waiting += _finite(v)
            engines.add(labels.get("engine"))
        elif name == KV_USAGE:
            kv_new.append((labels.get("engine"), v))
        elif name == KV_USAGE_LEGACY:
            kv_old.append((labels.get("engine"), v))
        elif name == PREFIX_QUERIES:
            pm.prefix_queries += _finite(v)
        elif name == PREFIX_HITS:
            pm.prefix_hits += _finite(v)
        elif name == PREEMPTIONS:
            pm.preemptions += _finite(v)
        elif name == CACHE_CONFIG:
            bs, blocks = _int_label(labels, "block_size"), _int_label(labels, "num_gpu_blocks")
            if bs and block_size is None:
                block_size = bs
            if bs and blocks is not None:
                eng = labels.get("engine")
                capacity_by_engine[eng] = capacity_by_engine.get(eng, 0) + bs * blocks
        elif name == LORA_INFO and (
            lora is None or (not math.isnan(v) and (math.isnan(lora.value) or v >= lora.value))
        ):
            lora = s
    pm.running = int(max(0.0, running))
    pm.waiting = int(max(0.0, waiting))
    pm.engines = max(1, len(engines))
    kv = [(e, u) for e, u in (kv_new or kv_old) if math.isfinite(u)]
    if kv:
        caps = [capacity_by_engine.get(e, 0) for e, _ in kv]
        if all(c > 0 for c in caps):
            usage = sum(u * c for (_, u), c in zip(kv, caps, strict=True)) / sum(caps)
        else:
            usage = sum(u for _, u in kv) / len(kv)
        pm.kv_usage = min(1.0, max(0.0, usage))
    pm.kv_capacity_tokens = sum(capacity_by_engine.values())
    if block_size:
        pm.block_size = block_size
    if lora is not None:
        pm.lora_running = _adapters(lora.labels.get("running_lora_adapters", ""))
        pm.lora_waiting = _adapters(lora.labels.get("waiting_lora_adapters", ""))
        pm.max_lora = _int_label(lora.labels, "max_lora") or 0
    return pm


def _summarize_sglang(samples: list[Sample]) -> PageMetrics:
    """SGLang: one scheduler per ``dp_rank``; its tensor/pipeline ranks repeat its values.

    Gauges and the retraction counter are taken once per ``dp_rank`` (the largest of the
    rank series, which normally agree) and summed over ranks; KV use is the
    capacity-weighted mean over ranks when every rank reports ``max_total_num_tokens``,
    else the plain mean. The tokenizer's prompt/cached token counters (one process) are
    summed over all their series: they are the prefix-cache queries and hits.
    """
    pm = PageMetrics(engine="sglang")
    per_rank: dict[str, dict[str | None, float]] = {}
    for s in samples:
        name, labels, v = s.name, s.labels, s.value
        if not name.startswith("sglang:"):
            continue
        if not pm.model and labels.get("model_name"):
            pm.model = labels["model_name"]
        if name == SGL_PROMPT_TOKENS:
            pm.prefix_queries += _finite(v)
        elif name == SGL_CACHED_TOKENS:
            pm.prefix_hits += _finite(v)
        else:
            ranks = per_rank.setdefault(name, {})
            rank = labels.get("dp_rank")
            if name == SGL_KV_USAGE and not math.isfinite(v):
                continue  # usage ignores non-finite values
            v = v if name == SGL_KV_USAGE else _finite(v)
            prev = ranks.get(rank)
            ranks[rank] = v if prev is None else max(prev, v)
    pm.running = int(max(0.0, sum(per_rank.get(SGL_RUNNING, {}).values())))
    pm.waiting = int(max(0.0, sum(per_rank.get(SGL_WAITING, {}).values())))
    pm.preemptions = sum(per_rank.get(SGL_RETRACTIONS, {}).values())
    capacity = {r: int(c) for r, c in per_rank.get(SGL_KV_CAPACITY, {}).items() if c > 0}
    pm.kv_capacity_tokens = sum(capacity.values())
    usage = per_rank.get(SGL_KV_USAGE, {})
    if usage:
        caps = [capacity.get(r, 0) for r in usage]
        if all(c > 0 for c in caps):
            u = sum(usage[r] * capacity[r] for r in usage) / sum(caps)
        else:
            u = sum(usage.values()) / len(usage)
        pm.kv_usage = min(1.0, max(0.0, u))
    ranks = set()
    for name in (SGL_RUNNING, SGL_WAITING):
        ranks.update(per_rank.get(name, {}))
    pm.engines = max(1, len(ranks))
    return pm


def parse(page: bytes | str) -> PageMetrics:
    """Parse one ``/metrics`` page; never raises (``error`` says what was wrong)."""
    try:
        return summarize(scan(page))
    except ParseError as exc:
        return PageMetrics(error=str(exc))
    except Exception as exc:  # defensive: a parser bug must not kill a scrape loop
        return PageMetrics(error=f"parser failure: {exc!r}")
