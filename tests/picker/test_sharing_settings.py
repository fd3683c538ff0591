"""The sharing flags: defaults, environment fallbacks, and the settings they produce."""

from __future__ import annotations

from picker.sharing import SharingSettings, add_sharing_flags, settings_from_args
from shared.config import EnvArgumentParser


def parse(argv: list[str]) -> SharingSettings:
    parser = EnvArgumentParser()
    add_sharing_flags(parser)
    return settings_from_args(parser.parse_args(argv))


def test_defaults_match_the_documented_settings(monkeypatch):
    monkeypatch.setenv("HOSTNAME", "picker-0")
    s = parse([])
    d = SharingSettings()
    # the host name plus a random suffix: two pickers on one host never share a name (issue #19)
    host, _, suffix = s.replica.rpartition("-")
    assert host == "picker-0" and len(suffix) == 6
    assert parse([]).replica != s.replica
    assert (s.flush_interval_s, s.max_batch, s.buffer_events) == (
        d.flush_interval_s,
        d.max_batch,
        d.buffer_events,
    )
    assert (s.peer_timeout_s, s.replay_window_s, s.enabled) == (d.peer_timeout_s, d.replay_window_s, True)


def test_flags_and_environment(monkeypatch):
    monkeypatch.setenv("INFERGATE_SHARE_MAX_BATCH", "1")
    monkeypatch.setenv("INFERGATE_SHARE_PEERS", "false")
    s = parse(["--replica-name", "a", "--share-flush-ms", "2", "--share-peer-timeout-s", "0"])
    assert (s.replica, s.flush_interval_s, s.max_batch, s.peer_timeout_s, s.enabled) == (
        "a",
        0.002,
        1,
        0.0,
        False,
    )
