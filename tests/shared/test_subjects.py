import pytest

from shared.subjects import Subjects, token, untoken


def test_subjects_are_single_tokens():
    s = Subjects()
    subj = s.endpoint("ns-1", "pool", "vllm.pod.a", 8000)
    assert subj == "infergate.ns-1.pool.ep.vllm~2epod~2ea.8000"
    assert subj.count(".") == 5


@pytest.mark.parametrize("name", ["a.b", "x*y", "p>q", "with space", "ok-name_1", "ü"])
def test_token_round_trip(name):
    t = token(name)
    assert all(c not in t for c in ".*> ")
    assert untoken(t) == name


def test_empty_token_rejected():
    with pytest.raises(ValueError):
        token("")


def test_wildcards_and_streams():
    s = Subjects("acme.prod")
    assert s.endpoints_of_pool("ns", "pool") == "acme.prod.ns.pool.ep.>"
    assert s.events("ns", "pool", "picker-0") == "acme.prod.ns.pool.ev.picker-0"
    assert s.endpoint_stream == "ACME_PROD_ENDPOINTS"


@pytest.mark.parametrize("prefix", ["infergate", "acme.prod"])
def test_parse_reverses_every_builder(prefix):
    s = Subjects(prefix)
    ep = s.parse(s.endpoint("ns.1", "pool*x", "vllm.pod.a", 8000))
    assert (ep.kind, ep.namespace, ep.pool, ep.name, ep.port) == (
        "endpoint",
        "ns.1",
        "pool*x",
        "vllm.pod.a",
        8000,
    )
    ev = s.parse(s.events("ns", "pool", "picker 0"))
    assert (ev.kind, ev.namespace, ev.pool, ev.name) == ("events", "ns", "pool", "picker 0")


@pytest.mark.parametrize(
    "subject",
    [
        "other.ns.pool.ev.r",
        "infergate.ns.pool.xx.r",
        "infergate.ns.pool.ep.pod",
        "infergate.ns.pool.ep.pod.x",
    ],
)
def test_parse_refuses_what_is_not_ours(subject):
    assert Subjects().parse(subject) is None
