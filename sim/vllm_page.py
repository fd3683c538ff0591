"""vLLM v1's ``/metrics`` page: the one renderer for the simulator, the tests and the benchmarks.

Family names, labels and histogram buckets are those of the vLLM v1 engine
(``vllm/v1/metrics/loggers.py``): per-``engine`` series labelled ``model_name``,
``vllm:cache_config_info`` and ``vllm:lora_requests_info`` (one series per adapter
combination ever seen, the value being its update time). A :class:`PageState` says what
the page shows; the simulator fills it from its engine on every scrape and passes its
live histograms, while tests and benchmarks set it by hand and get histograms with
realistic counts (:func:`synthetic_histograms`). With ``extras`` the page also carries the
process, GC and HTTP families prometheus_client and the FastAPI instrumentator add,
which make a real page tens of kilobytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.vllm import ITERATION_TOKEN_BUCKETS, REQUEST_LATENCY_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS
from sim.histogram import Histogram, build_1_2_5_buckets, esc, fmt, labels

CREATED = 1_763_890_000.123  # the _created timestamp generated pages use

DEFAULT_CACHE_INFO = {
    "cache_dtype": "auto",
    "calculate_kv_scales": "False",
    "cpu_offload_gb": "0",
    "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.9",
    "is_attention_free": "False",
    "num_cpu_blocks": "None",
    "num_gpu_blocks_override": "None",
    "prefix_caching_hash_algo": "builtin",
    "sliding_window": "None",
    "swap_space": "4",
    "swap_space_bytes": "4294967296",
}


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
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    success: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})


@dataclass
class PageState:
    """Everything a page shows; ``engines`` has one entry per data-parallel engine."""

    model: str = "meta-llama/Llama-2-7b-hf"
    engines: list[EngineState] = field(default_factory=lambda: [EngineState()])
    max_lora: int = 4
    running_loras: list[str] = field(default_factory=list)
    waiting_loras: list[str] = field(default_factory=list)
    lora_ts: float = 1_763_900_000.0
    # Older lora_requests_info series (running, waiting, ts), rendered before the current
    # one as vLLM keeps them; None = one stale series 30 s older than ``lora_ts``.
    lora_history: list[tuple[str, str, float]] | None = None
    legacy_kv_name: bool = False  # vllm:gpu_cache_usage_perc instead of vllm:kv_cache_usage_perc
    both_kv_names: bool = False  # both names (vLLM versions between the rename and the removal)
    lora_enabled: bool = True
    cache_info: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CACHE_INFO))
    extras: bool = True  # process/GC/HTTP families
    created_series: bool = True  # counters' and histograms' _created series
    requests_served: int = 1000  # synthetic histogram counts, only for realism
    filler_histograms: int = 0  # extra histograms to grow the page (0 = a typical ~50 KB page)


def vllm_histograms(max_model_len: int = 4096) -> list[Histogram]:
    """vLLM v1's request and step histograms for one engine, empty."""
    tok = build_1_2_5_buckets(max_model_len)
    lat = REQUEST_LATENCY_BUCKETS
    return [
        Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        ),
        Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        ),
        Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TPOT_BUCKETS
        ),
        Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TPOT_BUCKETS,
        ),
        Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat),
        Histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", lat
        ),
        Histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            lat,
        ),
        Histogram(
            "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", lat
        ),
        Histogram(
            "vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", lat
        ),
        Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok),
        Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", tok),
        Histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tok),
    ]


# means of the synthetic histograms (ShareGPT-like traffic on an H100)
_SYNTHETIC_MEANS = {
    "vllm:iteration_tokens_total": 300.0,
    "vllm:time_to_first_token_seconds": 0.05,
    "vllm:inter_token_latency_seconds": 0.012,
    "vllm:time_per_output_token_seconds": 0.012,
    "vllm:e2e_request_latency_seconds": 3.0,
    "vllm:request_queue_time_seconds": 0.2,
    "vllm:request_inference_time_seconds": 2.8,
    "vllm:request_prefill_time_seconds": 0.05,
    "vllm:request_decode_time_seconds": 2.7,
    "vllm:request_prompt_tokens": 251.0,
    "vllm:request_generation_tokens": 225.0,
    "vllm:request_params_max_tokens": 300.0,
}


def synthetic_histograms(state: PageState) -> list[Histogram]:
    """One engine's histograms with realistic counts (plus ``filler_histograms``)."""
    hists = vllm_histograms()
    for i in range(state.filler_histograms):
        hists.append(Histogram(f"vllm:filler_{i}_seconds", "Filler histogram.", REQUEST_LATENCY_BUCKETS))
    for h in hists:
        h.fill_exponential(state.requests_served, _SYNTHETIC_MEANS.get(h.name, 1.0))
    return hists


def engine_labels(model: str, engine: int | str) -> str:
    return labels({"engine": str(engine), "model_name": model})


def render_histograms(state: PageState, per_engine: list[list[Histogram]]) -> str:
    """The histogram block: ``per_engine[i]`` rendered with engine ``i``'s labels."""
    out: list[str] = []
    created = CREATED if state.created_series else None
    for i, hists in enumerate(per_engine):
        lab = engine_labels(state.model, i)
        for h in hists:
            h.render(lab, out, created=created)
    return "".join(out)


_PROCESS_FAMILIES = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 19043.0
python_gc_objects_collected_total{generation="1"} 3221.0
python_gc_objects_collected_total{generation="2"} 412.0
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="12",patchlevel="9",version="3.12.9"} 1.0
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1.2345678848e+011
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5.123456e+09
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1234.56
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 97.0
"""

_HTTP_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
_HTTP_BUCKETS += [7.5, 10.0, 30.0, 60.0]
_HANDLERS = ["/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/v1/models"]


def _http_families(n: int) -> str:
    out = [
        "# HELP http_requests_total Total number of requests by method, status and handler.\n",
        "# TYPE http_requests_total counter\n",
    ]
    out += [f'http_requests_total{{handler="{h}",method="GET",status="2xx"}} {float(n)}\n' for h in _HANDLERS]
    out.append("# HELP http_requests_created Total number of requests by method, status and handler.\n")
    out.append("# TYPE http_requests_created gauge\n")
    out += [
        f'http_requests_created{{handler="{h}",method="GET",status="2xx"}} {CREATED!r}\n' for h in _HANDLERS
    ]
    for h in _HANDLERS:
        hist = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels.",
            _HTTP_BUCKETS,
        )
        hist.fill_exponential(n, 0.5)
        hist.render(f'handler="{h}"', out, created=CREATED)
    return "".join(out)


def render(state: PageState, histograms: str | None = None) -> str:
    """Render one page in the Prometheus text format (0.0.4), as vLLM would serve it.

    ``histograms`` is a pre-rendered histogram block (the simulator's live ones, see
    :func:`render_histograms`); without it the page gets :func:`synthetic_histograms`.
    """
    model = state.model
    engines = state.engines
    out: list[str] = [_PROCESS_FAMILIES] if state.extras else []
    labs = [engine_labels(model, i) for i in range(len(engines))]

    def family(name: str, typ: str, doc: str, values: list[float]) -> None:
        # as prometheus_client writes them: HELP/TYPE name the _total series itself
        base = name[:-6] if typ == "counter" and name.endswith("_total") else name
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {typ}\n")
        for lab, v in zip(labs, values, strict=True):
            out.append(f"{name}{{{lab}}} {fmt(v)}\n")
        if typ == "counter" and state.created_series:
            out.append(f"# HELP {base}_created {doc}\n# TYPE {base}_created gauge\n")
            out.extend(f"{base}_created{{{lab}}} {CREATED!r}\n" for lab in labs)

    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [e.running for e in engines],
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [e.waiting for e in engines],
    )
    kv = [e.kv_usage for e in engines]
    if state.legacy_kv_name or state.both_kv_names:
        family("vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", kv)
    if not state.legacy_kv_name:
        family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv)
    if state.lora_enabled:
        _lora_family(state, out)
    family(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        [e.preemptions for e in engines],
    )
    family(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        [e.prefix_queries for e in engines],
    )
    family(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        [e.prefix_hits for e in engines],
    )
    family(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [e.prompt_tokens for e in engines],
    )
    family(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [e.generation_tokens for e in engines],
    )
    out.append(
        "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        "# TYPE vllm:request_success_total counter\n"
    )
    for lab, e in zip(labs, engines, strict=True):
        out += [
            f'vllm:request_success_total{{{lab},finished_reason="{k}"}} {v}.0\n' for k, v in e.success.items()
        ]
    out.append(
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
    )
    for i, e in enumerate(engines):
        info = {
            **state.cache_info,
            "block_size": str(e.block_size),
            "engine": str(i),
            "num_gpu_blocks": str(e.num_gpu_blocks),
        }
        out.append(f"vllm:cache_config_info{{{labels(dict(sorted(info.items())))}}} 1.0\n")
    if histograms is None:
        histograms = render_histograms(state, [synthetic_histograms(state) for _ in engines])
    out.append(histograms)
    if state.extras:
        out.append(_http_families(state.requests_served))
    return "".join(out)


def _lora_family(state: PageState, out: list[str]) -> None:
    out.append(
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
        "# TYPE vllm:lora_requests_info gauge\n"
    )
    history = state.lora_history
    if history is None:
        history = [("stale-adapter", "", state.lora_ts - 30.0)]
    current = (",".join(state.running_loras), ",".join(state.waiting_loras), state.lora_ts)
    for run, wait, ts in [*history, current]:
        out.append(
            f'vllm:lora_requests_info{{max_lora="{state.max_lora}",running_lora_adapters="{esc(run)}",'
            f'waiting_lora_adapters="{esc(wait)}"}} {fmt(ts)}\n'
        )


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
