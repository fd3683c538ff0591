"""The knobs of a generated Envoy bootstrap, as one frozen dataclass.

Every option has a default that works for a typical single-pool gateway, so the CLI,
the tests and the demo only name what differs. Addresses are plain ``host:port``
strings because that is how operators and the picker's own header spell them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from picker.protocol import ATTEMPT_HEADER_PREFIX, INFERENCE_PATHS, LB_NAMESPACE
from picker.protocol import DESTINATION as DESTINATION_HEADER
from picker.protocol import DESTINATION_SERVED as SERVED_HEADER

__all__ = [
    "ATTEMPT_HEADER_PREFIX",
    "DESTINATION_HEADER",
    "INFERENCE_PATHS",
    "LB_NAMESPACE",
    "SERVED_HEADER",
    "BootstrapOptions",
    "FailureMode",
    "HostPort",
    "Mode",
    "RequestBodyMode",
    "ResponseBodyMode",
]


class Mode(enum.StrEnum):
    """``picker``: Envoy asks the Endpoint Picker over ext_proc; ``round-robin``: plain Envoy."""

    PICKER = "picker"
    ROUND_ROBIN = "round-robin"


class FailureMode(enum.StrEnum):
    """As upstream's ``endpointPickerRef.failureMode``."""

    FAIL_CLOSE = "FailClose"
    FAIL_OPEN = "FailOpen"


class RequestBodyMode(enum.StrEnum):
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"
    BUFFERED = "BUFFERED"


class ResponseBodyMode(enum.StrEnum):
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"
    STREAMED = "STREAMED"
    NONE = "NONE"


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """``10.0.0.5:8000``, ``picker.ns.svc:9002`` or ``[::1]:9002``."""
        raw = text.strip()
        host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {text!r}")
        return cls(host.strip("[]"), int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _hostports(items: tuple[str | HostPort, ...] | list[str | HostPort]) -> tuple[HostPort, ...]:
    return tuple(x if isinstance(x, HostPort) else HostPort.parse(x) for x in items)


@dataclass(frozen=True)
class BootstrapOptions:
    """Everything the generator needs; see picker/envoy/README.md for the meaning of each."""

    mode: Mode = Mode.PICKER
    listen_address: str = "0.0.0.0"
    listen_port: int = 8081
    admin_address: str = "127.0.0.1"
    admin_port: int = 19000
    # Endpoint Picker replicas (gRPC ext_proc) and the port their grpc.health.v1 answers on;
    # 0 means "the ext_proc port itself".
    pickers: tuple[HostPort, ...] = field(default_factory=lambda: (HostPort("127.0.0.1", 9002),))
    picker_health_port: int = 9003
    # One health port per picker, in the order of ``pickers``, when replicas share a host
    # (local runs); empty means ``picker_health_port`` everywhere.
    picker_health_ports: tuple[int, ...] = ()
    # TLS to the pickers (they run --secure-serving): off by default. ``picker_ca_file`` verifies
    # their certificate (empty: not verified, as upstream's self-signed default); a client
    # certificate and key make it mutual TLS (the pickers' --client-ca-file). With TLS the
    # health check goes to the ext_proc port over the same TLS (the health port is plaintext).
    picker_tls: bool = False
    picker_ca_file: str = ""
    picker_client_cert_file: str = ""
    picker_client_key_file: str = ""
    picker_sni: str = ""
    # The pool's model servers, for FailOpen and round-robin (static: ip:port or dns:port).
    pool_endpoints: tuple[HostPort, ...] = ()
    failure_mode: FailureMode = FailureMode.FAIL_CLOSE
    # None: FULL_DUPLEX_STREAMED for FailClose, BUFFERED for FailOpen (see validate()).
    request_body_mode: RequestBodyMode | None = None
    response_body_mode: ResponseBodyMode = ResponseBodyMode.FULL_DUPLEX_STREAMED
    # How many endpoints of the picker's list Envoy tries (the choice + fallbacks).
    max_endpoint_attempts: int = 3
    message_timeout_s: float = 30.0
    picker_connect_timeout_s: float = 1.0
    upstream_connect_timeout_s: float = 2.0
    # 0 disables the route timeout: an LLM stream may legitimately run for many minutes.
    route_timeout_s: float = 0.0
    # Inactivity limits: no byte in either direction for this long ends the stream.
    stream_idle_timeout_s: float = 300.0
    connection_idle_timeout_s: float = 3600.0
    max_request_bytes: int = 16 * 1024 * 1024
    health_check_interval_s: float = 2.0
    # Report the serving ip:port to clients (tests, demo, conformance); it reveals pod IPs.
    served_header: bool = True
    # One JSON line per request on Envoy's stdout (upstream host, flags, timings).
    access_log: bool = False
    # The only paths served (exact, query string aside); everything else is a 404 from
    # Envoy, so no client reaches a model server's admin API (/v1/load_lora_adapter, /metrics).
    inference_paths: tuple[str, ...] = INFERENCE_PATHS

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "failure_mode", FailureMode(self.failure_mode))
        if self.request_body_mode is None:
            auto = (
                RequestBodyMode.BUFFERED
                if self.failure_mode == "FailOpen"
                else RequestBodyMode.FULL_DUPLEX_STREAMED
            )
            object.__setattr__(self, "request_body_mode", auto)
        object.__setattr__(self, "request_body_mode", RequestBodyMode(self.request_body_mode))
        object.__setattr__(self, "response_body_mode", ResponseBodyMode(self.response_body_mode))
        object.__setattr__(self, "pickers", _hostports(self.pickers))
        object.__setattr__(self, "pool_endpoints", _hostports(self.pool_endpoints))
        object.__setattr__(self, "inference_paths", tuple(self.inference_paths))
        self.validate()

    def validate(self) -> None:
        """Reject combinations Envoy would accept but that cannot work."""
        if self.mode is Mode.ROUND_ROBIN and not self.pool_endpoints:
            raise ValueError("round-robin mode needs pool endpoints")
        if self.mode is Mode.PICKER:
            if not self.pickers:
                raise ValueError("picker mode needs at least one picker address")
            if self.picker_health_ports and len(self.picker_health_ports) != len(self.pickers):
                raise ValueError("picker_health_ports needs one port per picker address")
            if self.failure_mode is FailureMode.FAIL_OPEN and not self.pool_endpoints:
                raise ValueError("FailOpen needs pool endpoints to fall back to")
            if (
                self.failure_mode is FailureMode.FAIL_OPEN
                and self.request_body_mode is RequestBodyMode.FULL_DUPLEX_STREAMED
            ):
                # Envoy fails open in FULL_DUPLEX_STREAMED only until the first body chunk has
                # been handed to the picker; an unreachable picker is noticed after that, so
                # a POST would fail closed anyway (measured with Envoy 1.40: 503).
                raise ValueError(
                    "FailOpen needs request body mode BUFFERED: Envoy cannot fail open once it has "
                    "streamed body chunks to the picker (FULL_DUPLEX_STREAMED)"
                )
        if bool(self.picker_client_cert_file) != bool(self.picker_client_key_file):
            raise ValueError("a picker client certificate needs both the certificate and the key file")
        if (self.picker_client_cert_file or self.picker_ca_file or self.picker_sni) and not self.picker_tls:
            raise ValueError("picker CA, client certificate and SNI options need picker_tls")
        if self.max_endpoint_attempts < 1:
            raise ValueError("max_endpoint_attempts must be at least 1")
        if self.max_request_bytes < 0:
            raise ValueError("max_request_bytes must be >= 0 (0 = unlimited)")
        if not self.inference_paths or not all(p.startswith("/") for p in self.inference_paths):
            raise ValueError("inference_paths must be absolute paths, at least one")

    @property
    def uses_pool_cluster(self) -> bool:
        return self.mode is Mode.ROUND_ROBIN or self.failure_mode is FailureMode.FAIL_OPEN
