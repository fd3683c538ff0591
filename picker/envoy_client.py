"""A client that speaks to the picker the way Envoy does (the benchmark, demos and tests).

:class:`EnvoyStream` plays Envoy's side of one ``Process`` stream over a real gRPC
channel: send request headers, body chunks (each body mode), response headers and
body, and read the picker's answers; :func:`headers_of` reads a header mutation back.
It drives a running picker without an Envoy binary, for load tests and debugging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from .protocol import DESTINATION_SERVED, DESTINATION_SUBSET, LB_NAMESPACE, SUBSET_NAMESPACE

__all__ = ["MODES", "EnvoyStream", "headers_of"]

Mode = processing_mode_pb2.ProcessingMode
MODES = {
    "FULL_DUPLEX_STREAMED": Mode.FULL_DUPLEX_STREAMED,
    "STREAMED": Mode.STREAMED,
    "BUFFERED": Mode.BUFFERED,
    "NONE": Mode.NONE,
}


def _headers(items: Iterable[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in items])


def headers_of(mutation: ep.HeaderMutation) -> dict[str, str]:
    return {h.header.key: (h.header.raw_value.decode() or h.header.value) for h in mutation.set_headers}


class EnvoyStream:
    """One ext_proc stream. ``await s.open()``, ``s.send(...)``, ``await s.recv()``, ``await s.close()``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        request_mode: str = "FULL_DUPLEX_STREAMED",
        response_mode: str | None = None,
        send_protocol_config: bool = True,
        without_waiting: bool = False,
    ) -> None:
        self.stub = ep_grpc.ExternalProcessorStub(channel)
        self.request_mode = request_mode
        self.response_mode = response_mode or request_mode
        self.send_protocol_config = send_protocol_config
        self.without_waiting = without_waiting
        self.queue: asyncio.Queue[ep.ProcessingRequest | None] = asyncio.Queue()
        self.call: Any = None
        self._first = True

    async def _requests(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def open(self) -> EnvoyStream:
        self.call = self.stub.Process(self._requests())
        return self

    def _send(self, req: ep.ProcessingRequest) -> None:
        if self._first and self.send_protocol_config:
            req.protocol_config.request_body_mode = MODES[self.request_mode]
            req.protocol_config.response_body_mode = MODES[self.response_mode]
            req.protocol_config.send_body_without_waiting_for_header_response = self.without_waiting
        self._first = False
        self.queue.put_nowait(req)

    def request_headers(
        self,
        path: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
        end_of_stream: bool = False,
        subset: list[str] | None = None,
        method: str = "POST",
    ) -> None:
        items = [
            (":method", method),
            (":path", path),
            (":authority", "gw"),
            ("content-type", "application/json"),
        ]
        items += list((headers or {}).items())
        req = ep.ProcessingRequest(
            request_headers=ep.HttpHeaders(headers=_headers(items), end_of_stream=end_of_stream)
        )
        if subset is not None:
            st = req.metadata_context.filter_metadata[SUBSET_NAMESPACE]
            lv = st.fields[DESTINATION_SUBSET].list_value
            for a in subset:
                lv.values.add().string_value = a
        self._send(req)

    def request_body(self, chunk: bytes, end_of_stream: bool) -> None:
        self._send(ep.ProcessingRequest(request_body=ep.HttpBody(body=chunk, end_of_stream=end_of_stream)))

    def response_headers(
        self,
        status: int = 200,
        content_type: str = "application/json",
        end_of_stream: bool = False,
        extra: dict[str, str] | None = None,
        served: str | None = None,
    ) -> None:
        """``served``: the gateway's ``envoy.lb`` / ``x-gateway-destination-endpoint-served`` metadata."""
        items = [(":status", str(status)), ("content-type", content_type), *(extra or {}).items()]
        req = ep.ProcessingRequest(
            response_headers=ep.HttpHeaders(headers=_headers(items), end_of_stream=end_of_stream)
        )
        if served is not None:
            lb = req.metadata_context.filter_metadata[LB_NAMESPACE]
            lb.fields[DESTINATION_SERVED].string_value = served
        self._send(req)

    def response_body(self, chunk: bytes, end_of_stream: bool) -> None:
        self._send(ep.ProcessingRequest(response_body=ep.HttpBody(body=chunk, end_of_stream=end_of_stream)))

    async def recv(self, timeout: float = 5.0) -> ep.ProcessingResponse:
        msg = await asyncio.wait_for(self.call.read(), timeout)
        if msg is grpc.aio.EOF:
            raise EOFError("stream closed")
        return msg

    async def recv_n(self, n: int, timeout: float = 5.0) -> list[ep.ProcessingResponse]:
        return [await self.recv(timeout) for _ in range(n)]

    async def close(self) -> None:
        self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(self.call.read(), 5.0)
        except Exception:
            pass

    def cancel(self) -> None:
        self.call.cancel()
