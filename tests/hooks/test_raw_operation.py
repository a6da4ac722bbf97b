"""The one use of google-genai's private transport, checked on the installed SDK (2.x in .venv, 3.x in
.venv-genai3): if a release renames or reshapes it, these tests fail naming the installed version."""

from __future__ import annotations

import inspect
import types as pytypes

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchSdkChangedError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.raw_operation import (
    EXPECTED_PARAMETERS,
    PRIVATE_CLIENT_ATTRIBUTE,
    PRIVATE_METHODS,
    get_operation,
    private_api_problem,
    sdk_version,
)
from airflow_gemini_batch.hooks.transport_errors import describe_error

VERSION = f"google-genai {sdk_version()}"


def test_the_private_transport_is_what_we_call(gemini_conn: str) -> None:
    client = GeminiBatchHook(gemini_conn).get_conn()
    for each in (client, client.aio):
        problem = private_api_problem(each)
        assert problem is None, f"{VERSION} changed its private API: {problem}"
    api = getattr(client, PRIVATE_CLIENT_ATTRIBUTE)
    for name in PRIVATE_METHODS:
        parameters = tuple(inspect.signature(getattr(api, name)).parameters)
        assert parameters[: len(EXPECTED_PARAMETERS)] == EXPECTED_PARAMETERS, f"{VERSION}: {name}{parameters}"
    assert inspect.iscoroutinefunction(api.async_request), f"{VERSION}: async_request is not async"


def _job(gemini_conn: str, emulator: object) -> str:
    emulator.control.set_job_behaviour(stay_pending=True)  # type: ignore[attr-defined]
    inline = [{"contents": [{"parts": [{"text": t}]}], "metadata": {"key": t}} for t in ("a", "b", "c")]
    hook = GeminiBatchHook(gemini_conn)
    return hook.create_job(model="gemini-2.5-flash", display_name="raw-op", inline_requests=inline).name


def _assert_operation(op: dict, name: str) -> None:
    assert op.get("name") == name, f"{VERSION}: not the Operation JSON: {op!r}"
    stats = (op.get("metadata") or {}).get("batchStats") or {}
    counts = (int(stats.get("requestCount", 0)), int(stats.get("pendingRequestCount", 0)))
    assert counts == (3, 3), f"{VERSION}: batchStats missing from the raw read: {op!r}"


def test_a_sync_read_returns_the_operation_with_batch_stats(gemini_conn: str, emulator: object) -> None:
    name = _job(gemini_conn, emulator)
    hook = GeminiBatchHook(gemini_conn)
    _assert_operation(get_operation(hook.get_conn(), name), name)
    assert hook.get_job(name).request_count == 3  # get_job reads through the same function


async def test_an_async_read_returns_the_operation_with_batch_stats(
    gemini_conn: str, emulator: object
) -> None:
    name = _job(gemini_conn, emulator)
    client = await GeminiBatchHook(gemini_conn).aget_client()
    try:
        _assert_operation(await get_operation(client, name), name)
        assert (await GeminiBatchHook.aget_job(client, name)).pending_count == 3
    finally:
        await client.aclose()


def test_a_client_without_the_private_transport_fails_loudly_naming_the_version() -> None:
    changed = pytypes.SimpleNamespace()  # what a client looks like to us if the SDK drops ``_api_client``
    assert private_api_problem(changed) == f"the client has no {PRIVATE_CLIENT_ATTRIBUTE!r} attribute"  # type: ignore[arg-type]
    with pytest.raises(GeminiBatchSdkChangedError) as info:
        get_operation(changed, "batches/x")  # type: ignore[call-overload]
    assert VERSION in str(info.value) and "_api_client" in str(info.value)
    assert VERSION in describe_error(info.value)


def test_a_missing_or_reshaped_method_is_named() -> None:
    def request(http_method: str, path: str, request_dict: dict) -> None: ...

    def reshaped(method: str, path: str, request_dict: dict) -> None: ...

    missing = pytypes.SimpleNamespace(_api_client=pytypes.SimpleNamespace(request=request))
    assert private_api_problem(missing) == "SimpleNamespace has no method 'async_request'"  # type: ignore[arg-type]
    renamed = pytypes.SimpleNamespace(_api_client=pytypes.SimpleNamespace(request=reshaped))
    assert "request takes ('method', 'path', 'request_dict')" in (private_api_problem(renamed) or "")  # type: ignore[arg-type]
