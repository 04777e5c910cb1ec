"""JSON errors in the shape each API's clients parse: OpenAI's under /v1/, TEI's elsewhere.

Every error also carries a `code`: for a refused request, the name of the limit it broke
(`max_inputs`, `max_input_chars`, `max_request_bytes`, `max_length`, `max_queue`), so that a
client can tell which one without parsing the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from fastelectra.errors import FastElectraError

OPENAI_PREFIX = "/v1/"

# TEI's `error_type`s, by HTTP status (text-embeddings-inference's router).
TEI_ERROR_TYPES = {
    400: "Empty",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "Validation",
    422: "Validation",
    429: "Overloaded",
    500: "Backend",
    503: "Unhealthy",
}
OPENAI_ERROR_TYPES = {
    401: "authentication_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(FastElectraError):
    """A request answered with `status` and a JSON error; raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def error_body(path: str, status: int, message: str, code: str) -> bytes:
    if path.startswith(OPENAI_PREFIX):
        kind = OPENAI_ERROR_TYPES.get(status, "invalid_request_error")
        body: dict[str, object] = {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }
    else:
        body = {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "Error"), "code": code}
    return json.dumps(body).encode()
