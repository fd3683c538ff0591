"""A minimal Endpoint Picker for testing the Envoy bootstrap, not the real picker.

It speaks just enough ext_proc to prove the routing: it names the destination list it
is told to (``stub.destination``) as the protocol says, the choice alone in the
``x-gateway-destination-endpoint`` header and the whole list in the ``envoy.lb``
metadata (``header_list=True``: the list in the header and no metadata), answering the
request headers after the body in FULL_DUPLEX_STREAMED mode (as the protocol says) or
on the buffered body in BUFFERED mode, and passes response bodies through.
grpc.health.v1 is served on its own port so Envoy's health check of the picker cluster
can be exercised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from picker.protocol import DESTINATION, LB_NAMESPACE


def _headers_mutation(destination: str, content_length: int | None) -> pb.HeaderMutation:
    headers = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=DESTINATION, raw_value=destination.encode())
        )
    ]
    if content_length is not None:
        headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="content-length", raw_value=str(content_length).encode())
            )
        )
    return pb.HeaderMutation(set_headers=headers)


def _metadata(destination: str) -> struct_pb2.Struct:
    md = struct_pb2.Struct()
    md.update({LB_NAMESPACE: {DESTINATION: destination}})
    return md


def _immediate(status: int, body: bytes) -> pb.ImmediateResponse:
    content_type = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")
    )
    return pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=status),
        headers=pb.HeaderMutation(set_headers=[content_type]),
        body=body,
        details="stub_picker_rejected",
    )


class StubPicker(pb_grpc.ExternalProcessorServicer):
    def __init__(
        self,
        destination: str = "",
        *,
        full_duplex: bool = True,
        response_full_duplex: bool = True,
        header_list: bool = False,
    ):
        self.destination = destination
        self.header_list = header_list
        self.full_duplex = full_duplex
        self.response_full_duplex = response_full_duplex
        # When set, every request is refused with this (status, JSON body), as the real
        # picker does for 429 shedding; used to check Envoy keeps the picker's body.
        self.reject: tuple[int, bytes] | None = None
        self.streams = 0
        self.bodies: list[bytes] = []
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.port = 0
        self.health_port = 0

    def _pick(self, body: bytes, content_length: int | None) -> pb.CommonResponse:
        self.bodies.append(body)
        header = self.destination if self.header_list else self.destination.split(",", 1)[0].strip()
        return pb.CommonResponse(
            header_mutation=_headers_mutation(header, content_length), clear_route_cache=True
        )

    def _md(self) -> struct_pb2.Struct | None:
        return None if self.header_list else _metadata(self.destination)

    async def Process(  # the gRPC method's name
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        self.streams += 1
        body = b""
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                if self.reject is not None:
                    status, reject_body = self.reject
                    yield pb.ProcessingResponse(immediate_response=_immediate(status, reject_body))
                    return
                if req.request_headers.end_of_stream:
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(response=self._pick(b"", None)),
                        dynamic_metadata=self._md(),
                    )
                elif not self.full_duplex:
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                body += req.request_body.body
                if not req.request_body.end_of_stream:
                    continue
                if self.full_duplex:
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(response=self._pick(body, len(body))),
                        dynamic_metadata=self._md(),
                    )
                    yield pb.ProcessingResponse(
                        request_body=pb.BodyResponse(
                            response=pb.CommonResponse(
                                body_mutation=pb.BodyMutation(
                                    streamed_response=pb.StreamedBodyResponse(body=body, end_of_stream=True)
                                )
                            )
                        )
                    )
                else:
                    yield pb.ProcessingResponse(
                        request_body=pb.BodyResponse(response=self._pick(body, None)),
                        dynamic_metadata=self._md(),
                    )
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                chunk = req.response_body
                if self.response_full_duplex:
                    streamed = pb.StreamedBodyResponse(body=chunk.body, end_of_stream=chunk.end_of_stream)
                    common = pb.CommonResponse(body_mutation=pb.BodyMutation(streamed_response=streamed))
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))
                else:
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

    async def start(self, host: str = "127.0.0.1") -> StubPicker:
        self.server = grpc.aio.server()
        pb_grpc.add_ExternalProcessorServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.health_server = grpc.aio.server()
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, self.health_server)
        self.health_port = self.health_server.add_insecure_port(f"{host}:0")
        await self.server.start()
        await self.health_server.start()
        return self

    async def stop(self) -> None:
        for server in (self.server, self.health_server):
            if server is not None:
                await server.stop(grace=None)
