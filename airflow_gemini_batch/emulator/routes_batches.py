"""Batches API handlers: create (generate / embed, file or inline input), get, list, cancel, delete.

Invariants (wire-protocol reference §0 and §4):

* Every reply is an Operation (or ``{}`` for cancel/delete), HTTP 200; unknown batches are 404 NOT_FOUND.
* Creation is not idempotent: every accepted POST makes a new job (a faulted POST makes none).
* Input may be ``inputConfig.fileName`` / ``file_name`` (either casing, either spelling of ``inputConfig``) or
  inline ``inputConfig.requests.requests[]``; the referenced file must exist (else 400 INVALID_ARGUMENT).
* A create over the batch quotas (``quota``: concurrent jobs, enqueued tokens) is 429 RESOURCE_EXHAUSTED
  and makes no job.
* Lists are newest first and never return an empty page with a ``nextPageToken``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool

from airflow_gemini_batch.emulator.common import ApiError, json_response, pick
from airflow_gemini_batch.emulator.engine import JobEngine, count_lines
from airflow_gemini_batch.emulator.jobs import Job
from airflow_gemini_batch.emulator.quota import estimate_tokens

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_gemini_batch.emulator.faults import Fault
    from airflow_gemini_batch.emulator.state import Emulator


def _inline_requests(requests: Any) -> list[dict[str, Any]] | None:
    if requests is None:
        return None
    items = requests.get("requests") if isinstance(requests, dict) else requests
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ApiError(400, "inputConfig.requests.requests must be a list of objects.")
    return items


async def create(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    body: dict[str, Any] = params["json"] or {}
    batch = pick(body, "batch") or body
    if not isinstance(batch, dict):
        raise ApiError(400, "Request body must be {'batch': {...}}.")
    input_config = pick(batch, "inputConfig", "input_config") or {}
    file_name = pick(input_config, "fileName", "file_name")
    inline = _inline_requests(pick(input_config, "requests"))
    if file_name is None and inline is None:
        raise ApiError(400, "batch.inputConfig must set fileName or requests.")
    if file_name is not None:
        file_name = f"files/{str(file_name).removeprefix('files/')}"
        record = emu.files.find(file_name.removeprefix("files/"))
        if record is None:
            raise ApiError(400, f"Input file {file_name} not found.")
        request_count = await run_in_threadpool(count_lines, record.path)
        tokens = estimate_tokens(record.size)
    else:
        assert inline is not None
        request_count = len(inline)
        tokens = estimate_tokens(len(orjson.dumps(inline)))
    display_name = str(pick(batch, "displayName", "display_name") or "")
    model = params["model"]
    # Why here, with no await before the add: a rejected create must use up no hold or behaviour rule.
    emu.engine.check_quota(model, tokens, emu.quota_limits())
    hold = emu.knobs.hold_for(display_name)
    job = Job(
        id=JobEngine.new_job_id(),
        display_name=display_name,
        model=model,
        kind=params["kind"],
        input_kind="file" if file_name is not None else "inline",
        input_file=file_name,
        inline_requests=inline if file_name is None else None,
        request_count=request_count,
        pending_seconds=emu.knobs.get("pending_seconds"),
        running_seconds=emu.knobs.get("running_seconds"),
        output_delay_seconds=emu.knobs.get("output_delay_seconds"),
        behaviour=emu.knobs.behaviour_for(display_name),
        hold_state=None if hold is None else hold.state,
        hold_reads=None if hold is None else hold.reads,
        estimated_tokens=tokens,
        create_time=time.time() - (hold.age_seconds if hold is not None else 0.0),
    )
    emu.engine.add(job)
    return json_response(job.operation(time.time()))


def _job(emu: Emulator, params: dict[str, Any]) -> Job:
    job = emu.engine.get(str(params["id"]))
    if job is None or job.kind not in ("generate", "embed"):  # a Vertex job is not a Developer-API batch
        raise ApiError(404, f"Batch batches/{params['id']} not found.")
    return job


async def get(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    job = _job(emu, params)
    now = time.time()
    # Why consume here only: the raw-state knob and holds count batches.get reads (what pollers do), not
    # list pages. The read is counted after its reply is built: the last held read still shows the hold.
    op = job.operation(now, raw_state=job.reported_state(consume=True))
    emu.engine.read(job, now)
    return json_response(op)


async def list_batches(
    emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None
) -> Response:
    page, token = emu.engine.list(
        emu.page_size(request, default=10),
        request.query_params.get("pageToken"),
        lag_seconds=emu.knobs.get("list_lag_seconds"),
    )
    now = time.time()
    ops = [job.operation(now, raw_state=job.reported_state()) for job in page]
    body: dict[str, Any] = {"operations": ops} if ops else {}
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def cancel(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    emu.engine.cancel(_job(emu, params))
    return json_response({})


async def delete(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    emu.engine.delete(_job(emu, params))
    return json_response({})
