"""The fast /metrics parser against prometheus_client (the oracle), plus edge cases."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from collector import parse as P
from sim import sglang_page
from sim.vllm_page import EngineState, PageState, page_of_size, render

# ---------------------------------------------------------------------------------------
# page generator
# ---------------------------------------------------------------------------------------

LABEL_KEYS = [
    "model_name",
    "engine",
    "block_size",
    "num_gpu_blocks",
    "max_lora",
    "running_lora_adapters",
    "waiting_lora_adapters",
    "le",
    "finished_reason",
]
label_name = st.one_of(
    st.sampled_from(LABEL_KEYS),
    st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9_]{0,12}\Z"),
)
# Label values stress the escaping: quotes, backslashes, newlines, commas, braces, unicode.
label_value = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('"\\\n,{}= \t#ab01.-:/')),
        st.characters(
            blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        ),
    ),
    max_size=20,
)


def esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


value_text = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: (
            "NaN" if math.isnan(f) else ("+Inf" if f == math.inf else "-Inf" if f == -math.inf else repr(f))
        )
    ),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e3", "1.5E-7", "0", "-0.0", "+3", "12345678.5"]),
)
blank = st.sampled_from([" ", "\t", "  ", " \t "])

lookalikes = (
    [n + "_created" for n in P.WANTED]
    + [n + "x" for n in P.WANTED]
    + [
        "vllm:num_requests",
        "vllm:prefix_cache_queries",
        "xvllm:num_requests_running",
        "vllm:num_requests_running_by_reason",
        "vllm:time_to_first_token_seconds_bucket",
        "python_gc_objects_collected_total",
    ]
)
metric_name = st.one_of(
    st.sampled_from(P.WANTED),
    st.sampled_from(P.WANTED),
    st.sampled_from(P.WANTED),
    st.sampled_from(P.WANTED),
    st.sampled_from(lookalikes),
    st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_:]{0,20}\Z"),
)


@st.composite
def sample_line(draw) -> str:
    name = draw(metric_name)
    keys = draw(st.lists(label_name, unique=True, max_size=5))
    lead = draw(st.sampled_from(["", "", "", " ", "\t"]))
    line = lead + name
    if keys or draw(st.booleans()):
        if draw(st.booleans()):
            line += draw(blank)
        parts = []
        for k in keys:
            sep1 = draw(st.sampled_from(["", "", " "]))
            parts.append(f'{k}{sep1}={sep1}"{esc(draw(label_value))}"')
        joiner = draw(st.sampled_from([",", ",", ", "]))
        inner = joiner.join(parts)
        if parts and draw(st.integers(0, 5)) == 0:
            inner += ","  # a trailing comma is accepted by the text format
        line += "{" + inner + "}"
    line += draw(blank) + draw(value_text)
    if draw(st.integers(0, 3)) == 0:
        line += draw(blank) + str(draw(st.integers(0, 2_000_000_000_000)))
    if draw(st.integers(0, 4)) == 0:
        line += draw(blank)
    return line


@st.composite
def comment_line(draw) -> str:
    kind = draw(st.integers(0, 3))
    name = draw(metric_name)
    if kind == 0:
        doc = draw(st.text(alphabet="abc de\\\\n", max_size=15))
        return f"# HELP {name} {doc}".rstrip()
    if kind == 1:
        # Keep TYPE lines consistent with vLLM so the oracle does not rename samples:
        # only a *_total counter's base name is typed "counter".
        if name.endswith("_total") and draw(st.booleans()):
            return f"# TYPE {name[:-6]} counter"
        return f"# TYPE {name} {draw(st.sampled_from(['gauge', 'untyped', 'summary']))}"
    if kind == 2:
        return "# " + draw(st.text(alphabet='abc vllm:_{}"=1', max_size=30))
    return "#"


@st.composite
def pages(draw) -> str:
    lines = draw(
        st.lists(
            st.one_of(sample_line(), sample_line(), sample_line(), comment_line(), st.just("")),
            min_size=1,
            max_size=40,
        )
    )
    nl = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return nl.join(lines) + draw(st.sampled_from(["", "\n"]))


def oracle_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in P.WANTED:
                out.append((s.name, dict(s.labels), float(s.value)))
    return out


def ours(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for s in P.scan(text.encode())]


def same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for (n1, l1, v1), (n2, l2, v2) in zip(a, b, strict=True):
        if n1 != n2 or l1 != l2:
            return False
        if not (v1 == v2 or (math.isnan(v1) and math.isnan(v2))):
            return False
    return True


# ---------------------------------------------------------------------------------------
# property tests against the oracle
# ---------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pages())
def test_scan_matches_prometheus_client(text):
    try:
        expected = oracle_samples(text)
    except Exception:
        # The oracle rejects the page (e.g. a malformed line of another family, which the
        # fast parser deliberately does not validate). Ours must still not crash.
        P.parse(text.encode())
        return
    got = ours(text)
    assert same(got, expected), (got, expected)


@settings(max_examples=200, deadline=None)
@given(pages())
def test_parse_summary_equals_summary_of_oracle_samples(text):
    try:
        expected = oracle_samples(text)
    except Exception:
        return
    oracle_pm = P.summarize([P.Sample(n, lab, v) for n, lab, v in expected])
    assert P.parse(text.encode()) == oracle_pm


@st.composite
def page_states(draw) -> PageState:
    n = draw(st.integers(1, 4))
    adapter = st.from_regex(r"\A[a-z][a-z0-9\-]{0,10}\Z")
    engines = [
        EngineState(
            running=draw(st.integers(0, 300)),
            waiting=draw(st.integers(0, 1000)),
            kv_usage=draw(st.floats(0, 1)),
            prefix_queries=float(draw(st.integers(0, 10**9))),
            prefix_hits=float(draw(st.integers(0, 10**9))),
            preemptions=float(draw(st.integers(0, 10**6))),
            prompt_tokens=float(draw(st.integers(0, 10**9))),
            num_gpu_blocks=draw(st.integers(1, 100_000)),
            block_size=16,
        )
        for _ in range(n)
    ]
    return PageState(
        model=draw(st.text(min_size=1, max_size=30).filter(lambda s: "\r" not in s and s.strip() == s)),
        engines=engines,
        max_lora=draw(st.integers(0, 8)),
        running_loras=draw(st.lists(adapter, max_size=4)),
        waiting_loras=draw(st.lists(adapter, max_size=4)),
        lora_ts=draw(st.floats(1e9, 2e9)),
        legacy_kv_name=draw(st.booleans()),
        lora_enabled=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(page_states())
def test_realistic_pages_against_oracle_and_state(state):
    text = render(state)
    got = ours(text)
    assert same(got, oracle_samples(text))
    pm = P.parse(text.encode())
    assert pm.error == ""
    assert pm.model == state.model
    assert pm.running == sum(e.running for e in state.engines)
    assert pm.waiting == sum(e.waiting for e in state.engines)
    caps = [e.num_gpu_blocks * e.block_size for e in state.engines]
    assert pm.kv_capacity_tokens == sum(caps)
    weighted = sum(e.kv_usage * c for e, c in zip(state.engines, caps, strict=True)) / sum(caps)
    assert math.isclose(pm.kv_usage, weighted, rel_tol=1e-9, abs_tol=1e-12)
    assert pm.prefix_queries == sum(e.prefix_queries for e in state.engines)
    assert pm.prefix_hits == sum(e.prefix_hits for e in state.engines)
    assert pm.preemptions == sum(e.preemptions for e in state.engines)
    assert pm.engines == len(state.engines)
    if state.lora_enabled:
        assert pm.lora_running == state.running_loras
        assert pm.lora_waiting == state.waiting_loras
        assert pm.max_lora == state.max_lora
    else:
        assert (pm.lora_running, pm.lora_waiting, pm.max_lora) == ([], [], 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_raises_on_random_bytes(data):
    pm = P.parse(data)
    assert isinstance(pm, P.PageMetrics)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='vlm:_{}"=,\\ \n\t0123456789.e+-NaInf#' + "".join(P.WANTED), max_size=400))
def test_parse_never_raises_on_adversarial_text(text):
    pm = P.parse(text)
    assert isinstance(pm, P.PageMetrics)
    if pm.error == "":
        assert 0.0 <= pm.kv_usage <= 1.0 and pm.running >= 0 and pm.waiting >= 0


# ---------------------------------------------------------------------------------------
# explicit edge cases
# ---------------------------------------------------------------------------------------

BASIC = (
    'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
    'vllm:num_requests_waiting{engine="0",model_name="m"} 4\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
)


def test_first_line_without_leading_newline_and_no_trailing_newline():
    pm = P.parse(BASIC.rstrip("\n"))
    assert (pm.running, pm.waiting, pm.kv_usage, pm.model) == (3, 4, 0.25, "m")


def test_escaped_quotes_commas_backslashes_in_label_values():
    text = (
        'vllm:num_requests_running{model_name="we\\"ird,\\\\mo}del\\n",engine="0"} 2\n'
        'vllm:num_requests_waiting{model_name="we\\"ird,\\\\mo}del\\n",engine="0"} 1\n'
    )
    pm = P.parse(text)
    assert pm.error == ""
    assert pm.model == 'we"ird,\\mo}del\n'
    assert same(ours(text), oracle_samples(text))


def test_special_values_timestamps_comments_blank_lines():
    text = (
        "# HELP vllm:num_requests_running Number of requests.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "\n"
        "# a free comment mentioning vllm:num_requests_waiting 99\n"
        '   vllm:num_requests_running{engine="0",model_name="m"}   5   1700000000000\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"}\t+Inf\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} NaN\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} -Inf\n'
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1e3 1700000000000\n'
    )
    assert same(ours(text), oracle_samples(text))
    pm = P.parse(text)
    assert pm.error == ""
    assert pm.running == 5
    assert pm.waiting == 0  # +Inf is not a count
    assert pm.kv_usage == 0.0  # NaN is ignored
    assert pm.prefix_hits == 0.0
    assert pm.prefix_queries == 1000.0


def test_unknown_families_created_series_and_lookalikes_are_skipped():
    text = (
        'vllm:num_requests_running_created{engine="0",model_name="m"} 1.7e9\n'
        'vllm:num_requests_runningx{engine="0"} 100\n'
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 100\n'
        'vllm:prefix_cache_queries_created{engine="0"} 1.7e9\n'
        'xvllm:num_requests_running{engine="0"} 100\n'
        'foo_bar{a="vllm:num_requests_running 5"} 1\n' + BASIC
    )
    assert [s.name for s in P.scan(text)] == [P.RUNNING, P.WAITING, P.KV_USAGE]
    assert P.parse(text).running == 3


def test_crlf_line_endings():
    assert P.parse(BASIC.replace("\n", "\r\n")).kv_usage == 0.25


def test_legacy_kv_name_and_preference_for_the_new_one():
    legacy = BASIC.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert P.parse(legacy).kv_usage == 0.25
    both = legacy + 'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    assert P.parse(both).kv_usage == 0.5


def test_data_parallel_engines_sum_and_capacity_weighted_kv():
    text = (
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 5\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.8\n'
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1\n'
        'vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="300"} 1\n'
        'vllm:num_preemptions_total{engine="0",model_name="m"} 2\n'
        'vllm:num_preemptions_total{engine="1",model_name="m"} 3\n'
    )
    pm = P.parse(text)
    assert (pm.running, pm.waiting, pm.preemptions, pm.engines) == (8, 3, 5.0, 2)
    assert pm.kv_capacity_tokens == 16 * 400
    assert math.isclose(pm.kv_usage, (0.2 * 100 + 0.8 * 300) / 400)


def test_plain_mean_kv_when_capacity_unknown():
    text = (
        BASIC
        + 'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
        + 'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="None"} 1\n'
    )
    pm = P.parse(text)
    assert math.isclose(pm.kv_usage, 0.5)
    assert pm.kv_capacity_tokens == 0
    assert pm.block_size == 16


def test_kv_usage_is_clamped():
    assert P.parse(BASIC.replace("0.25", "1.7")).kv_usage == 1.0
    assert P.parse(BASIC.replace("0.25", "-0.5")).kv_usage == 0.0


def test_lora_takes_the_newest_series():
    info = (
        'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{}",waiting_lora_adapters="{}"}} {}\n'
    )
    text = (
        BASIC
        + info.format("old", "", 1700000100)
        + info.format("a,b", "c", 1700000200)
        + info.format("older", "", 1700000000)
    )
    pm = P.parse(text)
    assert (pm.lora_running, pm.lora_waiting, pm.max_lora) == (["a", "b"], ["c"], 4)


def test_lora_empty_adapters():
    text = (
        BASIC + 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1\n'
    )
    pm = P.parse(text)
    assert (pm.lora_running, pm.lora_waiting, pm.max_lora) == ([], [], 2)


def test_garbage_pages_give_an_error_result():
    for junk in [
        b"",
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"error": "not found"}',
        bytes(range(256)) * 10,
        b"# HELP only comments\n# TYPE x gauge\n",
        "ünïcödé \x00\x01 garbage".encode(),
    ]:
        pm = P.parse(junk)
        assert pm.error, junk


def test_malformed_wanted_line_is_an_error():
    for bad in [
        'vllm:num_requests_running{engine="0",model_name="m} 3\n',  # unterminated quote
        'vllm:num_requests_running{engine="0" model_name="m"} 3\n',  # missing comma
        'vllm:num_requests_running{engine="0"} three\n',
        'vllm:num_requests_running{engine="0"} 1_000\n',
        'vllm:num_requests_running{engine="0",engine="1"} 1\n',
        "vllm:num_requests_running \n",
    ]:
        pm = P.parse(BASIC + bad)
        assert pm.error, bad
        assert P.ParseError.__name__  # parse() returned instead of raising


def test_realistic_page_parses_whole():
    """A 50 KB page like vLLM's parses without error, every time (bench/collector_bench.py
    measures its cost; the suite asserts behaviour, not speed)."""
    page = page_of_size(50_000).encode()
    assert 45_000 <= len(page) <= 60_000
    first = P.parse(page)
    assert not first.error
    for _ in range(3):  # the label cache's reuse changes nothing
        again = P.parse(page)
        assert not again.error and again == first


def test_label_cache_reuse_keeps_values_and_errors_exact():
    line = 'vllm:num_requests_running{engine="0",model_name="cache-test"} '
    kv = 'vllm:kv_cache_usage_perc{engine="0",model_name="cache-test"} 0.5\n'
    assert P.parse(line + "1\n" + kv).running == 1
    assert P.parse(line + "7 1700000000000\n" + kv).running == 7  # cached labels, new value
    assert P.parse(line + "3\r\n" + kv).running == 3
    for bad in ["x", "1_0", ""]:
        assert P.parse(line + bad + "\n" + kv).error, bad  # the cache never hides an error
    # a value part that is not ASCII takes the full path and agrees with the oracle
    odd = line + "2\u00a0\n" + kv
    assert same(ours(odd), oracle_samples(odd))
    # the same page twice: identical results (cached label dicts are not mutated)
    page = page_of_size(50_000).encode()
    assert P.parse(page) == P.parse(page)


# ---------------------------------------------------------------------------------------
# SGLang pages
# ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(page_states())
def test_realistic_sglang_pages_against_oracle_and_state(state):
    """SGLang's dialect of the same state (sim/sglang_page.py): same oracle, same numbers."""
    text = sglang_page.render(state)
    got = ours(text)
    assert same(got, oracle_samples(text))
    assert any(n.startswith("sglang:") for n, _, _ in got)
    pm = P.parse(text.encode())
    assert pm.error == "" and pm.engine == "sglang"
    assert pm.model == state.model
    assert pm.running == sum(e.running for e in state.engines)
    assert pm.waiting == sum(e.waiting for e in state.engines)
    caps = [e.num_gpu_blocks * e.block_size for e in state.engines]
    assert pm.kv_capacity_tokens == sum(caps)
    weighted = sum(e.kv_usage * c for e, c in zip(state.engines, caps, strict=True)) / sum(caps)
    assert math.isclose(pm.kv_usage, weighted, rel_tol=1e-9, abs_tol=1e-12)
    assert pm.prefix_queries == sum(e.prompt_tokens for e in state.engines)
    assert pm.prefix_hits == sum(e.prefix_hits for e in state.engines)
    assert pm.preemptions == sum(e.preemptions for e in state.engines)
    assert pm.engines == len(state.engines)
    assert (pm.lora_running, pm.lora_waiting, pm.max_lora) == ([], [], 0)


def test_vllm_pages_say_vllm():
    assert P.parse(page_of_size(20_000)).engine == "vllm"


def test_sglang_tensor_ranks_count_once_and_data_parallel_ranks_add_up():
    def line(name, value, **labels):
        lab = ",".join(f'{k}="{v}"' for k, v in {"model_name": "m", **labels}.items())
        return f"{name}{{{lab}}} {value}"

    page = "\n".join(
        [
            # dp rank 0 with two tensor ranks reporting the same scheduler state
            line("sglang:num_running_reqs", 5, tp_rank="0", dp_rank="0"),
            line("sglang:num_running_reqs", 5, tp_rank="1", dp_rank="0"),
            line("sglang:num_queue_reqs", 7, tp_rank="0", dp_rank="0"),
            line("sglang:num_queue_reqs", 7, tp_rank="1", dp_rank="0"),
            line("sglang:token_usage", 0.5, tp_rank="0", dp_rank="0"),
            line("sglang:max_total_num_tokens", 1000, tp_rank="0", dp_rank="0"),
            # dp rank 1
            line("sglang:num_running_reqs", 1, tp_rank="0", dp_rank="1"),
            line("sglang:num_queue_reqs", 0, tp_rank="0", dp_rank="1"),
            line("sglang:token_usage", 0.0, tp_rank="0", dp_rank="1"),
            line("sglang:max_total_num_tokens", 3000, tp_rank="0", dp_rank="1"),
            line("sglang:num_retracted_requests_total", 2, tp_rank="0", dp_rank="1"),
            # tokenizer counters: summed over their series
            line("sglang:prompt_tokens_total", 100),
            line("sglang:cached_tokens_total", 30, cache_source="device"),
            line("sglang:cached_tokens_total", 10, cache_source="host"),
            line("sglang:num_running_reqs_offline_batch", 99, tp_rank="0"),  # a look-alike
        ]
    )
    pm = P.parse(page)
    assert (pm.engine, pm.model, pm.running, pm.waiting, pm.engines) == ("sglang", "m", 6, 7, 2)
    assert pm.kv_capacity_tokens == 4000 and math.isclose(pm.kv_usage, 0.125)
    assert (pm.prefix_queries, pm.prefix_hits, pm.preemptions) == (100.0, 40.0, 2.0)


def test_a_page_with_both_engines_is_read_as_vllm():
    text = render(PageState(engines=[EngineState(waiting=3)])) + sglang_page.render(
        PageState(engines=[EngineState(waiting=50)])
    )
    pm = P.parse(text)
    assert (pm.engine, pm.waiting) == ("vllm", 3)


def test_sglang_usage_ignores_non_finite_values_and_no_core_metrics_is_an_error():
    pm = P.parse('sglang:token_usage{model_name="m"} NaN\nsglang:num_queue_reqs{model_name="m"} 2\n')
    assert (pm.engine, pm.kv_usage, pm.waiting) == ("sglang", 0.0, 2)
    assert "SGLang" in P.parse('sglang:max_total_num_tokens{model_name="m"} 5\n').error
