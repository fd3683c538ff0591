import argparse

import pytest

from shared.config import EnvArgumentParser, env_name


def make_parser() -> EnvArgumentParser:
    p = EnvArgumentParser("svc")
    p.add_argument("--scrape-interval", type=float, default=0.05, help="how often")
    p.add_argument("--namespaces", nargs="*", default=["default"])
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=False)
    g = p.add_argument_group("grouped")
    g.add_argument("--group-flag", default="x")
    return p


def test_env_name():
    assert env_name("--scrape-interval") == "INFERGATE_SCRAPE_INTERVAL"


def test_default_env_and_flag_precedence(monkeypatch):
    assert make_parser().parse_args([]).scrape_interval == 0.05
    monkeypatch.setenv("INFERGATE_SCRAPE_INTERVAL", "0.2")
    monkeypatch.setenv("INFERGATE_NAMESPACES", "a, b")
    monkeypatch.setenv("INFERGATE_TLS", "yes")
    monkeypatch.setenv("INFERGATE_GROUP_FLAG", "y")
    args = make_parser().parse_args([])
    assert (args.scrape_interval, args.namespaces, args.tls, args.group_flag) == (0.2, ["a", "b"], True, "y")
    assert make_parser().parse_args(["--scrape-interval", "1"]).scrape_interval == 1.0


def test_bad_env_value_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("INFERGATE_SCRAPE_INTERVAL", "fast")
    with pytest.raises(SystemExit):
        make_parser().parse_args([])
    assert "INFERGATE_SCRAPE_INTERVAL='fast'" in capsys.readouterr().err


def test_help_names_the_variables():
    text = make_parser().format_help()
    assert "INFERGATE_SCRAPE_INTERVAL" in text and "INFERGATE_GROUP_FLAG" in text
    assert make_parser().env_vars()["tls"] == "INFERGATE_TLS"
