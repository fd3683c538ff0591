"""A simulated server's metric state, and its ``/metrics`` page in vLLM's or SGLang's dialect.

:class:`ServerMetrics` keeps what the engine does not: latency histograms, finished
requests by reason and the LoRA series history. ``render`` fills a
:class:`~sim.vllm_page.PageState` from the engine and hands it to the one page renderer
of the chosen dialect (:mod:`sim.vllm_page` or :mod:`sim.sglang_page`). Gauges and
counters are fresh on every scrape; the histogram block (most of the page's bytes) is
re-rendered at most once per ``histogram_refresh_s`` of wall time and reused in between,
so a scrape costs well under a millisecond.
"""

from __future__ import annotations

import time

from sim import sglang_page, vllm_page
from sim.vllm_page import EngineState, PageState

ENGINES = ("vllm", "sglang")


class ServerMetrics:
    """The metric state of one simulated server; ``render(engine, max_lora)`` gives the page."""

    def __init__(
        self,
        model: str,
        cache_info: dict[str, str],
        max_model_len: int,
        histogram_refresh_s: float = 1.0,
        kind: str = "vllm",
    ) -> None:
        if kind not in ENGINES:
            raise ValueError(f"unknown engine {kind!r} (one of {', '.join(ENGINES)})")
        self.model = model
        self.kind = kind
        self.cache_info = {k: v for k, v in cache_info.items() if k not in ("block_size", "num_gpu_blocks")}
        self.refresh_s = histogram_refresh_s
        self.histograms = vllm_page.vllm_histograms(max_model_len)
        by_name = {h.name.removeprefix("vllm:"): h for h in self.histograms}
        self.iter_tokens = by_name["iteration_tokens_total"]
        self.ttft = by_name["time_to_first_token_seconds"]
        self.itl = by_name["inter_token_latency_seconds"]
        self.tpot = by_name["time_per_output_token_seconds"]
        self.e2e = by_name["e2e_request_latency_seconds"]
        self.queue = by_name["request_queue_time_seconds"]
        self.inference = by_name["request_inference_time_seconds"]
        self.prefill = by_name["request_prefill_time_seconds"]
        self.decode = by_name["request_decode_time_seconds"]
        self.prompt_tokens = by_name["request_prompt_tokens"]
        self.gen_tokens = by_name["request_generation_tokens"]
        self.max_tokens = by_name["request_params_max_tokens"]
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self._lora_series: dict[tuple[str, str], float] = {}  # (running, waiting) -> last set time
        self._hist_text = ""
        self._hist_at = -1e18

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

    def page_state(self, eng, max_lora: int, wall_time: float | None = None) -> PageState:
        """What the page shows now, for ``eng`` (an :class:`sim.engine.Engine`)."""
        run_l = ",".join(eng.running_loras)
        wait_l = ",".join(eng.waiting_loras)
        ts = wall_time if wall_time is not None else time.time()
        series = self._lora_series
        series[(run_l, wait_l)] = ts
        if len(series) > 8:
            del series[min(series, key=series.get)]
        cfg = eng.cfg
        return PageState(
            model=self.model,
            engines=[
                EngineState(
                    running=len(eng.running),
                    waiting=eng.n_waiting,
                    kv_usage=eng.kv_usage,
                    prefix_queries=eng.prefix_queries,
                    prefix_hits=eng.prefix_hits,
                    preemptions=eng.preemptions,
                    num_gpu_blocks=cfg.num_gpu_blocks,
                    block_size=cfg.block_size,
                    prompt_tokens=eng.prompt_tokens_total,
                    generation_tokens=eng.generation_tokens_total,
                    success=self.success,
                )
            ],
            max_lora=max_lora,
            running_loras=list(eng.running_loras),
            waiting_loras=list(eng.waiting_loras),
            lora_ts=ts,
            lora_history=[(r, w, t) for (r, w), t in series.items() if (r, w) != (run_l, wait_l)],
            both_kv_names=True,
            cache_info=self.cache_info,
            extras=False,
            created_series=False,
        )

    def _histogram_block(self, state: PageState) -> str:
        now = time.monotonic()
        if now - self._hist_at >= self.refresh_s:
            if self.kind == "sglang":
                self._hist_text = sglang_page.render_histograms(state, self.histograms)
            else:
                self._hist_text = vllm_page.render_histograms(state, [self.histograms])
            self._hist_at = now
        return self._hist_text

    def render(self, eng, max_lora: int, wall_time: float | None = None) -> str:
        """The page for ``eng`` in this server's dialect."""
        state = self.page_state(eng, max_lora, wall_time)
        hist = self._histogram_block(state)
        if self.kind == "sglang":
            return sglang_page.render(state, hist)
        return vllm_page.render(state, hist)
