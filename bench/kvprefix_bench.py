"""What the precise prefix path costs: per request, on the bus, in the index.

``python -m bench.kvprefix_bench [--out bench/results/precise-prefix-costs.json] [--tokenizer PATH]``

1. **Tokenize + hash per request** for 1k, 8k and 32k-token prompts (µs of process CPU
   time, median of repeats): the simulator's tokenizer, and the Hugging Face
   ``tokenizers`` library on ``--tokenizer`` (a model's ``tokenizer.json``) or else on a
   byte-level BPE trained here (none is downloaded), then vLLM's
   ``sha256_cbor`` chain (:class:`shared.kvhash.BlockHasher`); and the same with the
   picker's prefix cache (:mod:`picker.scheduling.kvtokcache`), for a context seen before
   plus a new question, in the same run. CPU time, not wall time: the machine is shared.
2. **Bus traffic per 1,000 req/s**: a simulated pod (the simulator's engine, virtual
   time) with KV events runs a shared-prefix workload (customers with a long shared
   context, short queries); every engine step's events go through the collector's real
   fold (:class:`collector.kvevents.PodKVState`) and are cut into deltas at the
   collector's flush interval, encoded as on the wire. The per-request figures are scaled
   to 1,000 req/s over as many such pods as that load needs, plus each pod's digest
   every second.
3. **Index memory per million blocks**: the picker's :class:`PreciseIndex` filled with one
   million (pod, block) entries over 8 pods, measured with ``tracemalloc``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from collector.kvevents import PodKVState
from picker.scheduling.kvindex import PreciseIndex
from shared import kvevents as kv
from shared.kvhash import BlockHasher
from shared.tokens import text_for_tokens
from sim import tokenize
from sim.engine import Engine, EngineConfig
from sim.kvevents import EventRecorder
from sim.request import SimRequest


def cpu_us(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append((time.process_time() - t0) * 1e6)
    return statistics.median(out)


def _local_bpe() -> str:
    """A byte-level BPE (8k merges) trained here on the filler text: no tokenizer is downloaded."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, show_progress=False)
    tok.train_from_iterator((text_for_tokens(2000, seed=s) for s in range(200)), trainer)
    path = tempfile.mkstemp(suffix="-tokenizer.json")[1]
    tok.save(path)
    return path


def tokenize_and_hash(tokenizer_path: str | None, repeats: int) -> list[dict]:
    """Per prompt size: tokenize (sim, HF) and hash, uncached; then with the prefix cache.

    The cached figures are the llm-d-like case: a context of ``n - 128`` tokens seen
    before, a new 128-token question after it (``*_cached_us``: the cache's answer, which
    the tests check equals the uncached one), and the first sight of a context
    (``*_cache_miss_us``: the full tokenization plus filling the cache).
    """
    from picker.scheduling.kvtokcache import TokenPrefixCache
    from picker.scheduling.kvtokenizer import HFTokenizer, SimTokenizer

    hasher = BlockHasher(16, "0")
    hf = HFTokenizer(tokenizer_path or _local_bpe())
    rows = []
    for n in (1024, 8192, 32768):
        text = text_for_tokens(n, seed=n)
        ids = tokenize.encode(text)
        row = {
            "tokens": n,
            "blocks": len(ids) // 16,
            "sim_tokenize_us": cpu_us(lambda t=text: tokenize.encode(t), repeats),
            "hash_us": cpu_us(lambda i=ids: hasher.hashes(i), repeats),
        }
        row["sim_total_us"] = row["sim_tokenize_us"] + row["hash_us"]
        row["hf_tokenize_us"] = cpu_us(lambda t=text: hf.encode(t), repeats)
        row["hf_total_us"] = row["hf_tokenize_us"] + row["hash_us"]
        context = text_for_tokens(n - 128, seed=n)
        for name, tok in (("sim", SimTokenizer()), ("hf", hf)):
            cache = TokenPrefixCache(
                tok, hasher, chunk_chars=512, window_chars=128, margin_chars=32, audit_every=0
            )
            firsts = iter([text_for_tokens(n - 128, seed=n + 1 + r) + " q" for r in range(repeats)])
            row[f"{name}_cache_miss_us"] = cpu_us(lambda it=firsts, c=cache: c.hashes(next(it)), repeats)
            cache.hashes(context + " warm")
            qs = iter([f"{context}\n[user] {text_for_tokens(128, seed=r)}" for r in range(repeats)])
            row[f"{name}_cached_us"] = cpu_us(lambda it=qs, c=cache: c.hashes(next(it)), repeats)
            row[f"{name}_cache_speedup"] = round(row[f"{name}_total_us"] / row[f"{name}_cached_us"], 1)
        rows.append(row)
    return rows


def bus_traffic(requests: int, seed: int, flush_s: float = 0.02) -> dict:
    """Events of one pod under a shared-prefix load, folded and cut like the collector does."""
    cfg = EngineConfig()
    eng = Engine(cfg)
    rec = EventRecorder(cfg.block_size)
    eng.kv.sink = rec
    hasher = BlockHasher(cfg.block_size, "0")
    rng = random.Random(seed)
    customers = [text_for_tokens(2048, seed=10_000 + c) for c in range(24)]
    state = PodKVState()
    rate = 12.0  # req/s on one simulated H100 pod with 2k-token prompts (below saturation)
    t = next_arr = 0.0
    i = 0
    next_flush = flush_s
    msgs = bytes_ = 0
    while i < requests or eng.has_work:
        while i < requests and next_arr <= t:
            text = customers[rng.randrange(len(customers))] + text_for_tokens(
                128, seed=rng.randrange(1 << 30)
            )
            ids = tokenize.encode(text)
            req = SimRequest(str(i), len(ids), 64, hasher.hashes(ids), arrival=next_arr)
            req.token_ids = ids
            eng.add(req, next_arr)
            i += 1
            next_arr += rng.expovariate(rate)
        nt = eng.next_event_time(t)
        if nt is None or nt > t:
            t = min(nt if nt is not None else float("inf"), next_arr if i < requests else float("inf"))
            if t == float("inf"):
                break
            continue
        r = eng.step(t)
        events = rec.take()
        if events:
            state.apply(kv.EventBatch(t, events, 0))
        if r.duration == 0.0:
            t = max(t, min(next_arr, eng._pending[0][0] if eng._pending else float("inf")))
            continue
        t = r.end
        if t >= next_flush:
            if state.has_delta():
                d = state.take_delta("10.0.0.1:8000", "0123456789abcdef", msgs + 1)
                msgs += 1
                bytes_ += len(kv.encode_delta(d)) + 60  # + NATS PUB framing and subject
            next_flush = t + flush_s
    duration = t
    digest = kv.encode_digest(
        kv.KVDigest("10.0.0.1:8000", "0123456789abcdef", msgs, 0.0, list(state.gpu), [])
    )
    per_req_msgs = msgs / requests
    per_req_bytes = bytes_ / requests
    pods = 1000.0 / (requests / duration)
    return {
        "requests": requests,
        "virtual_s": round(duration, 1),
        "req_per_s_per_pod": round(requests / duration, 2),
        "delta_msgs_per_request": round(per_req_msgs, 3),
        "delta_bytes_per_request": round(per_req_bytes, 1),
        "digest_bytes": len(digest) + 60,
        "blocks_held": len(state.gpu),
        "per_1000_rps": {
            "pods": round(pods, 1),
            "delta_msgs_per_s": round(per_req_msgs * 1000),
            "delta_kbytes_per_s": round(per_req_bytes * 1000 / 1024, 1),
            "digest_msgs_per_s": round(pods),
            "digest_kbytes_per_s": round(pods * (len(digest) + 60) / 1024, 1),
        },
    }


def index_memory(entries: int = 1_000_000, pods: int = 8) -> dict:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idx = PreciseIndex(max_blocks=entries + 1)
    per_pod = entries // pods
    rng = random.Random(1)
    for p in range(pods):
        # half the blocks are shared by all pods (a common prefix), half unique
        shared = [h for h in range(per_pod // 2)]
        own = [rng.getrandbits(64) for _ in range(per_pod - len(shared))]
        idx.apply_digest(kv.KVDigest(f"10.0.0.{p}:8000", "e", 0, 0.0, shared + own), 0.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"entries": idx.size(), "pods": pods, "mbytes": round(used / 2**20, 1)}


def digest_apply(blocks: int = 7463, changed: float = 0.02, repeats: int = 7) -> dict:
    """CPU cost, in a picker, of one pod's digest (a full KV cache of a 7B pod, a few % changed)."""
    idx = PreciseIndex()
    rng = random.Random(3)
    cur = [rng.getrandbits(64) for _ in range(blocks)]
    idx.apply_digest(kv.KVDigest("a", "e", 0, 0.0, cur), 0.0)
    payloads = []
    for _ in range(repeats):
        k = int(blocks * changed)
        cur = cur[k:] + [rng.getrandbits(64) for _ in range(k)]
        payloads.append(kv.encode_digest(kv.KVDigest("a", "e", 0, 0.0, cur)))
    it = iter(payloads)
    idx.pods["a"].lost = 1  # force the full diff path each time (a replica that missed deltas)

    def full() -> None:
        idx.apply_digest(kv.decode_digest(next(it)), 0.0)
        idx.pods["a"].lost = 1

    us = cpu_us(full, repeats)
    same = payloads[-1]
    idx.pods["a"].lost = 0
    in_sync = cpu_us(lambda: idx.apply_digest(kv.decode_digest(same), 0.0), repeats)
    return {
        "blocks": blocks,
        "changed": changed,
        "decode_and_apply_us": round(us),
        "in_sync_decode_us": round(in_sync),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="a local tokenizer.json to time as well")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    out = {
        "command": "python -m bench.kvprefix_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
        "tokenize_hash": tokenize_and_hash(args.tokenizer, args.repeats),
        "bus": bus_traffic(args.requests, 7),
        "index": index_memory(),
        "digest_apply": digest_apply(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
