"""vLLM's Prometheus page, rendered by hand so a scrape costs well under a millisecond.

Family names, labels and histogram buckets are those of the vLLM v1 engine
(``vllm/v1/metrics/loggers.py``). Gauges and counters are rendered fresh on every
scrape; the histogram block (most of the page's bytes) is re-rendered at most once per
``histogram_refresh_s`` of wall time and reused in between.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from shared.vllm import ITERATION_TOKEN_BUCKETS, REQUEST_LATENCY_BUCKETS, TPOT_BUCKETS, TTFT_BUCKETS


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's 1-2-5 buckets up to ``max_value`` (e.g. max_model_len)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


def _fmt(v: float) -> str:
    return repr(float(v))


class Histogram:
    __slots__ = ("bounds", "counts", "help", "name", "sum")

    def __init__(self, name: str, help_: str, bounds: list[float]) -> None:
        self.name, self.help, self.bounds = name, help_, [float(b) for b in bounds]
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    def observe_n(self, v: float, n: int) -> None:
        """``n`` observations of the same value."""
        self.counts[bisect_left(self.bounds, v)] += n
        self.sum += v * n

    def render(self, labels: str, out: list[str]) -> None:
        n = self.name
        out.append(f"# HELP {n} {self.help}\n# TYPE {n} histogram\n")
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append(f'{n}_bucket{{{labels},le="{b}"}} {acc}.0\n')
        acc += self.counts[-1]
        out.append(
            f'{n}_bucket{{{labels},le="+Inf"}} {acc}.0\n{n}_count{{{labels}}} {acc}.0\n'
            f"{n}_sum{{{labels}}} {_fmt(self.sum)}\n"
        )


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class VllmMetrics:
    """The metric state of one simulated vLLM server; ``render(engine)`` gives the page."""

    def __init__(
        self,
        model: str,
        cache_info: dict[str, str],
        max_model_len: int,
        histogram_refresh_s: float = 1.0,
        engine_label: str = "0",
    ) -> None:
        self.model = model
        self.labels = f'engine="{engine_label}",model_name="{_esc(model)}"'
        self.refresh_s = histogram_refresh_s
        tok = build_1_2_5_buckets(max_model_len)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            TPOT_BUCKETS,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TPOT_BUCKETS
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = Histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = Histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = Histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prompt_tokens = Histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok
        )
        self.gen_tokens = Histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tok
        )
        self.max_tokens = Histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tok
        )
        self.iter_tokens = Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        )
        self.histograms = [
            self.iter_tokens,
            self.ttft,
            self.itl,
            self.tpot,
            self.e2e,
            self.queue,
            self.inference,
            self.prefill,
            self.decode,
            self.prompt_tokens,
            self.gen_tokens,
            self.max_tokens,
        ]
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.cache_line = (
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            "vllm:cache_config_info{"
            + ",".join(
                f'{k}="{_esc(str(v))}"' for k, v in sorted({**cache_info, "engine": engine_label}.items())
            )
            + "} 1.0\n"
        )
        self._lora_series: dict[tuple[str, str], float] = {}  # (running, waiting) -> last set time
        self._hist_text = ""
        self._hist_at = -1e18
        self.max_lora = 0

    def observe_request(
        self,
        ttft: float,
        e2e: float,
        queue: float,
        prefill: float,
        decode: float,
        prompt_tokens: int,
        gen_tokens: int,
        max_tokens: int,
        reason: str,
    ) -> None:
        self.ttft.observe(ttft)
        self.e2e.observe(e2e)
        self.queue.observe(queue)
        self.inference.observe(prefill + decode)
        self.prefill.observe(prefill)
        self.decode.observe(decode)
        self.prompt_tokens.observe(prompt_tokens)
        self.gen_tokens.observe(gen_tokens)
        self.max_tokens.observe(max_tokens)
        if gen_tokens > 1:
            self.tpot.observe(decode / (gen_tokens - 1))
        self.success[reason] = self.success.get(reason, 0) + 1

    def observe_step(self, tokens: int, duration: float, num_decode: int) -> None:
        self.iter_tokens.observe(tokens)
        if num_decode:
            # every decoding request's token gap is this step's duration
            self.itl.observe_n(duration, num_decode)

    def _histograms(self) -> str:
        now = time.monotonic()
        if now - self._hist_at >= self.refresh_s:
            out: list[str] = []
            for h in self.histograms:
                h.render(self.labels, out)
            self._hist_text = "".join(out)
            self._hist_at = now
        return self._hist_text

    def render(self, eng, max_lora: int, wall_time: float | None = None) -> str:
        """The page for ``eng`` (an :class:`sim.engine.Engine`)."""
        lb = self.labels
        running = len(eng.running)
        kv = eng.kv_usage
        run_l = ",".join(eng.running_loras)
        wait_l = ",".join(eng.waiting_loras)
        ts = wall_time if wall_time is not None else time.time()
        series = self._lora_series
        series[(run_l, wait_l)] = ts
        if len(series) > 8:
            oldest = min(series, key=series.get)
            del series[oldest]
        lora_lines = "".join(
            f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{_esc(r)}",'
            f'waiting_lora_adapters="{_esc(w)}"}} {_fmt(t)}\n'
            for (r, w), t in series.items()
        )
        succ = "".join(
            f'vllm:request_success_total{{{lb},finished_reason="{k}"}} {v}.0\n'
            for k, v in self.success.items()
        )
        head = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{lb}}} {running}.0\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{lb}}} {eng.n_waiting}.0\n"
            "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            f"vllm:gpu_cache_usage_perc{{{lb}}} {_fmt(kv)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{lb}}} {_fmt(kv)}\n"
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
            "# TYPE vllm:lora_requests_info gauge\n"
            f"{lora_lines}"
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
            "# TYPE vllm:num_preemptions_total counter\n"
            f"vllm:num_preemptions_total{{{lb}}} {eng.preemptions}.0\n"
            "# HELP vllm:prefix_cache_queries_total "
            "Prefix cache queries, in terms of number of queried tokens.\n"
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            f"vllm:prefix_cache_queries_total{{{lb}}} {eng.prefix_queries}.0\n"
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n"
            "# TYPE vllm:prefix_cache_hits_total counter\n"
            f"vllm:prefix_cache_hits_total{{{lb}}} {eng.prefix_hits}.0\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{lb}}} {eng.prompt_tokens_total}.0\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{lb}}} {eng.generation_tokens_total}.0\n"
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f"{succ}"
        )
        return head + self.cache_line + self._histograms()
