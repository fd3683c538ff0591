"""Chat messages → the prompt text the model server tokenizes, for the precise prefix path.

vLLM renders a chat request with the model's chat template (transformers'
``apply_chat_template``: a sandboxed Jinja2 environment with ``trim_blocks`` and
``lstrip_blocks``, ``messages``, ``add_generation_prompt=True``, the special-token strings
of ``tokenizer_config.json``, the ``raise_exception`` and ``strftime_now`` helpers and a
``tojson`` filter) and tokenizes the result *without* adding special tokens (the template
writes BOS itself). To land on the pods' blocks the picker must do the same:

* :class:`TemplateChat`: the template found beside the ``tokenizer.json`` (a
  ``chat_template.jinja`` file first, as transformers prefers it, else
  ``tokenizer_config.json``'s ``chat_template``; a list of named templates gives its
  ``default``), or an explicit file (the scorer's ``chat_template``, vLLM's
  ``--chat-template``). Message content given as parts becomes its text parts joined with
  ``"\\n"`` (vLLM's ``string`` content format); ``tools`` are not passed. A template may
  mark assistant turns with ``{% generation %}…{% endgeneration %}`` (transformers' tag
  for ``return_assistant_tokens_mask``, which its environment always accepts): the body
  renders unchanged, in a scope of its own, as transformers renders it.
* :class:`SimChat`: the simulator's stand-in (:func:`sim.openai.chat_prompt`), so picker
  and simulated pods agree.

:func:`find_chat` returns None when there is no template (the scorer then hashes the
picker's own flattening of the chat, which matches no real pod's blocks) or when Jinja2
is not installed (logged once).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

__all__ = ["Chat", "ChatTemplateError", "SimChat", "TemplateChat", "find_chat"]

log = logging.getLogger(__name__)

_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (the template raised, or they are malformed)."""


class Chat(Protocol):
    def render(self, messages: list[Any]) -> str: ...


class SimChat:
    def render(self, messages: list[Any]) -> str:
        from sim.openai import BadRequest, chat_prompt

        try:
            return chat_prompt({"messages": messages})
        except BadRequest as exc:
            raise ChatTemplateError(str(exc)) from exc


def _token_string(v: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _message(i: int, m: Any) -> dict[str, Any]:
    """One message as vLLM hands it to the template (``string`` content format)."""
    if not isinstance(m, dict):
        raise ChatTemplateError(f"messages[{i}] is not an object")
    out = dict(m)
    content = m.get("content")
    if content is None:
        out["content"] = ""
    elif isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
        out["content"] = "\n".join(texts)
    elif not isinstance(content, str):
        raise ChatTemplateError(f"messages[{i}].content must be a string, a list or null")
    return out


@lru_cache(maxsize=1)
def _generation_tag() -> type:
    """The ``{% generation %}`` block as a Jinja2 extension (jinja2 imported on first use).

    transformers' environment always carries its ``AssistantTracker``, which compiles the
    block to a call block (``{% call %}``: the body is rendered by a ``caller`` with its own
    scope) whose method records where the body's text lands in the output when assistant
    masks are asked for, and returns that text unchanged. Only the rendered text matters
    here, so the method just returns the body; the call block keeps the scoping identical
    (a ``{% set %}`` inside the block does not leak out).
    """
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno  # the ``generation`` name
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            return caller()

    return GenerationTag


class TemplateChat:
    """A Hugging Face chat template, rendered as ``apply_chat_template(..., tokenize=False)``."""

    def __init__(self, template: str, special_tokens: dict[str, Any] | None = None) -> None:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(
                x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
            )

        def strftime_now(fmt: str) -> str:
            return datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_tag()]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        self._errors = (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError)
        self.template = env.from_string(template)
        self.specials: dict[str, Any] = {}
        for k, v in (special_tokens or {}).items():
            if k == "additional_special_tokens" and isinstance(v, list):
                self.specials[k] = [s for s in map(_token_string, v) if s is not None]
            elif k in _SPECIALS and (s := _token_string(v)) is not None:
                self.specials[k] = s

    def render(self, messages: list[Any]) -> str:
        msgs = [_message(i, m) for i, m in enumerate(messages)]
        try:
            return self.template.render(messages=msgs, add_generation_prompt=True, **self.specials)
        except self._errors as exc:
            raise ChatTemplateError(str(exc)) from exc


def _read_template(tokenizer_path: str, config: dict[str, Any]) -> str | None:
    beside = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "chat_template.jinja")
    if os.path.isfile(beside):
        with open(beside, encoding="utf-8") as f:
            return f.read()
    t = config.get("chat_template")
    if isinstance(t, str):
        return t
    if isinstance(t, list):  # named templates: the default one
        for item in t:
            if isinstance(item, dict) and item.get("name") == "default":
                return item.get("template")
    return None


def find_chat(tokenizer_path: str, template_path: str = "") -> Chat | None:
    """The chat renderer for a ``tokenizer.json`` (``"sim"``: the simulator's); None: flatten."""
    if tokenizer_path == "sim":
        return SimChat()
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "tokenizer_config.json")
    config: dict[str, Any] = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            loaded = json.load(f)
        config = loaded if isinstance(loaded, dict) else {}
    if template_path:
        with open(template_path, encoding="utf-8") as f:
            template: str | None = f.read()
    else:
        template = _read_template(tokenizer_path, config)
    if template is None:
        log.info("no chat template beside %s: chat prompts are hashed as flattened text", tokenizer_path)
        return None
    try:
        return TemplateChat(template, config)
    except ImportError:
        log.warning(
            "%s has a chat template but jinja2 is not installed: chat prompts are hashed as "
            "flattened text and will not match the pods' blocks",
            tokenizer_path,
        )
        return None
