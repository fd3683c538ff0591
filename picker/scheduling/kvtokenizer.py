"""Pluggable tokenizers for the precise prefix path: the prompt must become vLLM's token ids.

* ``sim``: the simulator's documented tokenization (:func:`sim.tokenize.encode`), for
  simulated pods;
* a path to a model's ``tokenizer.json``: the Hugging Face ``tokenizers`` library, read
  from the local file only (never a download), with the model's special tokens added as
  vLLM adds them to a completion prompt (``add_special_tokens``, default true).

The Hugging Face calls go through ``encode_batch`` with one text: unlike ``encode`` it
releases the GIL while the Rust code runs (measured: a 32k-token prompt tokenized in a
worker thread stalls the event loop ~30 ms with ``encode_batch``, ~300-750 ms with
``encode``), at the same cost for one text.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

__all__ = ["HFTokenizer", "SimTokenizer", "Tokenizer", "load_tokenizer"]


class Tokenizer(Protocol):
    """``encode``: the ids vLLM sees; ``encode_offsets`` + ``specials``: what the prefix cache needs."""

    specials: tuple[list[int], list[int]]

    def encode(self, text: str) -> list[int]: ...

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]: ...


class SimTokenizer:
    specials: tuple[list[int], list[int]] = ([], [])  # the simulator adds no special tokens

    def encode(self, text: str) -> list[int]:
        from sim.tokenize import encode

        return encode(text)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """The ids and each token's first character (a token is 4 characters: sim/tokenize.py)."""
        from shared.tokens import CHARS_PER_TOKEN
        from sim.tokenize import encode

        return encode(text), list(range(0, len(text), CHARS_PER_TOKEN))


class HFTokenizer:
    def __init__(self, path: str, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer as _HF

        self._tok = _HF.from_file(path)  # a local file: from_pretrained would download
        self.add_special_tokens = add_special_tokens
        self.specials = self._specials() if add_special_tokens else ([], [])

    def encode(self, text: str) -> list[int]:
        return self._tok.encode_batch([text], add_special_tokens=self.add_special_tokens)[0].ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """The ids without special tokens and each token's first character in ``text``."""
        e = self._tok.encode_batch([text], add_special_tokens=False)[0]
        return e.ids, [a for a, _b in e.offsets]

    def _specials(self) -> tuple[list[int], list[int]]:
        """What the post-processor adds before and after a single sequence (BOS, EOS...)."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i], full[i + len(plain) :]
        raise ValueError("the tokenizer's post-processor changes the text's own tokens")


@lru_cache(maxsize=16)
def load_tokenizer(spec: str, add_special_tokens: bool = True) -> Tokenizer:
    """``"sim"`` or the path of a ``tokenizer.json``; loaded once per process."""
    if spec == "sim":
        return SimTokenizer()
    return HFTokenizer(spec, add_special_tokens)
