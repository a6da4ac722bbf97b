"""Which exceptions are connection-level failures, and which certainly never reached the service: for every
transport google-genai may use (httpx on 2.x, httpx2 on 3.x, aiohttp for async on both)."""

from __future__ import annotations

import importlib.util

import aiohttp
import httpx
import pytest
from google.genai.errors import APIError

from airflow_gemini_batch.hooks.transport_errors import is_transient, is_transport_error, request_not_sent
from airflow_gemini_batch.submit.submission import _is_ambiguous


def _httpx_family() -> list[object]:
    """httpx, and httpx2 where installed (the google-genai 3 environment)."""
    modules = [httpx]
    if importlib.util.find_spec("httpx2"):
        import httpx2

        modules.append(httpx2)
    return modules


HTTPX = _httpx_family()
CONNECTION_FAILURES = [
    *(m.ConnectError("refused") for m in HTTPX),
    *(m.ConnectTimeout("no answer to the handshake") for m in HTTPX),
    *(m.ReadTimeout("slow") for m in HTTPX),
    *(m.RemoteProtocolError("peer closed the connection") for m in HTTPX),
    aiohttp.ClientConnectorError(None, OSError(111, "refused")),
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("response body cut"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
]
NOT_CONNECTION_FAILURES = [
    *(m.InvalidURL("no scheme") for m in HTTPX),
    *(m.DecodingError("bad gzip") for m in HTTPX),
    aiohttp.InvalidURL("x"),
    APIError(503, {"error": {"code": 503, "message": "unavailable"}}),
    ValueError("a bug"),
]


@pytest.mark.parametrize(
    "error", CONNECTION_FAILURES, ids=lambda e: f"{type(e).__module__}.{type(e).__name__}"
)
def test_connection_failures_of_every_transport(error: BaseException) -> None:
    assert is_transport_error(error) and is_transient(error)


@pytest.mark.parametrize(
    "error", NOT_CONNECTION_FAILURES, ids=lambda e: f"{type(e).__module__}.{type(e).__name__}"
)
def test_other_errors_are_not_connection_failures(error: BaseException) -> None:
    assert not is_transport_error(error)


@pytest.mark.parametrize(
    "error", CONNECTION_FAILURES, ids=lambda e: f"{type(e).__module__}.{type(e).__name__}"
)
def test_only_a_connection_never_made_is_certainly_not_delivered(error: BaseException) -> None:
    """A create that failed to connect certainly made no job (retried without a lookup); one that failed
    after connecting may have (ambiguous: looked up first)."""
    never_made = type(error).__name__ in {"ConnectError", "ConnectTimeout", "ClientConnectorError"}
    assert request_not_sent(error) is never_made
    assert _is_ambiguous(error) is not never_made
