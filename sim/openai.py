"""The OpenAI-compatible wire format of a simulated server: request validation and responses.

Pure functions over parsed JSON (plus the SSE writer), independent of the engine: they
turn a ``/v1/completions`` or ``/v1/chat/completions`` body into the prompt text and the
sampling limits the engine needs, or raise :class:`BadRequest` with vLLM's status and
message; and they shape the JSON answers and the ``data: {json}`` stream.
"""

from __future__ import annotations

import json

from aiohttp import web

from shared.errors import error_body

DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM/OpenAI legacy completions default
FILLER = ("The ", "cat ", "sat ", "on a", " mat", " and", " was", " fed", " we ", "ll. ")
_dumps = json.dumps


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI-style error body with ``status``."""
    return web.Response(
        status=status, body=error_body(status, message, param=param), content_type="application/json"
    )


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def filler_text(start: int, n: int) -> str:
    """``n`` tokens of generated text (4 characters each), from token ``start`` on."""
    f = FILLER
    return "".join(f[(start + i) % 10] for i in range(n))


def ids_text(ids: list[int]) -> str:
    # 4 characters per token id, so estimate_tokens and the 64-char hash blocks line up
    return "".join(f"{i & 0xFFFF:04x}" for i in ids)


def json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "The request body must be a JSON object")
    return body


def common(body: dict, base_model: str, adapters: dict) -> tuple[str, str | None, bool, bool]:
    """``(model, lora, stream, include_usage)``; the model must be the base or an adapter."""
    model = body.get("model", base_model)
    if model is None:
        model = base_model
    if not isinstance(model, str):
        raise BadRequest(400, "'model' must be a string", "model")
    if model == base_model:
        lora = None
    elif model in adapters:
        lora = model
    else:
        raise BadRequest(404, f"The model `{model}` does not exist.", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest(400, "'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise BadRequest(400, "'stream_options' must be an object", "stream_options")
        if not stream:
            raise BadRequest(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        include_usage = bool(opts.get("include_usage", False))
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise BadRequest(400, f"'{key}' must be a number", key)
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
        raise BadRequest(400, "the simulator supports only n = 1", "n")
    return model, lora, stream, include_usage


def max_tokens(body: dict, prompt_tokens: int, default: int, max_model_len: int) -> tuple[int, bool]:
    """``(max_tokens, explicit)``: the limit, and whether the client set it."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    mt = body.get(key)
    explicit = mt is not None
    if mt is None:
        mt = max(1, min(default, max_model_len - prompt_tokens))
    if isinstance(mt, bool) or not isinstance(mt, int):
        raise BadRequest(400, f"'{key}' must be an integer", key)
    if mt < 1:
        raise BadRequest(400, f"max_tokens must be at least 1, got {mt}.", key)
    mn = body.get("min_tokens", 0)
    if mn is None:
        mn = 0
    if isinstance(mn, bool) or not isinstance(mn, int) or mn < 0:
        raise BadRequest(400, f"min_tokens must be greater than or equal to 0, got {mn}.", "min_tokens")
    if mn > mt:
        raise BadRequest(
            400, f"min_tokens must be less than or equal to max_tokens={mt}, got {mn}.", "min_tokens"
        )
    v = body.get("ignore_eos")
    if v is not None and not isinstance(v, bool):
        raise BadRequest(400, "'ignore_eos' must be a boolean", "ignore_eos")
    if prompt_tokens + mt > max_model_len:
        raise BadRequest(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + mt} tokens ({prompt_tokens} in the messages, {mt} in the "
            "completion). Please reduce the length of the messages or completion.",
        )
    return mt, explicit


def priority(body: dict) -> int:
    p = body.get("priority", 0)
    if p is None:
        return 0
    if isinstance(p, bool) or not isinstance(p, int):
        raise BadRequest(400, "'priority' must be an integer", "priority")
    return p


def _token_ids(x: object) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)


def completion_prompt(body: dict) -> str:
    """The prompt text of a ``/v1/completions`` body (a string, one string, or token ids)."""
    if "prompt" not in body or body["prompt"] is None:
        raise BadRequest(400, "'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
        if len(prompt) != 1:
            raise BadRequest(400, "the simulator supports a single prompt per request", "prompt")
        text = prompt[0]
    elif _token_ids(prompt):
        text = ids_text(prompt)
    elif isinstance(prompt, list) and len(prompt) == 1 and _token_ids(prompt[0]):
        text = ids_text(prompt[0])
    else:
        raise BadRequest(400, "'prompt' must be a non-empty string, list of strings or token ids", "prompt")
    if not text:
        raise BadRequest(400, "The prompt cannot be empty.", "prompt")
    return text


def chat_prompt(body: dict) -> str:
    """The prompt text of a ``/v1/chat/completions`` body (a cheap stand-in for the template)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest(400, "'messages' must be a non-empty list", "messages")
    parts = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(400, "each message must be an object with a string 'role'", "messages")
        content = m.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):
            texts = []
            for p in content:
                if not isinstance(p, dict):
                    raise BadRequest(400, "content parts must be objects", "messages")
                if p.get("type") == "text":
                    texts.append(str(p.get("text", "")))
            content = "".join(texts)
        elif not isinstance(content, str):
            raise BadRequest(400, "message 'content' must be a string or a list of parts", "messages")
        parts.append(f"[{m['role']}] {content}\n")
    return "".join(parts)


def usage(prompt_tokens: int, n_out: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + n_out,
        "completion_tokens": n_out,
        "prompt_tokens_details": None,
    }


def full_response(
    rid: str, created: int, model: str, prompt_tokens: int, n_out: int, reason: str, chat: bool
):
    """The non-streaming answer with ``n_out`` generated tokens."""
    text = filler_text(0, n_out)
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "reasoning_content": None, "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj = "text_completion"
    body = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(prompt_tokens, n_out),
        "prompt_logprobs": None,
    }
    return web.Response(body=_dumps(body).encode(), content_type="application/json")


class SseWriter:
    """The ``data: {json}\\n\\n`` chunks of one streamed completion, ending ``data: [DONE]``."""

    def __init__(self, resp: web.StreamResponse, rid: str, created: int, model: str, chat: bool) -> None:
        self.resp = resp
        self.chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.head = {"id": rid, "object": obj, "created": created, "model": model}

    async def _send(self, obj: dict) -> None:
        await self.resp.write(b"data: " + _dumps(obj).encode() + b"\n\n")

    async def role(self) -> None:
        """The chat stream's first chunk: the assistant role, empty content."""
        delta = {"role": "assistant", "content": ""}
        await self._send(
            dict(self.head, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        )

    async def tokens(self, start: int, n: int, finish_reason: str | None) -> None:
        piece = filler_text(start, n)
        if self.chat:
            choice = {
                "index": 0,
                "delta": {"content": piece},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": piece,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        await self._send(dict(self.head, choices=[choice]))

    async def finish(self, usage_: dict | None) -> None:
        if usage_ is not None:
            await self._send(dict(self.head, choices=[], usage=usage_))
        await self.resp.write(b"data: [DONE]\n\n")
        await self.resp.write_eof()
