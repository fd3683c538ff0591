"""Pluggable tokenizers for the precise prefix path: the prompt must become vLLM's token ids.

* ``sim``: the simulator's documented tokenization (:func:`sim.tokenize.encode`), for
  simulated pods;
* a path to a model's ``tokenizer.json``: the Hugging Face ``tokenizers`` library, read
  from the local file only (never a download), with the model's special tokens added as
  vLLM adds them to a completion prompt (``add_special_tokens``, default true).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

__all__ = ["HFTokenizer", "SimTokenizer", "Tokenizer", "load_tokenizer"]


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class SimTokenizer:
    def encode(self, text: str) -> list[int]:
        from sim.tokenize import encode

        return encode(text)


class HFTokenizer:
    def __init__(self, path: str, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer as _HF

        self._tok = _HF.from_file(path)  # a local file: from_pretrained would download
        self.add_special_tokens = add_special_tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids


@lru_cache(maxsize=16)
def load_tokenizer(spec: str, add_special_tokens: bool = True) -> Tokenizer:
    """``"sim"`` or the path of a ``tokenizer.json``; loaded once per process."""
    if spec == "sim":
        return SimTokenizer()
    return HFTokenizer(spec, add_special_tokens)
