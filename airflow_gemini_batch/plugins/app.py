"""The FastAPI app behind the "Gemini Batches" page, mounted by the api-server at ``/gemini-batch``.

Invariants:

* Every route needs a logged-in Airflow user: the app-level dependency ``get_user`` runs before any route.
  Airflow mounts plugin apps without its own auth, so this line is the whole perimeter. The HTML, CSS and JS
  are served from routes (never ``StaticFiles``, which bypasses app dependencies), and FastAPI's own
  ``/docs`` and ``/openapi.json`` are switched off because they too would be public.
* A user sees only jobs of DAGs they may read (the auth manager decides; the DB query is filtered by it),
  and may cancel only jobs of DAGs they may edit. A job of a DAG one may not read answers 404, not 403, so
  its existence does not leak.
* Cancel is a POST that needs the ``X-Requested-With: gemini-batch`` header (a cross-site form cannot set
  it, and a cross-site script would need a CORS preflight Airflow does not grant) and a same-origin
  ``Origin`` when the browser sends one. The session cookie alone never cancels anything.
* Nothing here returns the API key: job states come from ``live.py``, whose error texts are scrubbed.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep  # noqa: TC002 (FastAPI resolves it at runtime)
from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from airflow.configuration import conf
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from airflow_gemini_batch.hooks.job_status import TERMINAL_STATES
from airflow_gemini_batch.plugins.live import LiveStates, expiry_view, previous_generations
from airflow_gemini_batch.plugins.page import render_page
from airflow_gemini_batch.plugins.records import JobRecord, load_job_records
from airflow_gemini_batch.plugins.urls import URL_PREFIX
from airflow_gemini_batch.results.parsing import OUTCOMES, TOKEN_FIELDS

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

#: The cost amounts of a results summary's job entry (``GeminiBatchLoadResultsOperator._summary``).
COST_FIELDS = ("batch", "standard", "savings")
#: The anti-CSRF header the page's cancel button sends.
CSRF_HEADER_VALUE = "gemini-batch"
REFRESH_SECONDS = 15


def create_app(live: LiveStates | None = None) -> FastAPI:
    """Build the app. ``live`` is the shared live-state cache (one per process by default)."""
    app = FastAPI(
        title="Gemini Batch monitor",
        dependencies=[Depends(get_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.live = live or LiveStates(
        ttl=conf.getfloat("gemini_batch", "ui_cache_seconds", fallback=10.0),
        max_calls=conf.getint("gemini_batch", "ui_max_api_calls_per_refresh", fallback=20),
        wait_seconds=conf.getfloat("gemini_batch", "ui_wait_for_refresh_seconds", fallback=2.0),
    )

    @app.get("/ui/", response_class=HTMLResponse)
    @app.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
    def page(request: Request, job_id: str | None = None) -> HTMLResponse:
        # Same document for the list and the detail view; the script routes on location.pathname.
        root = request.scope.get("root_path", "") or ""
        return HTMLResponse(
            render_page(app_base=root, airflow_base=_airflow_base(root), refresh_seconds=REFRESH_SECONDS),
            headers={"Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN"},
        )

    @app.get("/api/jobs")
    def list_jobs(
        request: Request,
        user: GetUserDep,
        session: SessionDep,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        """Jobs of readable DAGs, newest first, with live state; plus the filter choices and totals."""
        allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
        records = load_job_records(
            session, allowed_dag_ids=allowed, dag_id=dag_id, run_id=run_id, task_id=task_id, limit=limit
        )
        jobs = _with_live(request.app.state.live, records, user)
        states = sorted({j["state"] for j in jobs})
        if state:
            jobs = [j for j in jobs if j["state"] == state.upper()]
        return {
            "jobs": jobs,
            "dag_ids": sorted({r.dag_id for r in records} | ({dag_id} if dag_id else set())),
            "states": states,
            "totals": _totals(jobs),
            "runs": _runs(jobs),
            "refresh_seconds": REFRESH_SECONDS,
        }

    @app.get("/api/jobs/{job_id}")
    def get_job(request: Request, job_id: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
        """One job with its live state; 404 if unknown or in a DAG the user may not read."""
        record = _find(session, user, job_id)
        return {"job": _with_live(request.app.state.live, [record], user)[0]}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(
        request: Request,
        job_id: str,
        user: GetUserDep,
        session: SessionDep,
        x_requested_with: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Cancel a job through the hook; needs edit permission on its DAG and the anti-CSRF header."""
        _check_same_site(request, x_requested_with)
        record = _find(session, user, job_id)
        if not _can_edit(user, record.dag_id):
            raise HTTPException(
                403, f"You may not cancel jobs of DAG {record.dag_id!r} (edit permission needed)."
            )
        live: LiveStates = request.app.state.live
        try:
            live.hook(record.gemini_conn_id).cancel_job(record.job_name)
        except Exception as e:
            raise HTTPException(502, f"Cancel failed: {live.describe(record.gemini_conn_id, e)}") from None
        finally:
            live.invalidate(record.job_name)
        log.info(
            "User %s cancelled Gemini batch job %s (dag %s, run %s, task %s)",
            user.get_name(),
            record.job_name,
            record.dag_id,
            record.run_id,
            record.task_id,
        )
        return {"job": _with_live(live, [record], user)[0]}

    return app


@functools.cache
def get_app() -> FastAPI:
    """The process's one app (the plugin property may be read several times; the cache must be shared)."""
    return create_app()


def _airflow_base(root_path: str) -> str:
    """Airflow's own URL prefix: the app's mount path minus our ``/gemini-batch``."""
    return root_path[: -len(URL_PREFIX)] if root_path.endswith(URL_PREFIX) else ""


def _check_same_site(request: Request, x_requested_with: str | None) -> None:
    if x_requested_with != CSRF_HEADER_VALUE:
        raise HTTPException(
            403, f"Missing header X-Requested-With: {CSRF_HEADER_VALUE} (cross-site protection)."
        )
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
        if urlsplit(origin).netloc != host:
            raise HTTPException(403, "Cross-origin request refused.")


def _find(session: Any, user: BaseUser, job_id: str) -> JobRecord:
    allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
    records = load_job_records(session, allowed_dag_ids=allowed, job_id=job_id, limit=10)
    if not records:
        raise HTTPException(404, f"No recorded Gemini batch job {job_id!r} in a DAG you may read.")
    return records[0]


def _can_edit(user: BaseUser, dag_id: str) -> bool:
    return get_auth_manager().is_authorized_dag(
        method="PUT", access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=dag_id), user=user
    )


def _with_live(live: LiveStates, records: list[JobRecord], user: BaseUser) -> list[dict[str, Any]]:
    """Merge each record with its live read (or its recorded state when the API cannot be read)."""
    wanted = [(r.gemini_conn_id, name) for r in records for name in (r.job_name, *r.previous_jobs)]
    states = live.lookup(wanted)
    editable = {d: _can_edit(user, d) for d in {r.dag_id for r in records}}
    views = []
    for r in records:
        view = _job_view(r, states[r.job_name].to_dict(), editable[r.dag_id])
        view["previous"] = previous_generations(r.previous_jobs, states)
        view.update(expiry_view(r.job_name, view["create_time"], view["state"]))
        views.append(view)
    return views


def _job_view(rec: JobRecord, live: dict[str, Any], can_edit: bool) -> dict[str, Any]:
    status, wait = live["status"], rec.wait or {}
    source = status or wait
    state = (status or {}).get("state") or wait.get("state") or "UNKNOWN"
    total = max(int(source.get("request_count") or 0), rec.request_count)
    error = source.get("error")
    view = rec.to_dict()
    view.update(
        state=state,
        state_source="live" if status else ("recorded" if wait else "none"),
        live_error=live["error"],
        live_deferred=live["deferred"],
        progress={
            "total": total,
            "succeeded": int(source.get("succeeded_count") or 0),
            "failed": int(source.get("failed_count") or 0),
            "pending": int(source.get("pending_count") or 0),
        },
        create_time=source.get("create_time") or rec.submitted_at,
        end_time=source.get("end_time"),
        update_time=(status or {}).get("update_time"),
        error=(error.get("message") if isinstance(error, dict) else error),
        can_cancel=can_edit and state not in TERMINAL_STATES,
    )
    return view


def _runs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per submit task instance among the shown jobs, newest first: its estimate vs actual cost,
    reused rows and savings (``run_cost``, carried by each of its jobs, taken once)."""
    runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for j in jobs:
        key = (j["dag_id"], j["run_id"], j["task_id"], j["map_index"])
        if key not in runs and j.get("run_cost") is not None:
            runs[key] = {"dag_id": key[0], "run_id": key[1], "task_id": key[2], "map_index": key[3],
                         "model": j["model"], **j["run_cost"]}  # fmt: skip
    return list(runs.values())


def _totals(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the shown jobs, each job counted once (each carries its own tokens and cost).

    ``outcomes`` sums the loaded jobs only (``loaded_jobs`` of them); ``cost`` sums the loaded jobs whose
    model has a price (``unpriced_jobs`` counts the others), and is None when none has.
    """
    totals: dict[str, Any] = {"jobs": len(jobs), "requests": 0, "succeeded": 0, "failed": 0, "pending": 0}
    outcomes = dict.fromkeys(OUTCOMES, 0)
    tokens = dict.fromkeys(TOKEN_FIELDS, 0)
    cost = dict.fromkeys(COST_FIELDS, 0.0)
    loaded = priced = unpriced = 0
    currencies: set[str] = set()
    for j in jobs:
        for k in ("succeeded", "failed", "pending"):
            totals[k] += j["progress"][k]
        totals["requests"] += j["progress"]["total"]
        if j["outcomes"] is None:
            continue
        loaded += 1
        for k in OUTCOMES:
            outcomes[k] += int(j["outcomes"].get(k) or 0)
        for k in TOKEN_FIELDS:
            tokens[k] += int((j["tokens"] or {}).get(k) or 0)
        job_cost = j["cost"] or {}
        if job_cost.get("batch") is None:
            unpriced += 1
            continue
        priced += 1
        currencies.add(str(job_cost.get("currency") or "USD"))
        for k in COST_FIELDS:
            cost[k] += float(job_cost.get(k) or 0.0)
    totals |= {
        "loaded_jobs": loaded,
        "outcomes": outcomes if loaded else None,
        "tokens": tokens,
        "cost": ({"currency": "/".join(sorted(currencies))} | {k: round(v, 6) for k, v in cost.items()})
        if priced
        else None,
        "unpriced_jobs": unpriced,
    }
    return totals
