"""Files API handlers: resumable upload (start, chunks, finalize), get, list, delete, streamed download.

Invariants (wire-protocol reference §0 and §3):

* The start reply carries an absolute, lower-case ``x-goog-upload-url`` built from the request's Host header,
  so it points at whatever address the client used.
* Every reply to an upload-URL POST carries ``x-goog-upload-status`` (``active`` for intermediate chunks,
  ``final`` for the finalize chunk and for every error), or the SDK sleeps 7 s retrying the same chunk.
* Chunk bodies are streamed to disk piece by piece; downloads are streamed from disk with Content-Length.
* A request body is always read completely before replying, so keep-alive connections stay usable.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from airflow_gemini_batch.emulator.common import ApiError, json_response, pick

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request

    from airflow_gemini_batch.emulator.faults import Fault
    from airflow_gemini_batch.emulator.state import Emulator

CHUNK_GRANULARITY = 8 * 1024 * 1024
DOWNLOAD_BLOCK = 1 << 20
FINAL = {"x-goog-upload-status": "final"}


class InjectedConnectionReset(ConnectionResetError):
    """Raised inside a download body to cut the connection (fault ``reset_after_bytes``)."""


class _QuietInjectedResets(logging.Filter):
    """Keeps uvicorn from logging a traceback for a connection cut we injected on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _contains_injected(exc)


def _contains_injected(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, InjectedConnectionReset):
        return True
    group = getattr(exc, "exceptions", None)  # BaseExceptionGroup (3.11+)
    if isinstance(group, (list, tuple)):
        return any(_contains_injected(e) for e in group if isinstance(e, BaseException))
    return _contains_injected(exc.__cause__ or exc.__context__)


logging.getLogger("uvicorn.error").addFilter(_QuietInjectedResets())


async def drain(request: Request) -> None:
    async for _ in request.stream():
        pass


def _header_int(request: Request, name: str) -> int | None:
    value = request.headers.get(name)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


async def upload(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    """``POST /upload/{v}/files``: a start request, or a chunk when ``upload_id`` is in the query."""
    if request.query_params.get("upload_id"):
        return await _upload_chunk(emu, request)
    body: dict[str, Any] = params["json"] or {}
    meta = body.get("file") if isinstance(body.get("file"), dict) else body
    protocol = (request.headers.get("x-goog-upload-protocol") or "").lower()
    command = (request.headers.get("x-goog-upload-command") or "").lower()
    if protocol != "resumable" or command != "start":
        raise ApiError(400, "Only the resumable upload protocol (X-Goog-Upload-Command: start) is emulated.")
    size = pick(meta, "size_bytes", "sizeBytes")
    if size is None:
        size = _header_int(request, "x-goog-upload-header-content-length")
    mime = (
        pick(meta, "mime_type", "mimeType")
        or request.headers.get("x-goog-upload-header-content-type")
        or "application/octet-stream"
    )
    session = emu.files.start_upload(
        name=pick(meta, "name"),
        display_name=pick(meta, "display_name", "displayName"),
        mime_type=str(mime),
        size=None if size is None else int(size),
    )
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    url = f"{request.url.scheme}://{host}{request.url.path}?upload_id={session.upload_id}&upload_protocol=resumable"
    headers = {
        "x-goog-upload-status": "active",
        "x-goog-upload-url": url,
        "x-goog-upload-control-url": url,
        "x-goog-upload-chunk-granularity": str(CHUNK_GRANULARITY),
    }
    if session.declared_size is not None:
        headers["x-goog-upload-header-content-length"] = str(session.declared_size)
    return Response(content=b"", status_code=200, headers=headers)


async def _upload_chunk(emu: Emulator, request: Request) -> Response:
    try:
        session = emu.files.session(request.query_params["upload_id"])
    except ApiError as exc:
        await drain(request)
        raise ApiError(exc.code, exc.message, FINAL) from None
    commands = {c.strip() for c in (request.headers.get("x-goog-upload-command") or "").lower().split(",")}
    offset = _header_int(request, "x-goog-upload-offset")
    if "upload" in commands and offset is not None and offset != session.offset:
        await drain(request)
        raise ApiError(400, f"Upload offset {offset} does not match bytes received {session.offset}.", FINAL)
    if "upload" in commands:
        async for piece in request.stream():
            if piece:
                emu.files.write(session, piece)
    else:
        await drain(request)
    if "cancel" in commands:
        emu.files.abort(session)
        return Response(content=b"", headers={"x-goog-upload-status": "cancelled"})
    if "finalize" in commands:
        record = await run_in_threadpool(emu.files.finalize, session)
        return json_response({"file": record.resource(emu.version_of(request))}, headers=FINAL)
    return Response(
        content=b"",
        headers={"x-goog-upload-status": "active", "x-goog-upload-size-received": str(session.offset)},
    )


def _file_id(params: dict[str, Any]) -> str:
    return str(params["id"]).removeprefix("files/")


async def get_file(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    return json_response(emu.files.get(_file_id(params)).resource(emu.version_of(request)))


async def list_files(
    emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None
) -> Response:
    page, token = emu.files.list(emu.page_size(request, default=10), request.query_params.get("pageToken"))
    version = emu.version_of(request)
    body: dict[str, Any] = {"files": [record.resource(version) for record in page]} if page else {}
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def delete_file(
    emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None
) -> Response:
    await run_in_threadpool(emu.files.delete, _file_id(params))
    return json_response({})


async def download(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    record = emu.files.get(_file_id(params))
    cut_after = fault.reset_after_bytes if fault is not None else None
    path = record.path

    def body() -> Iterator[bytes]:
        sent = 0
        with path.open("rb") as fh:
            while True:
                want = DOWNLOAD_BLOCK if cut_after is None else min(DOWNLOAD_BLOCK, cut_after - sent)
                if want <= 0:
                    raise InjectedConnectionReset(f"emulator: connection reset after {sent} bytes (injected)")
                block = fh.read(want)
                if not block:
                    return
                sent += len(block)
                yield block

    return StreamingResponse(
        body(),
        media_type=record.mime_type if "/" in record.mime_type else "application/octet-stream",
        headers={"content-length": str(record.size)},
    )
