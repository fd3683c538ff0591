"""The FULL_DUPLEX_STREAMED body answers the picker builds on the per-chunk hot path."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from picker.extproc import _streamed


def _reference(chunk: bytes, end: bool, response: bool) -> ep.ProcessingResponse:
    body = ep.BodyResponse(
        response=ep.CommonResponse(
            body_mutation=ep.BodyMutation(
                streamed_response=ep.StreamedBodyResponse(body=chunk, end_of_stream=end)
            )
        )
    )
    return ep.ProcessingResponse(**{"response_body" if response else "request_body": body})


@pytest.mark.parametrize("response", [True, False])
@pytest.mark.parametrize(
    "chunk,end", [(b"", False), (b"", True), (b"data: {}\n\n", False), (b"x" * 70_000, True)]
)
def test_streamed_answer_is_the_nested_message(chunk: bytes, end: bool, response: bool) -> None:
    got = _streamed(chunk, end, response=response)
    assert got == _reference(chunk, end, response)
    assert got.WhichOneof("response") == ("response_body" if response else "request_body")
    body = got.response_body if response else got.request_body
    # Envoy needs the streamed_response present even for an empty, non-final chunk.
    assert body.response.body_mutation.WhichOneof("mutation") == "streamed_response"
    assert body.response.body_mutation.streamed_response.body == chunk
    assert body.response.body_mutation.streamed_response.end_of_stream is end
