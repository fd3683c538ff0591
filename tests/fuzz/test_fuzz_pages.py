"""Fuzz the collector's metrics-page parser with real pages, mutated, and with random text.

Pages start as the simulator's vLLM and SGLang pages (two data-parallel engines, LoRA
series), then lines are dropped, duplicated, truncated, their values replaced by odd
tokens, their labels broken, bytes flipped. :func:`collector.parse.scan` may raise only
its documented :class:`~collector.parse.ParseError`; :func:`collector.parse.parse`
never raises, never hits its defensive catch-all (``parser failure``: a bug), and whatever
it returns is a sane snapshot (non-negative counts, finite counters, usage in [0, 1]).
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from collector import parse as P
from sim import sglang_page, vllm_page
from sim.vllm_page import EngineState, PageState
from tests.fuzz.budget import budget

_STATE = PageState(
    engines=[EngineState(running=3, waiting=2, kv_usage=0.4), EngineState(running=1, kv_usage=0.2)],
    running_loras=["a", "b"],
    waiting_loras=["c"],
    filler_histograms=0,
)
BASE_PAGES = [
    vllm_page.render(_STATE),
    sglang_page.render(_STATE),
    vllm_page.render(PageState(legacy_kv_name=True)),
]
ODD_VALUES = [
    "NaN",
    "+Inf",
    "-Inf",
    "-1",
    "1e400",
    "1_000",
    "0x10",
    "",
    "inf",
    "nan",
    "1e-400",
    "9" * 400,
    "--1",
]
TOKENS = [*'vlm:_{}"=,\\ \n\t0123456789.e+-NaInf#', "sglang:", "vllm:", "engine=", "} "]
ODD_TEXT = ["{", "}", '"', "\\", '="', ",}", '{a="b"', 'x="\\q"', "\x00", "é", " ", "\t", "#", "\r"]


@st.composite
def mutated_pages(draw) -> str:
    lines = draw(st.sampled_from(BASE_PAGES)).splitlines()
    for _ in range(draw(st.integers(1, 12))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "value", "cut", "insert", "flip", "labels"]))
        line = lines[i]
        if op == "drop":
            lines.pop(i)
        elif op == "dup":
            lines.insert(i, line)
        elif op == "value" and " " in line:
            lines[i] = line.rsplit(" ", 1)[0] + " " + draw(st.sampled_from(ODD_VALUES))
        elif op == "cut":
            lines[i] = line[: draw(st.integers(0, len(line)))]
        elif op == "insert":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=6))) + line[at:]
        elif op == "flip" and line:
            at = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:at] + chr(draw(st.integers(0, 0x2FF))) + line[at + 1 :]
        elif op == "labels" and "{" in line:
            lines[i] = line.replace(
                "{", "{" + draw(st.sampled_from(['engine="0",', 'x="', ",", 'a="1",a="2",'])), 1
            )
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))


pages = st.one_of(
    mutated_pages(),
    st.lists(st.sampled_from(TOKENS + list(P.WANTED)), max_size=60).map("".join),
    st.binary(max_size=300),
)


def _check(pm: P.PageMetrics) -> None:
    assert not pm.error.startswith("parser failure"), pm.error
    if pm.error:
        return
    assert pm.running >= 0 and pm.waiting >= 0, pm
    assert 0.0 <= pm.kv_usage <= 1.0, pm
    for v in (pm.prefix_queries, pm.prefix_hits, pm.preemptions):
        assert math.isfinite(v) and v >= 0, pm
    assert pm.kv_capacity_tokens >= 0 and pm.block_size > 0 and pm.max_lora >= 0 and pm.engines >= 0, pm
    assert all(isinstance(a, str) and a for a in pm.lora_running + pm.lora_waiting), pm


@budget(250)
@given(page=pages)
def test_any_page_gives_a_sane_result_or_the_documented_error(page):
    try:
        P.scan(page)
    except P.ParseError:
        pass
    _check(P.parse(page))
    if isinstance(page, str):
        _check(P.parse(page.encode("utf-8", "surrogatepass")))
