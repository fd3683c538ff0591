"""The NATS options added for a locked-down, clustered NATS: inbox prefix and stream replicas."""

from __future__ import annotations

import pytest

from shared.config import EnvArgumentParser
from shared.natsconn import NatsOptions, StreamSettings, add_nats_flags, options_from_args, with_replicas


def parse(argv: list[str]) -> NatsOptions:
    parser = EnvArgumentParser()
    add_nats_flags(parser)
    return options_from_args(parser.parse_args(argv), "test")


def test_defaults_keep_one_replica_and_the_standard_inbox():
    opts = parse([])
    assert (opts.stream_replicas, opts.inbox_prefix) == (1, "_INBOX")
    assert with_replicas(None, opts).replicas == 1


def test_flags_and_environment_set_replicas_and_inbox(monkeypatch):
    opts = parse(["--nats-stream-replicas", "3", "--nats-inbox-prefix", "_INBOX_picker"])
    assert (opts.stream_replicas, opts.inbox_prefix) == (3, "_INBOX_picker")
    monkeypatch.setenv("INFERGATE_NATS_STREAM_REPLICAS", "3")
    assert parse([]).stream_replicas == 3
    settings = with_replicas(StreamSettings(event_max_age_s=5.0), opts)
    assert (settings.replicas, settings.event_max_age_s) == (3, 5.0)


def test_replicas_beyond_what_nats_allows_are_refused():
    with pytest.raises(SystemExit):
        parse(["--nats-stream-replicas", "7"])
