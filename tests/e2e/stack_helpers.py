"""Helpers for the end-to-end tests on the real stack (bench.stack.Stack): requests, strict SSE, pod metrics.

Every call goes to 127.0.0.1 only. Responses are returned whole (status, headers, body
text) so that a failing assertion can print what the client actually saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.stack import BASE_MODEL, Stack, metric_samples

SERVED = "x-gateway-destination-endpoint-served"
SELECT = "test-epp-endpoint-selection"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def served(self) -> str:
        return self.headers.get(SERVED, "")

    def json(self) -> Any:
        return json.loads(self.text)

    def __str__(self) -> str:  # shows up in assertion messages
        return f"{self.status} served={self.served!r} {self.text[:300]!r}"


async def post(
    url: str,
    body: Any = None,
    *,
    path: str = "/v1/completions",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Reply:
    hdrs = {"content-type": "application/json", **(headers or {})}
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.post(url.rstrip("/") + path, data=data, headers=hdrs) as resp,
    ):
        text = await resp.text()
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, text)


def completion(model: str = BASE_MODEL, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "Say hello to the end-to-end test.", "max_tokens": max_tokens, **extra}


def chat(model: str = BASE_MODEL, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Hello there"}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, **extra}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Strict SSE: events separated by blank lines, each exactly one ``data: `` line, JSON
    objects, the last one ``data: [DONE]`` and nothing after it. Returns the JSON events."""
    assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-80:]!r}"
    blocks = text[:-2].split("\n\n")
    assert blocks[-1] == "data: [DONE]", f"last event is not [DONE]: {blocks[-1]!r}"
    events = []
    for block in blocks[:-1]:
        assert block.startswith("data: ") and "\n" not in block, f"malformed SSE event: {block!r}"
        obj = json.loads(block[len("data: ") :])
        assert isinstance(obj, dict), block
        events.append(obj)
    return events


def pod_by_address(stack: Stack, address: str) -> str:
    """The pod name behind ``ip:port`` (the served header), or '' if none."""
    return next((p.plan.name for p in stack.pods if p.address == address), "")


async def pod_metrics(stack: Stack, pod: str) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://{stack.pod(pod).address}/metrics") as resp,
    ):
        return await resp.text()


def metric_value(page: str, name: str) -> float:
    """Sum of a metric family's samples named exactly ``name`` (any labels)."""
    return sum(metric_samples(page, name))


async def picker_gauges(stack: Stack, name: str) -> list[float]:
    """``name``'s value on every picker replica's /metrics (one sample per replica)."""
    values = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for p in stack.pickers:
            async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp:
                values.append(metric_value(await resp.text(), name))
    return values


async def eventually(cond: Callable[[], Awaitable[bool]], deadline_s: float, what: str = "condition") -> None:
    """Poll an async condition every 0.1 s until it holds; fail after ``deadline_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not await cond():
        if loop.time() > end:
            raise AssertionError(f"{what} not reached within {deadline_s}s")
        await asyncio.sleep(0.1)
