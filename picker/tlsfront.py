"""TLS in front of the ext_proc gRPC server, accepting clients that offer no ALPN.

Why not gRPC's own TLS: grpcio's server refuses a TLS client that does not negotiate
ALPN ("Cannot check peer: missing selected ALPN property"), and Envoy's health checker
offers none unless ``tls_options.alpn_protocols`` (or the cluster's TLS context) says
so. Upstream's test Envoy configuration sets neither, so behind grpcio's TLS the picker
would be marked ``/failed_active_hc``. This front terminates TLS with Python's ``ssl``
(offering ``h2`` to clients that ask, accepting those that do not) and relays the bytes
to the gRPC server on a private Unix socket. Plaintext serving does not use it.

Each accepted connection gets one connection to the backend; bytes are relayed both
ways with flow control (a side stops reading while the other side's write buffer is
full), and closing either side closes the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from collections.abc import Callable

__all__ = ["TlsFront", "server_context"]

log = logging.getLogger(__name__)

_HIGH_WATER = 1 << 20


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_file: str | None = None) -> ssl.SSLContext:
    """A TLS server context from PEM bytes; ``h2`` offered over ALPN, never required.

    With ``client_ca_file`` the handshake requires a client certificate signed by that CA
    (mutual TLS): a client without one, or with one from another CA, is refused before
    a byte reaches the gRPC server.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if client_ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca_file)
    with tempfile.TemporaryDirectory(prefix="infergate-tls-") as d:  # load_cert_chain wants files
        cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    return ctx


class _Relay(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes to ``peer``'s transport."""

    def __init__(self, on_made: Callable[[_Relay], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.pending: list[bytes] = []  # read before the peer was attached
        self.on_made = on_made
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # For the TLS side this runs after the handshake: only then may the backend be
        # dialled, so that both transports exist when the sides are attached.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def attach(self, peer: _Relay) -> None:
        """Relay to ``peer`` (whose transport exists), starting with what was read so far."""
        assert peer.transport is not None
        self.peer = peer
        if self.pending:
            peer.transport.write(b"".join(self.pending))
            self.pending = []

    # The peer reads what we write: stop it while our buffer is full.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost closes the other

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)


class TlsFront:
    """``await TlsFront(ctx, backend_unix_path).start(host, port)``; ``port`` after start."""

    def __init__(self, context: ssl.SSLContext, backend: str) -> None:
        self.context = context
        self.backend = backend  # Unix socket path of the plaintext gRPC server
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> TlsFront:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, host, port, ssl=self.context, ssl_handshake_timeout=10.0, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _accept(self) -> _Relay:
        return _Relay(on_made=self._handshake_done)

    def _handshake_done(self, front: _Relay) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(front))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, front: _Relay) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, back = await loop.create_unix_connection(_Relay, self.backend)
        except OSError as exc:
            log.warning("TLS front cannot reach the gRPC server", extra={"error": str(exc)})
            if front.transport is not None:
                front.transport.close()
            return
        if front.closed.done() or back.closed.done():  # one side left meanwhile
            for side in (front, back):
                if side.transport is not None:
                    side.transport.close()
            return
        back.attach(front)
        front.attach(back)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
