"""Tokenize long prompts off the event loop, before the (synchronous) scheduler runs.

Scheduling is synchronous (director → profile → scorers), so a scorer that tokenizes a
32k-token prompt inline stalls the picker's event loop for the whole tokenization. The
earliest asynchronous point is the ext_proc stream, when the request body is complete
and before the director routes it: there :func:`prewarm` hands the prompt to every live
scorer of the picker's active profile (registered by ``picker.kvfeed.attach_precise``:
:func:`register`; a scorer only built to validate the config is not); each one computes
its answer in its own worker thread (Hugging Face's ``encode_batch`` releases the GIL)
and keeps it until its ``score`` asks for it (``PrecisePrefixScorer.warm``).

**The answer belongs to the request.** :func:`prewarm` returns what the scorers computed
and the caller holds it until the request is routed (the ext_proc stream keeps it across
``handle`` and a flow-control wait); a scorer keeps only a weak reference, so the answer
goes when the last request holding it does, and never before. An earlier version kept
the last 64 answers: a request that waited in flow control behind more than 64 others
found its answer evicted and was tokenized again, on the event loop, at the moment the
loop is busiest. The two bounded alternatives were worse: making ``warm`` wait for room
in a bounded table lets requests that are never scored (rejected, cancelled) hold the
room and lets a high-priority request wait behind queued low-priority ones *before* it
reaches flow control; routing an evicted request without precise prefix drops precision
for exactly the requests a saturated pool queues. Held by the request, the memory is
bounded by the requests the picker holds between their body's end and their routing
(flow control bounds its queue in requests and bytes, ``max_requests_per_band`` /
``max_bytes_per_band``), each of which already holds its body: the answer is one packed
64-bit hash per block of the prompt, at most ``max_blocks`` (16 KB at the default 2,048),
an eighth of the body's size for 16-token blocks of 4-byte tokens.

A scorer decides itself what is worth offloading (a short prompt or a cached prefix is
cheaper inline than a thread hop). Without a registered scorer this is a no-op.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Protocol

__all__ = ["Warmer", "active", "prewarm", "register"]

log = logging.getLogger(__name__)


class Warmer(Protocol):
    async def warm(self, text: str, messages: list[Any] | None) -> object | None:
        """Prepare the prompt; returns what the request must hold until it is scored."""
        ...


_WARMERS: weakref.WeakSet = weakref.WeakSet()


def register(warmer: Warmer) -> None:
    """Warm ``warmer`` for every request from now on; dropped when it is garbage-collected."""
    _WARMERS.add(warmer)


def active() -> bool:
    return bool(_WARMERS)


async def prewarm(text: str, messages: list[Any] | None) -> list[object]:
    """Let every registered scorer prepare this prompt; never raises (scoring recomputes).

    Hold the returned list until the request is routed: the scorers' answers live as long
    as it does (dropping it early means tokenizing again on the loop)."""
    held: list[object] = []
    for w in list(_WARMERS):
        try:
            got = await w.warm(text, messages)
        except Exception:
            log.exception("tokenizing a prompt off the event loop failed; the scorer will redo it")
            continue
        if got is not None:
            held.append(got)
    return held
