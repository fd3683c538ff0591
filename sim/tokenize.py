"""vLLM's tokenizer endpoints on a simulated pod: ``/tokenize``, ``/detokenize`` and the render API.

Routers that tokenize through the engine (``vllm-router``'s ``cache_aware`` calls
``POST /tokenize`` and ``POST /v1/completions/render`` or ``/v1/chat/completions/render`` on
every worker for every request) need these answers in vLLM's shapes. The simulator has
no real tokenizer: its tokenization is the documented rule of :mod:`shared.tokens`
(four characters per token, rounded up), so here a token is a 4-character piece of the
text and its id a stable hash of that piece. Hence:

* ``count`` equals ``estimate_tokens(text)``, the ``usage.prompt_tokens`` the pod reports
  for the same prompt;
* equal text prefixes give equal id prefixes (what a prefix-aware router relies on), and
  the ids are the same on every pod, in every process, in every run (CRC-32, not ``hash()``);
* no special tokens are added (the pod counts none either), whatever ``add_special_tokens``
  says; chat messages are rendered with the pod's stand-in template
  (:func:`sim.openai.chat_prompt`) before tokenizing;
* ``/detokenize`` cannot invert a hash: it returns the text the pod serves for a token-id
  prompt (:func:`sim.openai.ids_text`, four hex digits per id), so sending those ids as a
  prompt and sending the detokenized text are the same request to the pod.

The functions here are pure (parsed JSON in, JSON-ready objects out, :class:`BadRequest`
on bad input); :mod:`sim.pod` serves them.
"""

from __future__ import annotations

import uuid
import zlib

from shared.tokens import CHARS_PER_TOKEN
from sim import openai
from sim.openai import BadRequest

VOCAB_SIZE = 32_000  # Llama-2's vocabulary
FIRST_ID = 3  # 0-2 are <unk>, <s>, </s> in Llama-2; a text piece never maps to them
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "seed")


def pieces(text: str) -> list[str]:
    """The text's tokens: consecutive 4-character pieces (the last one may be shorter)."""
    n = CHARS_PER_TOKEN
    return [text[i : i + n] for i in range(0, len(text), n)]


def encode(text: str) -> list[int]:
    """Token ids of ``text``: one per piece, a CRC-32 of the piece folded into the vocabulary."""
    span = VOCAB_SIZE - FIRST_ID
    crc = zlib.crc32
    return [FIRST_ID + crc(p.encode("utf-8", "surrogatepass")) % span for p in pieces(text)]


def decode(ids: list[int]) -> str:
    """The text a token-id prompt of ``ids`` is served as (see the module docstring)."""
    return openai.ids_text(ids)


def _flag(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(400, f"'{key}' must be a boolean", key)
    return v


def _check_model(body: dict, base_model: str, adapters: dict) -> str:
    model = body.get("model")
    if model is None:
        return base_model
    if not isinstance(model, str):
        raise BadRequest(400, "'model' must be a string", "model")
    if model != base_model and model not in adapters:
        raise BadRequest(404, f"The model `{model}` does not exist.", "model")
    return model


def tokenize(body: dict, base_model: str, adapters: dict, max_model_len: int) -> dict:
    """``POST /tokenize``: ``{"prompt"}`` or ``{"messages"}`` -> ``{count, max_model_len, tokens, ...}``."""
    _check_model(body, base_model, adapters)
    if "messages" in body and body.get("prompt") is None:
        text = openai.chat_prompt(body)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest(400, "'prompt' must be a string (or send 'messages')", "prompt")
        text = prompt
    _flag(body, "add_special_tokens", True)
    strs = _flag(body, "return_token_strs", False)
    ids = encode(text)
    return {
        "count": len(ids),
        "max_model_len": max_model_len,
        "tokens": ids,
        "token_strs": pieces(text) if strs else None,
    }


def detokenize(body: dict, base_model: str, adapters: dict) -> dict:
    """``POST /detokenize``: ``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
    _check_model(body, base_model, adapters)
    ids = body.get("tokens")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest(400, "'tokens' must be a list of integers", "tokens")
    bad = next((i for i in ids if not 0 <= i < VOCAB_SIZE), None)
    if bad is not None:
        raise BadRequest(400, f"Token id {bad} is out of vocabulary", "tokens")
    return {"prompt": decode(ids)}


def _generate_request(
    body: dict, model: str, text: str, default_max: int, max_model_len: int, prefix: str
) -> dict:
    """One vLLM ``GenerateRequest``: what the engine would be handed for ``text``."""
    ids = encode(text)
    mt, _ = openai.max_tokens(body, len(ids), default_max, max_model_len)
    sampling = {k: body[k] for k in _SAMPLING_KEYS if body.get(k) is not None}
    sampling.update(n=1, max_tokens=mt, min_tokens=body.get("min_tokens") or 0)
    sampling["ignore_eos"] = bool(body.get("ignore_eos") or False)
    return {
        "request_id": f"{prefix}-{uuid.uuid4().hex}",
        "token_ids": ids,
        "features": None,
        "sampling_params": sampling,
        "model": model,
        "stream": bool(body.get("stream") or False),
        "stream_options": body.get("stream_options"),
        "cache_salt": body.get("cache_salt"),
        "priority": openai.priority(body),
        "kv_transfer_params": body.get("kv_transfer_params"),
        "token_offsets": None,
    }


def render_completion(body: dict, base_model: str, adapters: dict, max_model_len: int) -> list[dict]:
    """``POST /v1/completions/render``: a list of ``GenerateRequest``, one per prompt."""
    model, _, _, _ = openai.common(body, base_model, adapters)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) and p for p in prompt):
        texts = list(prompt)
    else:
        texts = [openai.completion_prompt(body)]
    default = openai.DEFAULT_COMPLETION_MAX_TOKENS
    return [_generate_request(body, model, t, default, max_model_len, "cmpl") for t in texts]


def render_chat(
    body: dict, base_model: str, adapters: dict, max_model_len: int, default_max_tokens: int
) -> dict:
    """``POST /v1/chat/completions/render``: one ``GenerateRequest`` for the rendered conversation."""
    model, _, _, _ = openai.common(body, base_model, adapters)
    text = openai.chat_prompt(body)
    return _generate_request(body, model, text, default_max_tokens, max_model_len, "chatcmpl")
