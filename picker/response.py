"""The response path: put the client-facing model name back and count tokens.

Two shapes come back from an OpenAI-compatible server:

* a JSON object (``stream`` false): buffered until the end, then ``model`` is restored
  and ``usage`` read, with the same top-level-only re-encoding as the request side;
* an SSE stream (``text/event-stream``): events are separated by a blank line and may
  be split anywhere across body chunks, so an incomplete trailing event is carried to
  the next chunk. Each ``data: {json}`` event gets its ``model`` restored; the usage
  comes from the event that carries ``usage`` (sent before ``data: [DONE]`` when the
  client set ``stream_options.include_usage``), else the content events are counted.

Nothing here raises on a malformed response: an event or body that does not decode is
passed through unchanged, because the client should see what the server sent.
"""

from __future__ import annotations

import msgspec

__all__ = ["ResponseRewriter", "Usage"]

_top = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.encode


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_usage = msgspec.json.Decoder(Usage | None)


def _read_usage(raw: msgspec.Raw | None) -> Usage | None:
    if raw is None:
        return None
    try:
        return _usage.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class ResponseRewriter:
    """Per-response state: rewrite ``model`` to ``client_model`` (None: leave it) and count tokens."""

    __slots__ = (
        "_buf",
        "_carry",
        "_held",
        "buffered_limit",
        "client_model",
        "content_events",
        "done",
        "output_tokens",
        "prompt_tokens",
        "sse",
        "usage_seen",
    )

    def __init__(self, client_model: str | None, sse: bool, buffered_limit: int = 32 * 1024 * 1024) -> None:
        self.client_model = client_model
        self.sse = sse
        self.buffered_limit = buffered_limit
        self._buf: list[bytes] = []
        self._carry = b""
        self._held = 0  # bytes of a JSON body held so far; -1 once over the limit
        self.content_events = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.usage_seen = False
        self.done = False

    @property
    def holds_body(self) -> bool:
        """JSON bodies are held until the end (to rewrite or read usage); SSE flows through."""
        return not self.sse

    def feed(self, chunk: bytes, end: bool) -> bytes:
        """Consume one body chunk; return the bytes to send on (possibly empty until the end)."""
        if self.sse:
            return self._feed_sse(chunk, end)
        return self._feed_json(chunk, end)

    # -- JSON ---------------------------------------------------------------------------
    def _feed_json(self, chunk: bytes, end: bool) -> bytes:
        if self._held < 0:  # gave up holding: a huge body streams through untouched
            self.done = end
            return chunk
        if chunk:
            self._buf.append(chunk)
            self._held += len(chunk)
            if self._held > self.buffered_limit:
                body = b"".join(self._buf)
                self._buf = []
                self._held = -1
                self.done = end
                return body
        if not end:
            return b""
        body = b"".join(self._buf)
        self._buf = []
        self.done = True
        try:
            fields = _top.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return body
        self._take_usage(fields.get("usage"))
        if self.client_model is not None and "model" in fields:
            out = dict(fields)
            out["model"] = self.client_model  # type: ignore[assignment]
            return _encode(out)
        return body

    # -- SSE ----------------------------------------------------------------------------
    def _feed_sse(self, chunk: bytes, end: bool) -> bytes:
        data = self._carry + chunk if self._carry else chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if cut < 0:
            if end:
                self._carry = b""
                self.done = True
                return self._events(data) if data else b""
            self._carry = data
            return b""
        stop = cut + (4 if data.startswith(b"\r\n\r\n", cut) else 2)
        head, self._carry = data[:stop], data[stop:]
        out = self._events(head)
        if end:
            if self._carry:
                out += self._events(self._carry)
                self._carry = b""
            self.done = True
        return out

    def _events(self, block: bytes) -> bytes:
        """Process complete events; rewrite only the ``data:`` lines that need it."""
        rewrite = self.client_model is not None
        if not rewrite and b'"usage"' not in block:
            # Fast path: count content events without decoding them.
            self.content_events += block.count(b"data:") - block.count(b"[DONE]")
            return block
        lines = block.split(b"\n")
        changed = False
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                fields = _top.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.content_events += 1
                continue
            usage = fields.get("usage")
            choices = fields.get("choices")
            if choices is not None and bytes(choices).strip() != b"[]":
                self.content_events += 1
            self._take_usage(usage)
            if rewrite and "model" in fields:
                out = dict(fields)
                out["model"] = self.client_model  # type: ignore[assignment]
                cr = b"\r" if line.endswith(b"\r") else b""
                lines[i] = b"data: " + _encode(out) + cr
                changed = True
        return b"\n".join(lines) if changed else block

    def _take_usage(self, raw: msgspec.Raw | None) -> None:
        usage = _read_usage(raw)
        if usage is None:
            return
        if usage.prompt_tokens is not None:
            self.prompt_tokens = usage.prompt_tokens
        if usage.completion_tokens is not None:
            self.output_tokens = usage.completion_tokens
            self.usage_seen = True

    def tokens(self) -> tuple[int, int]:
        """(prompt, output) tokens: from ``usage`` when seen, else counted content events."""
        if self.usage_seen:
            return self.prompt_tokens, self.output_tokens
        return self.prompt_tokens, self.content_events if self.sse else 0
