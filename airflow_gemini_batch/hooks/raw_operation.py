"""The one use of google-genai's private API: reading a batch's raw Operation JSON through the SDK's transport.

Why: the SDK's ``BatchJob`` drops ``metadata.batchStats`` (the request counts behind progress) and the
Operation's ``error``; the raw reply keeps both. The call still goes through the SDK's own HTTP code,
headers, auth and retry options (``BaseApiClient.request`` / ``async_request``), so invariant 1 holds.

Invariant: :func:`get_operation` is the only code that touches ``_api_client``; the sync ``get_job`` and the
async ``aget_job`` both read through it. If an SDK release renames or reshapes that private API,
:func:`private_api_problem` says what changed, naming the installed google-genai version, and reading fails
with :class:`~airflow_gemini_batch.exceptions.GeminiBatchSdkChangedError` instead of an ``AttributeError``
deep in a trigger. ``tests/hooks/test_raw_operation.py`` checks it on every supported SDK.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import TYPE_CHECKING, Any, overload

import orjson
from google.genai.client import AsyncClient

from airflow_gemini_batch.exceptions import GeminiBatchSdkChangedError
from airflow_gemini_batch.hooks.job_status import check_job_name

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from google import genai

#: The private attribute and methods read here, and the leading parameters each method must take.
PRIVATE_CLIENT_ATTRIBUTE = "_api_client"
PRIVATE_METHODS = ("request", "async_request")
EXPECTED_PARAMETERS = ("http_method", "path", "request_dict")


def sdk_version() -> str:
    try:
        return importlib.metadata.version("google-genai")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - the provider depends on it
        return "unknown"


def private_api_problem(client: genai.Client | AsyncClient) -> str | None:
    """What is missing or different in the SDK's private transport, or None when it is as expected."""
    api = getattr(client, PRIVATE_CLIENT_ATTRIBUTE, None)
    if api is None:
        return f"the client has no {PRIVATE_CLIENT_ATTRIBUTE!r} attribute"
    for method_name in PRIVATE_METHODS:
        method = getattr(api, method_name, None)
        if not callable(method):
            return f"{type(api).__name__} has no method {method_name!r}"
        parameters = tuple(inspect.signature(method).parameters)[: len(EXPECTED_PARAMETERS)]
        if parameters != EXPECTED_PARAMETERS:
            return f"{type(api).__name__}.{method_name} takes {parameters}, expected {EXPECTED_PARAMETERS}"
    if not inspect.iscoroutinefunction(api.async_request):
        return f"{type(api).__name__}.async_request is not a coroutine function"
    return None


def _changed(problem: str) -> GeminiBatchSdkChangedError:
    return GeminiBatchSdkChangedError(
        f"google-genai {sdk_version()} changed the private API this provider reads batch jobs through "
        f"({problem}). Install a google-genai version this provider supports, or upgrade the provider."
    )


def _operation_json(body: str | None) -> dict[str, Any]:
    return orjson.loads(body or "{}")


@overload
def get_operation(client: AsyncClient, name: str) -> Awaitable[dict[str, Any]]: ...
@overload
def get_operation(client: genai.Client, name: str) -> dict[str, Any]: ...
def get_operation(
    client: genai.Client | AsyncClient, name: str
) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    """The raw Operation JSON of job ``name``: a dict with a sync client, an awaitable with ``client.aio``.

    :raises GeminiBatchSdkChangedError: the SDK's private transport is not what this module expects.
    """
    check_job_name(name)
    api = getattr(client, PRIVATE_CLIENT_ATTRIBUTE, None)
    method = getattr(api, "async_request" if isinstance(client, AsyncClient) else "request", None)
    if method is None:
        raise _changed(private_api_problem(client) or "the transport method is missing")
    if isinstance(client, AsyncClient):

        async def read() -> dict[str, Any]:
            return _operation_json((await method("get", name, {})).body)

        return read()
    return _operation_json(method("get", name, {}).body)
