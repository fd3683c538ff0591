"""Polling helpers for tests: wait for a condition with a generous deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(cond: Callable[[], object], deadline_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` until it is truthy; fail the test (not hang it) after ``deadline_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"{what} not reached within {deadline_s}s")
        await asyncio.sleep(0.02)
