"""Classify what went wrong with one call to the API: transient or permanent, sent or certainly not sent.

Why a module of its own: the SDK raises its own ``APIError`` for HTTP errors but lets transport exceptions
(httpx on google-genai 2.x, httpx2 on 3.x, aiohttp for async) through unwrapped, so every caller that decides
"retry, look up, or give up" needs the same reading of an exception. Descriptions are built from codes,
statuses and the API's own message only: never a header, a URL with a key, or the key itself.
"""

from __future__ import annotations

import asyncio

from google.genai import errors as genai_errors

TRANSIENT_HTTP_CODES = (408, 429, 500, 502, 503, 504)

#: HTTP codes that end a wait at once: the request is wrong (bad name, bad key, no access, no such job).
PERMANENT_HTTP_CODES = frozenset({400, 401, 403, 404})


def describe_error(error: BaseException) -> str:
    """A one-line, secret-free description of an SDK or transport error (code, status, the API's message)."""
    code = getattr(error, "code", None)
    if code is not None:
        status = getattr(error, "status", None) or ""
        message = getattr(error, "message", None) or ""
        return f"HTTP {code} {status}: {message}".strip()
    return f"{type(error).__name__}: {error}"


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: 408/429/5xx from the API, and connection-level failures of any transport.

    The SDK raises its own ``APIError`` for HTTP errors, but lets transport exceptions (httpx, httpx2 on
    google-genai 3, aiohttp for async) through unwrapped: see :func:`is_transport_error`.
    """
    code = getattr(error, "code", None)
    if isinstance(error, genai_errors.APIError):
        return isinstance(code, int) and (code in (408, 429) or code >= 500)
    return is_transport_error(error)


# The transports google-genai may use (2.x: httpx, aiohttp when installed; 3.x: httpx2, aiohttp), and the base
# classes of their connection-level failures. Matched by name along the class's MRO, so no transport needs
# importing here and a programming error of theirs (InvalidURL, a decoding error) is not taken for one.
_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"})
_TRANSPORT_FAILURES = frozenset(
    {"TransportError", "NetworkError", "TimeoutException", "ClientConnectionError", "ClientPayloadError"}
)
# Failures before any byte of a request left: the request certainly did not reach the service.
_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "ClientConnectorError"})


def _transport_classes(error: BaseException) -> list[str]:
    return [c.__name__ for c in type(error).__mro__ if c.__module__.split(".")[0] in _TRANSPORT_MODULES]


def is_transport_error(error: BaseException) -> bool:
    """True for a connection-level failure (refused, reset, cut, timed out) of any transport the SDK may use;
    the SDK wraps none of them into ``APIError``."""
    if isinstance(error, genai_errors.APIError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    return not _TRANSPORT_FAILURES.isdisjoint(_transport_classes(error))


def request_not_sent(error: BaseException) -> bool:
    """True when the request certainly never reached the service (the connection was never made)."""
    return isinstance(error, ConnectionRefusedError) or not _NOT_SENT.isdisjoint(_transport_classes(error))


def http_code(error: BaseException) -> int | None:
    """The HTTP code of an SDK ``APIError``, else None."""
    code = getattr(error, "code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None
