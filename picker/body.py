"""OpenAI request bodies in, a few facts out; the original bytes kept, ``model`` rewritten cheaply.

The picker needs five things from a request body: the model, the prompt text (for the
token estimate and the prefix hashes), ``stream``, ``stream_options.include_usage`` and
the output budget. Everything else passes through untouched. The body is decoded once,
by msgspec in C, into a ``dict[str, msgspec.Raw]``: top-level keys with their values
left as raw JSON slices. Only the fields we read are decoded further, and rewriting
``model`` re-encodes the top-level object only: the nested values (the messages, tools,
images) are copied as raw bytes, never rebuilt as Python objects and serialized again.

Every malformed body becomes a :class:`BodyError` carrying the HTTP status (400, 413)
and an OpenAI-style message; nothing else escapes :func:`parse_request`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "BodyError",
    "ParsedRequest",
    "flatten_messages",
    "parse_request",
    "path_kind",
    "rewrite_model",
]

_top = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode

# The largest integer a request may carry where the picker reads one (``max_tokens``, token
# ids): vLLM's own fields are 32-bit, and anything larger would overflow the 64-bit integers
# of the shared events (msgspec) and the pool state. Refused at the edge with a 400.
MAX_INT = 2**31 - 1
_NESTING = "request body is nested too deeply"


class BodyError(Exception):
    """A client error found in the request body: becomes an ImmediateResponse."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class ParsedRequest:
    """What the picker read from one request body."""

    raw: bytes  # the body as the client sent it
    fields: dict[str, msgspec.Raw]
    model: str
    kind: str  # "chat", "completions" or "other"
    prompt_text: str
    prompt_tokens: int  # exact for token-id prompts, else 0 (estimate from the text)
    stream: bool
    include_usage: bool
    max_tokens: int  # 0 when not given
    messages: list[Any] | None = None  # a chat's messages (precise-prefix renders its template)

    def with_model(self, model: str) -> bytes:
        """The body with ``model`` replaced; the original bytes when nothing changes."""
        if model == self.model:
            return self.raw
        return rewrite_model(self.fields, model)


def rewrite_model(fields: dict[str, msgspec.Raw], model: str) -> bytes:
    """Re-encode a top-level object with ``model`` set; nested values are copied raw."""
    out = dict(fields)
    out["model"] = model  # type: ignore[assignment]
    return _encode(out)


def path_kind(path: str) -> str:
    """``chat`` for ``…/chat/completions``, ``completions`` for ``…/completions``, else ``other``."""
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/chat/completions"):
        return "chat"
    if p.endswith("/completions"):
        return "completions"
    return "other"


def _decode(raw: msgspec.Raw, name: str) -> Any:
    try:
        return _any.decode(raw)
    except RecursionError as exc:  # msgspec gives up on deep nesting: a client error
        raise BodyError(400, f"{_NESTING} in '{name}'", name) from exc
    except msgspec.DecodeError as exc:  # pragma: no cover - the top-level decode validated it
        raise BodyError(400, f"invalid JSON in '{name}': {exc}", name) from exc


def flatten_messages(messages: list[Any]) -> str:
    """A deterministic text for a chat: ``role: content`` per message, one per line.

    Every replica flattens the same way, so the prefix hashes of a conversation match
    across replicas and across turns (a longer conversation extends the same prefix).
    Content given as parts keeps the text parts only.
    """
    out: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BodyError(400, f"'messages[{i}]' must be an object", "messages")
        role = m.get("role")
        if role is not None and not isinstance(role, str):
            raise BodyError(400, f"'messages[{i}].role' must be a string", "messages")
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict):
                    t = part.get("text")
                    if isinstance(t, str):
                        parts.append(t)
                elif isinstance(part, str):
                    parts.append(part)
            text = "".join(parts)
        else:
            raise BodyError(400, f"'messages[{i}].content' must be a string, a list or null", "messages")
        out.append(f"{role or ''}: {text}\n")
    return "".join(out)


def _prompt(value: Any) -> tuple[str, int]:
    """Text and exact token count (0 = estimate) of a ``/completions`` prompt."""
    if isinstance(value, str):
        if not value:
            raise BodyError(400, "'prompt' must not be empty", "prompt")
        return value, 0
    if isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            return "".join(value), 0
        if all(_token_id(x) for x in value):
            return " ".join(map(str, value)), len(value)
        if all(isinstance(x, list) and x and all(_token_id(t) for t in x) for x in value):
            return "\n".join(" ".join(map(str, x)) for x in value), sum(len(x) for x in value)
    raise BodyError(
        400,
        f"'prompt' must be a non-empty string, list of strings, or list of token ids (0..{MAX_INT})",
        "prompt",
    )


def _token_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT


def _int_field(fields: dict[str, msgspec.Raw], name: str) -> int:
    raw = fields.get(name)
    if raw is None:
        return 0
    value = _decode(raw, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise BodyError(400, f"'{name}' must be an integer from 0 to {MAX_INT}", name)
    return value


def parse_request(body: bytes, path: str) -> ParsedRequest:
    """Validate and digest one request body; raises :class:`BodyError` only."""
    if not body:
        raise BodyError(400, "request body is empty")
    try:
        fields = _top.decode(body)
    except RecursionError as exc:
        raise BodyError(400, _NESTING) from exc
    except msgspec.ValidationError as exc:
        raise BodyError(400, "request body must be a JSON object") from exc
    except msgspec.DecodeError as exc:
        raise BodyError(400, f"request body is not valid JSON: {exc}") from exc
    raw_model = fields.get("model")
    if raw_model is None:
        raise BodyError(400, "'model' is required", "model")
    model = _decode(raw_model, "model")
    if not isinstance(model, str) or not model:
        raise BodyError(400, "'model' must be a non-empty string", "model")
    kind = path_kind(path)
    prompt_text, prompt_tokens, messages = "", 0, None
    if kind == "chat":
        raw = fields.get("messages")
        messages = _decode(raw, "messages") if raw is not None else None
        if not isinstance(messages, list) or not messages:
            raise BodyError(400, "'messages' must be a non-empty list", "messages")
        prompt_text = flatten_messages(messages)
    elif kind == "completions":
        raw = fields.get("prompt")
        if raw is None:
            raise BodyError(400, "'prompt' is required", "prompt")
        prompt_text, prompt_tokens = _prompt(_decode(raw, "prompt"))
    stream = False
    raw = fields.get("stream")
    if raw is not None:
        value = _decode(raw, "stream")
        if value is not None and not isinstance(value, bool):
            raise BodyError(400, "'stream' must be a boolean", "stream")
        stream = bool(value)
    include_usage = False
    raw = fields.get("stream_options")
    if raw is not None:
        opts = _decode(raw, "stream_options")
        if opts is not None:
            if not isinstance(opts, dict):
                raise BodyError(400, "'stream_options' must be an object", "stream_options")
            iu = opts.get("include_usage")
            if iu is not None and not isinstance(iu, bool):
                raise BodyError(400, "'stream_options.include_usage' must be a boolean", "stream_options")
            include_usage = bool(iu)
    max_tokens = _int_field(fields, "max_completion_tokens") or _int_field(fields, "max_tokens")
    return ParsedRequest(
        raw=body,
        fields=fields,
        model=model,
        kind=kind,
        prompt_text=prompt_text,
        prompt_tokens=prompt_tokens,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        messages=messages,
    )
