"""SGLang's ``/metrics`` page, for simulated SGLang pods (``infergate-sim serve --engine sglang``).

Names and labels follow SGLang's ``python/sglang/srt/metrics/collector.py``: scheduler
gauges (``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``
0-1, ``sglang:num_used_tokens``, ``sglang:max_total_num_tokens``, ...) labelled
``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank`` and, with data parallelism,
``dp_rank``; tokenizer counters (``sglang:prompt_tokens_total``,
``sglang:generation_tokens_total``, ``sglang:cached_tokens_total`` by ``cache_source``)
labelled ``model_name``; latency histograms. The same :class:`~sim.vllm_page.PageState`
describes the pod: only the page's dialect differs.
"""

from __future__ import annotations

from sim.histogram import Histogram, fmt, labels
from sim.vllm_page import PageState

# the simulator's histograms that SGLang also exports, under SGLang's names
HISTOGRAM_NAMES = {
    "vllm:time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "sglang:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds": "sglang:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds": "sglang:queue_time_seconds",
}


def scheduler_labels(state: PageState, rank: int) -> str:
    pairs = {"model_name": state.model, "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}
    if len(state.engines) > 1:
        pairs["dp_rank"] = str(rank)
    return labels(pairs)


def render_histograms(state: PageState, hists: list[Histogram]) -> str:
    """The histograms SGLang exports (from the tokenizer manager: ``model_name`` only)."""
    out: list[str] = []
    lab = labels({"model_name": state.model})
    for h in hists:
        name = HISTOGRAM_NAMES.get(h.name)
        if name is not None:
            h.render(lab, out, name=name)
    return "".join(out)


def render(state: PageState, histograms: str = "") -> str:
    """Render one SGLang page for ``state`` (one engine = one data-parallel rank)."""
    engines = state.engines
    out: list[str] = []
    ranks = [scheduler_labels(state, i) for i in range(len(engines))]

    def gauge(name: str, doc: str, values: list[float]) -> None:
        out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
        out.extend(f"{name}{{{lab}}} {fmt(v)}\n" for lab, v in zip(ranks, values, strict=True))

    capacity = [e.num_gpu_blocks * e.block_size for e in engines]
    gauge("sglang:num_running_reqs", "The number of running requests.", [e.running for e in engines])
    gauge("sglang:num_used_tokens", "The number of used tokens.",
          [round(e.kv_usage * c) for e, c in zip(engines, capacity, strict=True)])  # fmt: skip
    gauge("sglang:token_usage", "The token usage.", [e.kv_usage for e in engines])
    gauge("sglang:gen_throughput", "The generation throughput (token/s).", [0.0 for _ in engines])
    gauge(
        "sglang:num_queue_reqs", "The number of requests in the waiting queue.", [e.waiting for e in engines]
    )
    gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
          [e.prefix_hits / e.prefix_queries if e.prefix_queries else 0.0 for e in engines])  # fmt: skip
    gauge("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", capacity)
    out.append(
        "# HELP sglang:num_retracted_requests_total Total number of retracted requests.\n"
        "# TYPE sglang:num_retracted_requests_total counter\n"
    )
    out.extend(
        f"sglang:num_retracted_requests_total{{{lab}}} {fmt(e.preemptions)}\n"
        for lab, e in zip(ranks, engines, strict=True)
    )
    tok = labels({"model_name": state.model})
    prompt = sum(e.prompt_tokens for e in engines)
    generated = sum(e.generation_tokens for e in engines)
    cached = sum(e.prefix_hits for e in engines)
    totals = (
        ("sglang:prompt_tokens", "Number of prefill tokens processed.", prompt),
        ("sglang:generation_tokens", "Number of generation tokens processed.", generated),
    )
    for base, doc, v in totals:
        out.append(
            f"# HELP {base}_total {doc}\n# TYPE {base}_total counter\n{base}_total{{{tok}}} {fmt(v)}\n"
        )
    out.append(
        "# HELP sglang:cached_tokens_total Number of cached prompt tokens.\n"
        "# TYPE sglang:cached_tokens_total counter\n"
        f'sglang:cached_tokens_total{{{tok},cache_source="device"}} {fmt(cached)}\n'
    )
    out.append(histograms)
    return "".join(out)
