"""Realistic vLLM v1 ``/metrics`` pages, for tests, the benchmark and stand-in pods.

The layout follows what a vLLM v1 OpenAI server (prometheus_client + the FastAPI
instrumentator) exposes: HELP/TYPE comments, per-``engine`` series labelled with
``model_name``, counters with ``_total`` and ``_created`` series, latency and token
histograms with their buckets, ``vllm:cache_config_info`` and ``vllm:lora_requests_info``,
plus the process/GC/HTTP families that make a real page tens of kilobytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shared.vllm import ITERATION_TOKEN_BUCKETS, REQUEST_LATENCY_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS

_TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096]
_HTTP_BUCKETS = [
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
]


@dataclass
class EngineState:
    """What one vLLM engine (one data-parallel rank) reports."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    num_gpu_blocks: int = 7463
    block_size: int = 16


@dataclass
class PageState:
    """Everything a page shows; ``engines`` has one entry per data-parallel engine."""

    model: str = "meta-llama/Llama-2-7b-hf"
    engines: list[EngineState] = field(default_factory=lambda: [EngineState()])
    max_lora: int = 4
    running_loras: list[str] = field(default_factory=list)
    waiting_loras: list[str] = field(default_factory=list)
    lora_ts: float = 1_763_900_000.0
    legacy_kv_name: bool = False  # vllm:gpu_cache_usage_perc instead of vllm:kv_cache_usage_perc
    lora_enabled: bool = True
    requests_served: int = 1000  # drives the histogram counts, only for realism
    filler_histograms: int = 0  # extra histograms to grow the page (0 = a typical ~50 KB page)


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return f"{v}.0"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in pairs.items()) + "}"


def _histogram(
    out: list[str],
    name: str,
    doc: str,
    buckets: list[float],
    labels: dict[str, str],
    n: int,
    mean: float,
    created: float,
) -> None:
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} histogram")
    lab = _labels(labels)[1:-1]
    total = 0
    for b in buckets:
        # a smooth CDF so the counts look real: exponential with the given mean
        c = int(n * (1.0 - math.exp(-b / mean))) if mean > 0 else n
        total = max(total, c)
        out.append(f'{name}_bucket{{{lab},le="{float(b)}"}} {float(total)}')
    out.append(f'{name}_bucket{{{lab},le="+Inf"}} {float(n)}')
    out.append(f"{name}_count{{{lab}}} {float(n)}")
    out.append(f"{name}_sum{{{lab}}} {n * mean!r}")
    out.append(f"# HELP {name}_created {doc}")
    out.append(f"# TYPE {name}_created gauge")
    out.append(f"{name}_created{{{lab}}} {created!r}")


def render(state: PageState) -> str:
    """Render one page in the Prometheus text format (0.0.4), as vLLM would serve it."""
    out: list[str] = []
    created = 1_763_890_000.123
    # python / process collectors
    out += [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 19043.0',
        'python_gc_objects_collected_total{generation="1"} 3221.0',
        'python_gc_objects_collected_total{generation="2"} 412.0',
        "# HELP python_info Python platform information",
        "# TYPE python_info gauge",
        'python_info{implementation="CPython",major="3",minor="12",patchlevel="9",version="3.12.9"} 1.0',
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.",
        "# TYPE process_virtual_memory_bytes gauge",
        "process_virtual_memory_bytes 1.2345678848e+011",
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge",
        "process_resident_memory_bytes 5.123456e+09",
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        "process_cpu_seconds_total 1234.56",
        "# HELP process_open_fds Number of open file descriptors.",
        "# TYPE process_open_fds gauge",
        "process_open_fds 97.0",
    ]
    model = state.model
    engines = state.engines
    n = state.requests_served

    def per_engine(
        name: str, typ: str, doc: str, values: list[float], extras: list[dict[str, str]] | None = None
    ) -> None:
        base = name[:-6] if typ == "counter" and name.endswith("_total") else name
        out.append(f"# HELP {base} {doc}")
        out.append(f"# TYPE {base} {typ}")
        variants = extras or [{}]
        for extra in variants:
            for i, v in enumerate(values):
                lab = {"engine": str(i), "model_name": model, **extra}
                out.append(f"{name}{_labels(lab)} {_fmt(v)}")
        if typ == "counter":
            out.append(f"# HELP {base}_created {doc}")
            out.append(f"# TYPE {base}_created gauge")
            for extra in variants:
                for i in range(len(values)):
                    lab = {"engine": str(i), "model_name": model, **extra}
                    out.append(f"{base}_created{_labels(lab)} {created!r}")

    per_engine(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [e.running for e in engines],
    )
    per_engine(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [e.waiting for e in engines],
    )
    kv_name = "vllm:gpu_cache_usage_perc" if state.legacy_kv_name else "vllm:kv_cache_usage_perc"
    per_engine(kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage.", [e.kv_usage for e in engines])
    per_engine(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        [e.prefix_queries for e in engines],
    )
    per_engine(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        [e.prefix_hits for e in engines],
    )
    per_engine(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        [e.preemptions for e in engines],
    )
    per_engine(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [float(n * 251) for _ in engines],
    )
    per_engine(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [float(n * 225) for _ in engines],
    )
    per_engine(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [float(n // 3) for _ in engines],
        [{"finished_reason": r} for r in ("stop", "length", "abort")],
    )
    hists = [
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", _TOKEN_BUCKETS, 251.0),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.", _TOKEN_BUCKETS, 225.0),
        (
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
            300.0,
        ),
        (
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            _TOKEN_BUCKETS,
            225.0,
        ),
        ("vllm:request_params_n", "Histogram of the n request parameter.", [1, 2, 5, 10, 20], 1.0),
        (
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            _TOKEN_BUCKETS,
            300.0,
        ),
        (
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
            0.05,
        ),
        (
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TPOT_BUCKETS,
            0.012,
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
            3.0,
        ),
        (
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
            0.2,
        ),
        (
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
            2.8,
        ),
        (
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
            0.05,
        ),
        (
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
            2.7,
        ),
    ]
    for i in range(state.filler_histograms):
        hists.append((f"vllm:filler_{i}_seconds", "Filler histogram.", REQUEST_LATENCY_BUCKETS, 1.0))
    for name, doc, buckets, mean in hists:
        for e in range(len(engines)):
            _histogram(out, name, doc, buckets, {"engine": str(e), "model_name": model}, n, mean, created)
    out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig")
    out.append("# TYPE vllm:cache_config_info gauge")
    for i, e in enumerate(engines):
        lab = {
            "block_size": str(e.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": "True",
            "engine": str(i),
            "gpu_memory_utilization": "0.9",
            "is_attention_free": "False",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(e.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "builtin",
            "sliding_window": "None",
            "swap_space": "4",
            "swap_space_bytes": "4294967296",
        }
        out.append(f"vllm:cache_config_info{_labels(lab)} 1.0")
    if state.lora_enabled:
        out.append("# HELP vllm:lora_requests_info Running stats on lora requests.")
        out.append("# TYPE vllm:lora_requests_info gauge")
        # an older series first (vLLM keeps one series per label combination ever seen)
        out.append(
            "vllm:lora_requests_info"
            + _labels(
                {
                    "max_lora": str(state.max_lora),
                    "running_lora_adapters": "stale-adapter",
                    "waiting_lora_adapters": "",
                }
            )
            + f" {state.lora_ts - 30.0!r}"
        )
        out.append(
            "vllm:lora_requests_info"
            + _labels(
                {
                    "max_lora": str(state.max_lora),
                    "running_lora_adapters": ",".join(state.running_loras),
                    "waiting_lora_adapters": ",".join(state.waiting_loras),
                }
            )
            + f" {state.lora_ts!r}"
        )
    # the FastAPI instrumentator's families
    handlers = ["/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/v1/models"]
    out.append("# HELP http_requests_total Total number of requests by method, status and handler.")
    out.append("# TYPE http_requests_total counter")
    for h in handlers:
        out.append(f'http_requests_total{{handler="{h}",method="GET",status="2xx"}} {float(n)}')
    out.append("# HELP http_requests_created Total number of requests by method, status and handler.")
    out.append("# TYPE http_requests_created gauge")
    for h in handlers:
        out.append(f'http_requests_created{{handler="{h}",method="GET",status="2xx"}} {created!r}')
    for h in handlers:
        _histogram(
            out,
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels.",
            _HTTP_BUCKETS,
            {"handler": h},
            n,
            0.5,
            created,
        )
    out.append("")
    return "\n".join(out)


def page_of_size(target_bytes: int = 50_000, engines: int = 1) -> str:
    """A page of about ``target_bytes`` (grown with filler histograms)."""
    state = PageState(
        engines=[EngineState(running=7, waiting=3, kv_usage=0.42) for _ in range(engines)],
        running_loras=["sql-lora", "chat-lora"],
        waiting_loras=["tool-lora"],
    )
    text = render(state)
    while len(text) < target_bytes:
        state.filler_histograms += 1
        text = render(state)
    return text
