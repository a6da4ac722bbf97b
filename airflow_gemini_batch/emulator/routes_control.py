"""Control API under ``/_emulator`` (no auth, JSON): lets a test reset state, tune timing, inject faults,
shape job outcomes, and inspect what the client did.

Endpoints (all return 200 JSON on success, Google-style 400 on bad input):

* ``POST /_emulator/reset`` - forget files, jobs, faults, behaviours, call counts (also the persisted
  state in the data dir, if any); config back to defaults.
* ``GET|POST /_emulator/config`` - read / set ``pending_seconds``, ``running_seconds``,
  ``output_delay_seconds``, ``reply_delay_seconds``, ``list_lag_seconds`` (``batches.list`` leaves out jobs
  younger than that: an eventually consistent list), ``max_concurrent_jobs`` and ``max_enqueued_tokens`` (the
  batch quotas, 0 = unlimited: a create past them is 429 RESOURCE_EXHAUSTED, see ``quota``).
* ``GET /_emulator/quota`` - the limits, the jobs not finished and their tokens per model now, the high-water
  marks since the last reset (``high_water_jobs``, ``high_water_tokens``) and ``rejected_creates``.
* ``POST /_emulator/faults`` - ``{"endpoint", "status"?, "count"=1, "reset_after_bytes"?, "after"=false}``;
  with ``after`` the call takes effect and the error replaces its reply (a create whose confirmation is lost).
* ``POST /_emulator/job_behaviour`` - ``{"match", "final_state", "stay_pending", "corrupt_output",
  "fail_keys", "fail_fraction", "fail_status", "count", "report_state", "report_state_reads", "key_column"}``
  (``key_column``: which column / label holds a Vertex row's key); ``report_state`` is any string sent verbatim
  as ``metadata.state`` for a job's first ``report_state_reads`` (default 3, null = all) ``batches.get``
  reads (``batches.list`` shows it meanwhile without using reads up), to test unknown-state handling.
* ``POST /_emulator/hold`` - ``{"state"="PENDING", "reads"?, "match"?, "count"?, "age_seconds"?}``: jobs
  created from now on whose display name starts with ``match`` (null: every job), at most ``count`` of them (null: all),
  really stay in ``state`` (PENDING, RUNNING, or SUCCEEDED with the output not visible yet) until ``reads`` ``batches.get`` reads have reported it (null:
  until released), then their lifecycle goes on as configured. A test that needs a job in a state counts
  reads instead of racing the clock. ``age_seconds`` dates a held job's ``createTime`` that far back (a job
  that has waited for hours, without a clock).
* ``POST /_emulator/release`` - ``{"name"?}``: end the hold of that job now (no name: of every held job, and
  forget the hold rules); returns ``{"released": [names]}``. An unknown name is a 400.
* ``POST /_emulator/reply_holds`` - ``{"method", "path", "count"?}``: hold the replies to ``method`` requests
  (``*``: any) whose path, without its leading slash and API version (``v1beta/batches/x`` is ``batches/x``, a
  job's name), matches the glob ``path``, at most ``count`` of them (null: all), until released. The request
  is handled meanwhile (a held get has read the job); only its reply waits. Returns ``{"reply_hold": view}``:
  ``id``, ``held`` (requests held so far), ``waiting`` (held now), ``released``. See ``reply_holds``.
* ``GET /_emulator/reply_holds`` - every reply hold since the last reset, as ``{"reply_holds": [views]}``.
* ``POST /_emulator/reply_holds/wait`` - ``{"id", "held"=1, "timeout_seconds"=60}``: answers once that hold has
  held ``held`` requests in all (the view), without polling; 408 after ``timeout_seconds``, 412 when the hold
  was released short of it. A test waits so until the request it is about IS held.
* ``POST /_emulator/reply_holds/release`` - ``{"id"?}``: let that hold's replies go (no id: every hold's) and
  retire it; returns ``{"released": [views]}``, each with ``let_go`` (replies released). A reset (and the
  server's shutdown) releases every hold.
* ``GET /_emulator/jobs`` - every job created since the last reset, deleted ones flagged; ``hold`` (state
  and reads left, or null) and ``reads`` (``batches.get`` reads so far) say what a held job is waiting for.
* ``GET /_emulator/caches`` - every cached content since the last reset (``live``, ``deleted``, ``hits``:
  requests answered with it).
* ``GET /_emulator/jobs/<id>/requests`` - the request lines a job was given (its input file or inline
  requests), as stored: what a test asserts every line carried.
* ``GET /_emulator/calls`` - call counts per endpoint name.
* ``GET /_emulator/requests`` - how many times each key's request was processed, over all jobs.
* ``GET /_emulator/health`` - liveness.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at runtime
from starlette.responses import Response  # noqa: TC002

from airflow_gemini_batch.emulator.common import error_response, json_response
from airflow_gemini_batch.emulator.faults import ValidationError
from airflow_gemini_batch.emulator.reply_holds import HoldNotReached

if TYPE_CHECKING:
    from airflow_gemini_batch.emulator.state import Emulator


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object")
    return body


def control_router(emu: Emulator) -> APIRouter:
    router = APIRouter(prefix="/_emulator")

    async def guarded(request: Request, action: Any) -> Response:
        try:
            return json_response(action(await _json_body(request)))
        except (ValidationError, TypeError, ValueError) as exc:
            return error_response(400, str(exc))

    @router.post("/reset")
    async def reset(request: Request) -> Response:
        await request.body()
        emu.reset()
        return json_response({})

    @router.get("/config")
    async def get_config() -> Response:
        return json_response(dict(emu.knobs.config))

    @router.post("/config")
    async def set_config(request: Request) -> Response:
        return await guarded(request, emu.knobs.configure)

    @router.post("/faults")
    async def add_fault(request: Request) -> Response:
        return await guarded(request, lambda body: {"fault": vars(emu.knobs.add_fault(body))})

    @router.post("/job_behaviour")
    async def add_behaviour(request: Request) -> Response:
        return await guarded(request, lambda body: {"job_behaviour": emu.knobs.add_behaviour(body).as_dict()})

    @router.post("/hold")
    async def add_hold(request: Request) -> Response:
        return await guarded(request, lambda body: {"hold": vars(emu.knobs.add_hold(body))})

    def release(body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if name is not None and not any(job.name == name for job in emu.engine.all_jobs()):
            raise ValidationError(f"no job named {name!r}")
        if name is None:
            emu.knobs.clear_holds()
        return {"released": emu.engine.release(name)}

    @router.post("/release")
    async def release_jobs(request: Request) -> Response:
        return await guarded(request, release)

    @router.post("/reply_holds")
    async def add_reply_hold(request: Request) -> Response:
        return await guarded(request, lambda body: {"reply_hold": emu.reply_holds.add(body).view()})

    @router.get("/reply_holds")
    async def reply_holds() -> Response:
        return json_response({"reply_holds": emu.reply_holds.views()})

    @router.post("/reply_holds/wait")
    async def wait_reply_hold(request: Request) -> Response:
        try:
            body = await _json_body(request)
            unknown = set(body) - {"id", "held", "timeout_seconds"}
            if unknown:
                raise ValidationError(f"unknown keys: {sorted(unknown)}")
            view = await emu.reply_holds.wait_held(
                body.get("id"), body.get("held", 1), body.get("timeout_seconds", 60.0)
            )
        except ValidationError as exc:
            return error_response(400, str(exc))
        except HoldNotReached as exc:
            return error_response(408 if exc.timed_out else 412, str(exc))
        return json_response({"reply_hold": view})

    @router.post("/reply_holds/release")
    async def release_replies(request: Request) -> Response:
        return await guarded(request, lambda body: {"released": emu.reply_holds.release(body.get("id"))})

    @router.get("/jobs")
    async def jobs() -> Response:
        now = time.time()
        return json_response({"jobs": [job.control_view(now) for job in emu.engine.all_jobs()]})

    @router.get("/quota")
    async def quota() -> Response:
        return json_response(emu.engine.quota_view(emu.quota_limits()))

    @router.get("/caches")
    async def caches() -> Response:
        now = time.time()
        return json_response({"caches": [cache.control_view(now) for cache in emu.caches.all_caches()]})

    @router.get("/jobs/{job_id}/requests")
    async def job_requests(job_id: str) -> Response:
        job = next((j for j in emu.engine.all_jobs() if j.id == job_id), None)
        if job is None:
            return error_response(404, f"no job batches/{job_id}")
        return json_response({"requests": emu.engine.stored_requests(job)})

    @router.get("/calls")
    async def calls() -> Response:
        return json_response(emu.knobs.calls())

    @router.get("/requests")
    async def requests_by_key() -> Response:
        return json_response(dict(emu.engine.requests_by_key))

    @router.get("/health")
    async def health() -> Response:
        return json_response({"ok": True, "data_dir": str(emu.data_dir)})

    return router
