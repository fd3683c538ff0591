import argparse
from dataclasses import dataclass

import pytest

from shared.config import EnvArgumentParser, add_settings, env_name, from_args, setting


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


@dataclass
class _Settings:
    interval: float = setting(0.5, group="timing", help="seconds between polls")
    names: list[str] = setting(default_factory=list, group="timing", help="names")
    ports: list[int] = setting(default_factory=lambda: [1], help="ports")
    tls: bool = setting(False, help="serve TLS")
    cert: str | None = setting(None, help="certificate")
    host: str = setting("0.0.0.0", flag="--bind-address", help="address")
    mode: str = setting("a", choices=("a", "b"), help="mode")
    auto: bool = setting(False, cli_default=None, help="tri-state on the CLI")
    derived: int = 0  # no flag


def _settings_parser() -> EnvArgumentParser:
    p = EnvArgumentParser("svc")
    add_settings(p, _Settings)
    return p


def test_settings_declared_once_become_flags_and_fields(monkeypatch):
    p = _settings_parser()
    assert from_args(_Settings, p.parse_args([]), auto=False) == _Settings()
    assert p.parse_args([]).auto is None  # the CLI default differs where asked
    monkeypatch.setenv("INFERGATE_PORTS", "7,8")
    monkeypatch.setenv("INFERGATE_BIND_ADDRESS", "::")
    args = _settings_parser().parse_args(
        ["--interval", "2", "--names", "x", "y", "--tls", "--cert", "c.pem", "--mode", "b", "--auto"]
    )
    cfg = from_args(_Settings, args, derived=3)
    assert cfg == _Settings(2.0, ["x", "y"], [7, 8], True, "c.pem", "::", "b", True, 3)
    with pytest.raises(SystemExit):
        _settings_parser().parse_args(["--mode", "c"])


def test_settings_help_keeps_groups_and_variables():
    p = _settings_parser()
    text = p.format_help()
    assert "timing:" in text and "seconds between polls" in text and "--no-tls" in text
    assert p.env_vars()["bind_address"] == "INFERGATE_BIND_ADDRESS"
    groups = {g.title: [a.dest for a in g._group_actions] for g in p._action_groups}
    assert groups["timing"] == ["interval", "names"]
