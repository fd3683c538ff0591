"""OpenAI-style error bodies, shared by the simulator and the picker.

Clients of an OpenAI-compatible server parse ``{"error": {"message", "type", "param",
"code"}}``; vLLM answers the same shape, so every error InferGate originates does too.
"""

from __future__ import annotations

import json

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def error_dict(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code or status}}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI-style error."""
    return json.dumps(error_dict(status, message, param=param, code=code)).encode()
