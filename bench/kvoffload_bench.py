"""How long the precise prefix path stalls the picker's event loop, and when offloading pays.

``python -m bench.kvoffload_bench [--tokenizer PATH]``

1. **Loop stall**: a 1 ms ticker runs on the event loop while 32k-token prompts (distinct,
   uncached) are scored by ``PrecisePrefixScorer.hashes``: *before*, inline (what scoring
   did); *after*, ``await warm(text)`` first (what the ext_proc stream does before routing,
   picker/scheduling/prewarm.py), then ``hashes``. The largest gap between ticks is the
   stall. Wall time: it depends on the machine's load (reported with it).
2. **Threshold**: the event loop's CPU for one hop to the worker thread (``thread_time``
   of the loop thread around ``run_in_executor`` of a no-op), against the CPU of scoring a
   cold prompt inline, by prompt length: offloading pays above the length where they meet.

The tokenizer is ``--tokenizer`` (a model's ``tokenizer.json``) or the byte-level BPE
that :mod:`bench.kvprefix_bench` trains locally (none is downloaded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from bench.kvprefix_bench import _local_bpe
from picker.scheduling.precise import PrecisePrefixScorer
from shared.tokens import text_for_tokens


async def _ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def stall(path: str, offload: bool, n: int = 4) -> float:
    """The largest loop gap (ms) while ``n`` distinct 32k-token prompts are scored."""
    s = PrecisePrefixScorer(tokenizer=path, token_cache_chunks=0)
    texts = [text_for_tokens(32000, seed=100 + i) for i in range(n)]
    stop, gaps = asyncio.Event(), []
    t = asyncio.create_task(_ticker(stop, gaps))
    await asyncio.sleep(0.02)
    for x in texts:
        held = await s.warm(x) if offload else None  # a request holds its answer until scored
        s.hashes(x)
        del held
        await asyncio.sleep(0.005)
    stop.set()
    await t
    return max(gaps) * 1e3


async def threshold(path: str) -> tuple[float, dict[int, float]]:
    s = PrecisePrefixScorer(tokenizer=path, token_cache_chunks=0)
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)
    await loop.run_in_executor(pool, int)
    n = 2000
    c0 = time.thread_time()
    for _ in range(n):
        await loop.run_in_executor(pool, int)
    hop = (time.thread_time() - c0) / n * 1e6
    inline = {}
    for chars in (32, 64, 128, 256, 512, 1024, 4096):
        xs = [text_for_tokens(chars // 4 + 1, seed=1000 + i)[:chars] for i in range(50)]
        c0 = time.thread_time()
        for x in xs:
            s.hashes(x)
        inline[chars] = (time.thread_time() - c0) / len(xs) * 1e6
    return hop, inline


async def main(path: str, commit: str) -> None:
    print(f"commit {commit.strip()}, {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    for offload in (False, True, False, True, False, True):
        ms = await stall(path, offload)
        print(f"32k-token prompt, {'offloaded' if offload else 'inline   '}: max loop gap {ms:6.1f} ms")
    hop, inline = await threshold(path)
    print(f"one thread hop: {hop:.0f} µs of event-loop CPU")
    for chars, us in inline.items():
        print(f"cold prompt of {chars:5d} characters inline: {us:7.0f} µs CPU")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="", help="a model's tokenizer.json (default: a local BPE)")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    asyncio.run(main(args.tokenizer or _local_bpe(), head))
