"""Tokenize long prompts off the event loop, before the (synchronous) scheduler runs.

Scheduling is synchronous (director → profile → scorers), so a scorer that tokenizes a
32k-token prompt inline stalls the picker's event loop for the whole tokenization. The
earliest asynchronous point is the ext_proc stream, when the request body is complete
and before the director routes it: there :func:`prewarm` hands the prompt to every live
scorer of the picker's active profile (registered by ``picker.kvfeed.attach_precise``:
:func:`register`; a scorer only built to validate the config is not); each one computes its answer in its own
worker thread (Hugging Face's ``encode_batch`` releases the GIL) and keeps it until its
``score`` asks for it (``PrecisePrefixScorer.warm``).

A scorer decides itself what is worth offloading (a short prompt or a cached prefix is
cheaper inline than a thread hop). Without a registered scorer this is a no-op.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Protocol

__all__ = ["Warmer", "prewarm", "register"]

log = logging.getLogger(__name__)


class Warmer(Protocol):
    async def warm(self, text: str, messages: list[Any] | None) -> None: ...


_WARMERS: weakref.WeakSet = weakref.WeakSet()


def register(warmer: Warmer) -> None:
    """Warm ``warmer`` for every request from now on; dropped when it is garbage-collected."""
    _WARMERS.add(warmer)


def active() -> bool:
    return bool(_WARMERS)


async def prewarm(text: str, messages: list[Any] | None) -> None:
    """Let every registered scorer prepare this prompt; never raises (scoring recomputes)."""
    for w in list(_WARMERS):
        try:
            await w.warm(text, messages)
        except Exception:
            log.exception("tokenizing a prompt off the event loop failed; the scorer will redo it")
