"""Small shared helpers for the emulator: Google-style JSON errors, timestamps, ids, JSON responses.

Invariants (each one is something the real google-genai SDK depends on, see the wire-protocol reference §0):

* every response is ``application/json`` (except file downloads) and carries ``Content-Length``;
* every error body is ``{"error": {"code": <http status>, "message": str, "status": <CANONICAL_CODE>}}``;
* every success is HTTP 200, never 201/204;
* timestamps are RFC 3339 in UTC with a ``Z`` suffix.
"""

from __future__ import annotations

import datetime as dt
import secrets
import string
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

if TYPE_CHECKING:
    from collections.abc import Mapping

CANONICAL_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

API_HOST = "https://generativelanguage.googleapis.com"
_ID_ALPHABET = string.ascii_lowercase + string.digits


class ApiError(Exception):
    """Raised by handlers; turned into a Google JSON error response by the dispatcher."""

    def __init__(self, code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Serialise with orjson; Starlette adds Content-Length for us."""
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def error_response(code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    status = CANONICAL_STATUS.get(code, "UNKNOWN")
    return json_response({"error": {"code": code, "message": message, "status": status}}, code, headers)


def new_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def rfc3339(ts: float) -> str:
    """Epoch seconds → ``2025-12-10T18:27:01.407650Z``."""
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pick(body: Mapping[str, Any] | None, *names: str) -> Any:
    """First present key among ``names`` (camelCase and snake_case spellings of one field)."""
    if not body:
        return None
    for name in names:
        if name in body and body[name] is not None:
            return body[name]
    return None


def int64(n: int) -> str:
    """int64 proto fields travel as JSON strings."""
    return str(int(n))
