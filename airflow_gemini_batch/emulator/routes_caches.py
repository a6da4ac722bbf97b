"""cachedContents API handlers: create, get, list, patch (TTL / expire time), delete.

Invariants (the records' rules are :mod:`airflow_gemini_batch.emulator.caches`'):

* Every reply is a CachedContent (``{}`` for delete) with HTTP 200; a missing, expired or deleted cache is
  403 "CachedContent not found (or permission denied)", the real service's answer.
* Creation is not idempotent: every accepted POST makes a new cache (a faulted POST makes none).
* Lists are newest first and never return an empty page with a ``nextPageToken``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.emulator.common import json_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_gemini_batch.emulator.faults import Fault
    from airflow_gemini_batch.emulator.state import Emulator


async def create(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    return json_response(emu.caches.create(params["json"] or {}, time.time()).resource())


async def get(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    return json_response(emu.caches.get(str(params["id"]), time.time()).resource())


async def list_caches(
    emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None
) -> Response:
    page, token = emu.caches.list(
        emu.page_size(request, default=10), request.query_params.get("pageToken"), time.time()
    )
    body: dict[str, Any] = {"cachedContents": [c.resource() for c in page]} if page else {}
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def update(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    cache = emu.caches.update(str(params["id"]), params["json"] or {}, time.time())
    return json_response(cache.resource())


async def delete(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    emu.caches.delete(str(params["id"]), time.time())
    return json_response({})
