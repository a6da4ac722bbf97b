"""The ASGI app: one catch-all route that dispatches on (method, path regex), plus the control router.

Why a hand-written dispatcher instead of FastAPI path routes: Google paths put verbs after a colon inside a
path segment (``files/abc:download``, ``batches/x:cancel``) under any version prefix (``v1beta``, ``v1``,
``v1alpha``, or none for ``/upload/files``); regexes say that exactly.

Invariants for every API call, in this order:

1. unknown route → 404 NOT_FOUND (the request body is drained first, keeping the connection reusable);
2. missing/empty ``x-goog-api-key`` → 401 UNAUTHENTICATED, except upload chunks (their ``upload_id`` is the
   credential: the SDK sends no key on chunk requests); Vertex routes (``batchPredictionJobs.*``) want an
   ``Authorization: Bearer`` token instead (any non-empty one);
3. ``reply_delay_seconds`` sleep; 4. the call is counted; 5. an injected fault (if any) answers instead;
6. the handler runs; ``ApiError`` becomes a Google JSON error (with its extra headers, e.g. upload status);
7. a reply hold (``reply_holds``) matching the request's method and path keeps whatever reply this made
   (also a 401, 404 or injected fault) until the test releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

import airflow_gemini_batch.emulator.routes_batches as routes_batches
import airflow_gemini_batch.emulator.routes_caches as routes_caches
import airflow_gemini_batch.emulator.routes_files as routes_files
import airflow_gemini_batch.emulator.routes_models as routes_models
import airflow_gemini_batch.emulator.routes_vertex as routes_vertex
from airflow_gemini_batch.emulator.common import ApiError, error_response
from airflow_gemini_batch.emulator.routes_control import control_router
from airflow_gemini_batch.emulator.state import Emulator

if TYPE_CHECKING:
    from airflow_gemini_batch.emulator.faults import Fault

Handler = Callable[["Emulator", Request, dict[str, Any], "Fault | None"], Awaitable[Response]]
_V = r"(?:/(?P<v>v\d+[a-z0-9]*))?"
_ID = r"(?P<id>[^/:]+)"
_MODEL = r"(?P<model>(?:models|tunedModels)/[^/:]+)"
_VERTEX = r"/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)/batchPredictionJobs"

# (method, regex, endpoint name for faults/calls, handler, extra params)
ROUTES: list[tuple[str, re.Pattern[str], str, Handler, dict[str, str]]] = [
    ("POST", re.compile(rf"^/upload{_V}/files$"), "files.upload", routes_files.upload, {}),
    ("GET", re.compile(rf"^{_V}/files$"), "files.list", routes_files.list_files, {}),
    (
        "GET",
        re.compile(rf"^(?:/download)?{_V}/files/{_ID}:download$"),
        "files.download",
        routes_files.download,
        {},
    ),
    ("GET", re.compile(rf"^{_V}/files/{_ID}$"), "files.get", routes_files.get_file, {}),
    ("DELETE", re.compile(rf"^{_V}/files/{_ID}$"), "files.delete", routes_files.delete_file, {}),
    (
        "POST",
        re.compile(rf"^{_V}/{_MODEL}:batchGenerateContent$"),
        "batches.create",
        routes_batches.create,
        {"kind": "generate"},
    ),
    (
        "POST",
        re.compile(rf"^{_V}/{_MODEL}:asyncBatchEmbedContent$"),
        "batches.create",
        routes_batches.create,
        {"kind": "embed"},
    ),
    ("GET", re.compile(rf"^{_V}/batches$"), "batches.list", routes_batches.list_batches, {}),
    ("GET", re.compile(rf"^{_V}/batches/{_ID}$"), "batches.get", routes_batches.get, {}),
    ("POST", re.compile(rf"^{_V}/batches/{_ID}:cancel$"), "batches.cancel", routes_batches.cancel, {}),
    ("DELETE", re.compile(rf"^{_V}/batches/{_ID}$"), "batches.delete", routes_batches.delete, {}),
    ("POST", re.compile(rf"^{_V}/cachedContents$"), "caches.create", routes_caches.create, {}),
    ("GET", re.compile(rf"^{_V}/cachedContents$"), "caches.list", routes_caches.list_caches, {}),
    ("GET", re.compile(rf"^{_V}/cachedContents/{_ID}$"), "caches.get", routes_caches.get, {}),
    ("PATCH", re.compile(rf"^{_V}/cachedContents/{_ID}$"), "caches.update", routes_caches.update, {}),
    ("DELETE", re.compile(rf"^{_V}/cachedContents/{_ID}$"), "caches.delete", routes_caches.delete, {}),
    (
        "POST",
        re.compile(rf"^{_V}/{_MODEL}:countTokens$"),
        "models.countTokens",
        routes_models.count_tokens,
        {},
    ),
    ("POST", re.compile(rf"^{_V}{_VERTEX}$"), "batchPredictionJobs.create", routes_vertex.create, {}),
    ("GET", re.compile(rf"^{_V}{_VERTEX}$"), "batchPredictionJobs.list", routes_vertex.list_jobs, {}),
    ("GET", re.compile(rf"^{_V}{_VERTEX}/{_ID}$"), "batchPredictionJobs.get", routes_vertex.get, {}),
    (
        "POST",
        re.compile(rf"^{_V}{_VERTEX}/{_ID}:cancel$"),
        "batchPredictionJobs.cancel",
        routes_vertex.cancel,
        {},
    ),
    ("DELETE", re.compile(rf"^{_V}{_VERTEX}/{_ID}$"), "batchPredictionJobs.delete", routes_vertex.delete, {}),
]


async def _dispatch(emu: Emulator, request: Request) -> Response:
    path = request.url.path
    for method, pattern, endpoint, handler, extra in ROUTES:
        match = pattern.match(path)
        if match is None or method != request.method:
            continue
        params: dict[str, Any] = {k: v for k, v in match.groupdict().items() if v is not None} | extra
        is_chunk = endpoint == "files.upload" and bool(request.query_params.get("upload_id"))
        if endpoint == "files.upload":
            endpoint = "files.upload_chunk" if is_chunk else "files.upload_start"
        extra_headers = routes_files.FINAL if is_chunk else {}
        if endpoint.startswith("batchPredictionJobs."):
            scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await routes_files.drain(request)
                return error_response(
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 access token.",
                )
        else:
            api_key = (request.headers.get("x-goog-api-key") or request.query_params.get("key") or "").strip()
            if not is_chunk and not api_key:
                await routes_files.drain(request)
                return error_response(401, "Method doesn't allow unregistered callers. Provide an API key.")
        delay = emu.knobs.get("reply_delay_seconds")
        if delay > 0:
            await asyncio.sleep(delay)
        fault = emu.knobs.record_call(endpoint)
        if fault is not None and fault.status is not None and not fault.after:
            await routes_files.drain(request)
            if is_chunk:
                session_id = request.query_params["upload_id"]
                with contextlib.suppress(ApiError):
                    emu.files.abort(emu.files.session(session_id))
            return error_response(fault.status, f"Injected fault on {endpoint}.", extra_headers)
        try:
            if not is_chunk:
                raw = await request.body()
                params["json"] = orjson.loads(raw) if raw.strip() else None
            response = await handler(emu, request, params, fault)
            if fault is not None and fault.after and fault.status is not None:
                # The call took effect; its confirmation is lost (what makes a 5xx on create ambiguous).
                return error_response(
                    fault.status, f"Injected fault on {endpoint} (after it took effect).", extra_headers
                )
            return response
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"Invalid JSON payload received. {exc}", extra_headers)
        except ApiError as exc:
            return error_response(exc.code, exc.message, exc.headers or extra_headers)
    await routes_files.drain(request)
    return error_response(404, f"Method not found: {request.method} {path}.")


def create_app(
    data_dir: str | Path | None = None,
    pending_seconds: float = 0.0,
    running_seconds: float = 0.0,
    persist: bool | None = None,
    max_concurrent_jobs: int = 0,
    max_enqueued_tokens: int = 0,
    bigquery_endpoint: str | None = None,
    storage_endpoint: str | None = None,
) -> FastAPI:
    """The emulator ASGI app; ``app.state.emulator`` holds its state (see ``Emulator``).

    :param persist: keep file and job metadata across restarts in ``data_dir`` (default: on exactly when a
        ``data_dir`` is given; a throwaway temp dir has nothing to come back to).
    :param max_concurrent_jobs: non-terminal jobs at once before a create gets 429 (0: unlimited).
    :param max_enqueued_tokens: estimated tokens of one model's non-terminal jobs before 429 (0: unlimited).
    :param bigquery_endpoint: the BigQuery emulator (``http://127.0.0.1:P``) Vertex jobs read bq:// input
        from and write predictions to; ``storage_endpoint``: the GCS emulator, for gs:// (see
        ``routes_vertex``).
    """
    root = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="gemini-emulator-"))
    keep = data_dir is not None if persist is None else persist
    emu = Emulator(
        root,
        pending_seconds=pending_seconds,
        running_seconds=running_seconds,
        persist=keep,
        max_concurrent_jobs=max_concurrent_jobs,
        max_enqueued_tokens=max_enqueued_tokens,
        bigquery_endpoint=bigquery_endpoint,
        storage_endpoint=storage_endpoint,
    )
    app = FastAPI(title="Gemini Batch API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = emu
    app.include_router(control_router(emu))

    @app.api_route("/{full_path:path}", methods=["GET", "POST", "DELETE", "PATCH", "PUT"])
    async def api(request: Request) -> Response:
        response = await _dispatch(emu, request)
        await emu.reply_holds.hold(request.method, request.url.path)
        return response

    return app
