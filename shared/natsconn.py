"""Connecting to NATS the way operators expect, and the JetStream streams InferGate uses.

:func:`connect` keeps trying until the first connection succeeds (nats-py gives up on a
failed first connect) and then lets nats-py reconnect forever. Options mirror the
``nats`` CLI: server URL list, user/password, token, a creds file, an nkey seed file,
TLS CA/cert/key, plus the inbox prefix (so a locked-down server can give each service its
own reply subjects) and the streams' replica count (3 on a clustered NATS). Each is a flag
with an ``INFERGATE_NATS_*`` environment fallback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.subjects import Subjects

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class NatsOptions:
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "infergate"
    subject_prefix: str = "infergate"
    # Replies (JetStream API answers, consumer deliveries) arrive under this prefix; a
    # per-service prefix lets the server's permissions keep services out of each other's.
    inbox_prefix: str = "_INBOX"
    stream_replicas: int = 1  # JetStream replicas of the streams this service creates
    connect_timeout: float = 2.0
    reconnect_wait: float = 0.5

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx


def add_nats_flags(parser: Any) -> None:
    """Register the NATS flags on an :class:`shared.config.EnvArgumentParser`."""
    parser_add = parser.add_argument_group("NATS").add_argument
    parser_add("--nats-url", default="nats://127.0.0.1:4222", help="comma-separated NATS server URLs")
    parser_add("--nats-user", default=None, help="NATS user name")
    parser_add("--nats-password", default=None, help="NATS password")
    parser_add("--nats-token", default=None, help="NATS authentication token")
    parser_add("--nats-creds", default=None, help="path to a NATS .creds file (JWT + nkey)")
    parser_add("--nats-nkey", default=None, help="path to an nkey seed file")
    parser_add("--nats-tls-ca", default=None, help="CA bundle to verify the NATS server")
    parser_add("--nats-tls-cert", default=None, help="client certificate for NATS mutual TLS")
    parser_add("--nats-tls-key", default=None, help="client key for NATS mutual TLS")
    parser_add("--subject-prefix", default="infergate", help="prefix of every InferGate NATS subject")
    parser_add(
        "--nats-inbox-prefix",
        default="_INBOX",
        help="subject prefix of this client's reply inboxes (one per service on a locked-down NATS)",
    )
    parser_add(
        "--nats-stream-replicas",
        type=int,
        default=1,
        choices=range(1, 6),
        metavar="{1..5}",
        help="JetStream replicas of InferGate's streams (3 on a 3-node cluster; same on every service)",
    )


def options_from_args(args: Any, name: str) -> NatsOptions:
    return NatsOptions(
        servers=[u.strip() for u in args.nats_url.split(",") if u.strip()],
        user=args.nats_user,
        password=args.nats_password,
        token=args.nats_token,
        creds_file=args.nats_creds,
        nkey_seed_file=args.nats_nkey,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
        name=name,
        subject_prefix=args.subject_prefix,
        inbox_prefix=args.nats_inbox_prefix,
        stream_replicas=args.nats_stream_replicas,
    )


async def connect(
    opts: NatsOptions,
    *,
    on_disconnected: Callback | None = None,
    on_reconnected: Callback | None = None,
    stop: asyncio.Event | None = None,
    max_backoff: float = 5.0,
) -> NATS:
    """Connect, retrying the first connection with backoff until it succeeds or ``stop`` is set.

    After that nats-py reconnects forever (``max_reconnect_attempts=-1``). The callbacks
    let a service republish its state after an outage.
    """

    async def _error_cb(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def _disconnected_cb() -> None:
        log.warning("nats disconnected")
        if on_disconnected is not None:
            await on_disconnected()

    async def _reconnected_cb() -> None:
        log.info("nats reconnected")
        if on_reconnected is not None:
            await on_reconnected()

    kwargs: dict[str, Any] = dict(
        servers=opts.servers,
        name=opts.name,
        connect_timeout=opts.connect_timeout,
        reconnect_time_wait=opts.reconnect_wait,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=_error_cb,
        disconnected_cb=_disconnected_cb,
        reconnected_cb=_reconnected_cb,
        ping_interval=5,
        max_outstanding_pings=2,
        inbox_prefix=opts.inbox_prefix,
    )
    if opts.user:
        kwargs.update(user=opts.user, password=opts.password)
    if opts.token:
        kwargs["token"] = opts.token
    if opts.creds_file:
        kwargs["user_credentials"] = opts.creds_file
    if opts.nkey_seed_file:
        kwargs["nkeys_seed"] = opts.nkey_seed_file
    tls = opts.tls_context()
    if tls is not None:
        kwargs["tls"] = tls

    backoff = 0.1
    while True:
        # With max_reconnect_attempts=-1 nats-py also retries a failed first connect by
        # itself, so the stop event has to race the connect call rather than follow it.
        attempt = asyncio.ensure_future(nats.connect(**kwargs))
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            await asyncio.wait(
                [attempt, *([stopped] if stopped else [])], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if stopped is not None:
                stopped.cancel()
        if not attempt.done():
            attempt.cancel()
            raise ConnectionError("stopped before NATS connected")
        try:
            nc = attempt.result()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            log.warning("nats connect failed; retrying", extra={"error": repr(exc), "backoff_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(max_backoff, backoff * 2)
            continue
        log.info("nats connected", extra={"server": str(nc.connected_url.netloc if nc.connected_url else "")})
        return nc


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """JetStream settings, documented in the README: memory storage, bounded in age and size."""

    endpoint_max_age_s: float = 60.0  # a dead collector's last snapshots vanish after this
    event_max_age_s: float = 30.0  # how far back a restarted picker replays peers' events
    event_max_bytes: int = 64 * 1024 * 1024
    # 1 keeps each stream on one server (its data is rebuilt within seconds anyway); 3 on a
    # 3-node cluster keeps the last values and recent events through the loss of a node.
    replicas: int = 1


def with_replicas(settings: StreamSettings | None, opts: NatsOptions) -> StreamSettings:
    """``settings`` (or the defaults) with the replica count of ``opts`` (``--nats-stream-replicas``),
    unless ``settings`` already asks for more than one replica itself."""
    s = settings or StreamSettings()
    return s if s.replicas != 1 else dataclasses.replace(s, replicas=opts.stream_replicas)


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, settings: StreamSettings | None = None
) -> None:
    """Create or update InferGate's two streams; safe to call from every replica at once."""
    s = settings or StreamSettings()
    wanted = [
        StreamConfig(
            name=subjects.endpoint_stream,
            subjects=[subjects.all_endpoints()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.MEMORY,
            max_msgs_per_subject=1,
            max_age=s.endpoint_max_age_s,
            discard=DiscardPolicy.OLD,
            num_replicas=s.replicas,
        ),
        StreamConfig(
            name=subjects.event_stream,
            subjects=[subjects.all_events()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.MEMORY,
            max_age=s.event_max_age_s,
            max_bytes=s.event_max_bytes,
            discard=DiscardPolicy.OLD,
            num_replicas=s.replicas,
        ),
    ]
    for cfg in wanted:
        try:
            await js.stream_info(cfg.name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                log.info("created jetstream stream", extra={"stream": cfg.name})
                continue
            except nats.js.errors.BadRequestError:
                pass  # another replica created it first: fall through to update
        await js.update_stream(cfg)
