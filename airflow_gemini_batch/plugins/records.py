"""What our operators recorded about batch jobs, read back from Airflow's metadata DB (the XCom table).

The submit operator pushes a manifest (``manifest.Manifest``: one shard = one job); the sensor, or the submit
task itself with ``wait_for_completion=True``, a wait summary (``waiting.build_summary``: state and batchStats
per job); the results operator a results summary (``GeminiBatchLoadResultsOperator._summary``: outcome counts,
tokens and cost per job, and their task totals). This module joins them into one :class:`JobRecord` per job,
newest first.
Those producers are the only shapes read here: a document of another ``kind`` is ignored.

Invariants:

* Authorization is applied in the query: only XComs of DAGs the caller may read are ever loaded, so a
  filtering bug further up cannot leak another team's jobs.
* Bounded work: at most ``limit`` manifests are read (newest first), and summaries only for their runs.
  The XComs are small documents (names and counts), never rows; the page never touches row data.
* Read-only: nothing here writes to the metadata DB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.models.xcom import XComModel
from sqlalchemy import String, cast, select

from airflow_gemini_batch.cost.report import run_cost_report
from airflow_gemini_batch.manifest import (
    MANIFEST_KIND,
    MANIFEST_XCOM_KEY,
    RESULTS_SUMMARY_KIND,
    RESULTS_SUMMARY_XCOM_KEY,
    WAIT_SUMMARY_KIND,
    WAIT_SUMMARY_XCOM_KEY,
)

if TYPE_CHECKING:
    from collections.abc import Collection
    from datetime import datetime

    from sqlalchemy.orm import Session

#: Hard cap on manifests read per request, whatever the caller asks: the page is a monitor, not an archive.
MAX_MANIFESTS = 1000

#: The ``ShardReport`` fields the page shows besides the outcome counts.
LOAD_REPORT_FIELDS = ("key_count", "lines", "unknown_keys", "duplicate_keys", "malformed_lines", "truncated")

_JobKey = tuple[str, str, str]  # (dag_id, run_id, job_name)
_Wait = tuple[str, dict[str, Any]]  # (task_id, the job's entry in the wait summary)
#: (task_id, map_index, results summary, the job's ShardReport)
_Loaded = tuple[str, int, dict[str, Any], dict[str, Any]]


@dataclass
class JobRecord:
    """One batch job as our operators recorded it (no live API state here; see ``live.py``)."""

    job_name: str
    job_id: str
    dag_id: str
    run_id: str
    task_id: str  # the submit task that created the job
    map_index: int
    gemini_conn_id: str
    model: str | None
    task: str | None  # "generate" | "embed"
    display_name: str | None
    shard_index: int | None
    shard_count: int
    request_count: int
    submitted_at: str | None
    #: The job's entry in the sensor's wait summary (state, batchStats counts, times, error), if any.
    wait: dict[str, Any] | None = None
    wait_task_id: str | None = None
    #: The job's outcome counts from the results summary's ``ShardReport`` (succeeded, failed,
    #: invalid_output, missing).
    outcomes: dict[str, int] | None = None
    #: What loading the job's responses found besides outcomes (key and line counts, unknown and duplicate
    #: keys, malformed lines); a subset of the ``ShardReport``.
    load_report: dict[str, Any] | None = None
    #: The results task's verdict: ``ok`` or ``too_many_failures`` (it fails after loading everything).
    results_status: str | None = None
    results_task_id: str | None = None
    results_map_index: int | None = None
    #: This job's tokens (``prompt``, ``output``, ``thinking``, ``cached``, ``total``) and cost (``currency``,
    #: ``batch``, ``standard``, ``savings``, ``prices_as_of``, ...), from its entry in the results summary.
    tokens: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    task_ids: list[str] = field(default_factory=list)
    #: The jobs of this shard's earlier generations (ended FAILED / EXPIRED / CANCELLED), oldest first.
    previous_jobs: list[str] = field(default_factory=list)
    #: The money of the run this job belongs to (estimate vs actual, reused rows, savings), the same on each
    #: of its jobs (``cost.report.run_cost_report``); not to be summed over jobs.
    run_cost: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_id_of(job_name: str) -> str:
    """``batches/abc`` → ``abc`` (what the page and the API routes use)."""
    return job_name.rsplit("/", 1)[-1]


def _decode(value: Any) -> Any:
    """XCom values are stored JSON-encoded; ``XComModel.deserialize_value`` knows both storage shapes."""

    class _Row:
        pass

    row = _Row()
    row.value = value  # type: ignore[attr-defined]
    try:
        return XComModel.deserialize_value(row)
    except Exception:
        return None


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def load_job_records(
    session: Session,
    *,
    allowed_dag_ids: Collection[str],
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    job_id: str | None = None,
    limit: int = 200,
) -> list[JobRecord]:
    """Job records of the newest manifests of DAGs in ``allowed_dag_ids``, newest first.

    :param allowed_dag_ids: DAGs the user may read; nothing outside this set is queried.
    :param dag_id: only this DAG.
    :param run_id: only this DAG run.
    :param task_id: only jobs this task submitted, waited for or loaded (so a link from any of our three
        operators lands on the same jobs).
    :param job_id: only the job ``batches/<job_id>``.
    :param limit: maximum number of manifests (submit task instances) read; capped at ``MAX_MANIFESTS``.
    """
    allowed = set(allowed_dag_ids)
    if dag_id is not None:
        allowed &= {dag_id}
    if not allowed:
        return []
    limit = max(1, min(int(limit), MAX_MANIFESTS))

    stmt = select(
        XComModel.dag_id,
        XComModel.run_id,
        XComModel.task_id,
        XComModel.map_index,
        XComModel.value,
        XComModel.timestamp,
    ).where(XComModel.key == MANIFEST_XCOM_KEY, XComModel.dag_id.in_(allowed))
    if run_id is not None:
        stmt = stmt.where(XComModel.run_id == run_id)
    if job_id is not None:
        # A cheap, portable pre-filter (SQLite JSON text, PostgreSQL JSONB cast to text); exact match below.
        stmt = stmt.where(cast(XComModel.value, String).contains(f"batches/{job_id}", autoescape=True))
    stmt = stmt.order_by(XComModel.timestamp.desc()).limit(limit)
    manifests = session.execute(stmt).all()
    if not manifests:
        return []

    waits, results = _load_summaries(session, {(m.dag_id, m.run_id) for m in manifests})

    records: list[JobRecord] = []
    for m in manifests:
        manifest = _decode(m.value)
        if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
            continue
        shards = [s for s in manifest.get("shards") or [] if isinstance(s, dict) and s.get("job_name")]
        for shard in shards:
            name = str(shard["job_name"])
            if job_id is not None and job_id_of(name) != job_id:
                continue
            rec = JobRecord(
                job_name=name,
                job_id=job_id_of(name),
                dag_id=m.dag_id,
                run_id=m.run_id,
                task_id=m.task_id,
                map_index=m.map_index,
                gemini_conn_id=str(manifest.get("gemini_conn_id") or "gemini_batch_default"),
                model=manifest.get("model"),
                task=manifest.get("task"),
                display_name=shard.get("display_name"),
                shard_index=shard.get("index"),
                shard_count=len(shards),
                request_count=int(shard.get("request_count") or 0),
                submitted_at=_iso(m.timestamp),
                task_ids=[m.task_id],
                previous_jobs=[str(j) for j in shard.get("previous_jobs") or []],
            )
            _attach_wait(rec, waits.get((m.dag_id, m.run_id, name)))
            loaded = results.get((m.dag_id, m.run_id, name))
            _attach_results(rec, loaded)
            rec.run_cost = run_cost_report(manifest, loaded[2] if loaded else None)
            if task_id is None or task_id in rec.task_ids:
                records.append(rec)
    return records


def _load_summaries(
    session: Session, runs: set[tuple[str, str]]
) -> tuple[dict[_JobKey, _Wait], dict[_JobKey, _Loaded]]:
    """Wait and results summaries of these runs, indexed by (dag_id, run_id, job_name).

    Summaries name their jobs, so they are matched by job name, not by task id: the page needs no knowledge
    of how a DAG wires our operators together (a sensor, or the submit task itself with
    ``wait_for_completion=True``, records the wait summary).
    """
    dag_ids = {d for d, _ in runs}
    run_ids = {r for _, r in runs}
    stmt = select(
        XComModel.dag_id,
        XComModel.run_id,
        XComModel.task_id,
        XComModel.map_index,
        XComModel.key,
        XComModel.value,
    ).where(
        XComModel.key.in_((WAIT_SUMMARY_XCOM_KEY, RESULTS_SUMMARY_XCOM_KEY)),
        XComModel.dag_id.in_(dag_ids),
        XComModel.run_id.in_(run_ids),
    )
    waits: dict[_JobKey, _Wait] = {}
    results: dict[_JobKey, _Loaded] = {}
    for row in session.execute(stmt):
        if (row.dag_id, row.run_id) not in runs:
            continue
        doc = _decode(row.value)
        if not isinstance(doc, dict):
            continue
        jobs = [j for j in doc.get("jobs") or [] if isinstance(j, dict)]
        if row.key == WAIT_SUMMARY_XCOM_KEY and doc.get("kind") == WAIT_SUMMARY_KIND:
            # waiting.build_summary: one JobStatus-like entry per job, keyed by "name".
            for job in jobs:
                if job.get("name"):
                    waits[(row.dag_id, row.run_id, job["name"])] = (row.task_id, job)
        elif row.key == RESULTS_SUMMARY_XCOM_KEY and doc.get("kind") == RESULTS_SUMMARY_KIND:
            # GeminiBatchLoadResultsOperator._summary: "jobs" is a list of ShardReport dicts ("job_name").
            for job in jobs:
                if job.get("job_name"):
                    results[(row.dag_id, row.run_id, job["job_name"])] = (
                        row.task_id,
                        row.map_index,
                        doc,
                        job,
                    )
    return waits, results


def _attach_wait(rec: JobRecord, found: _Wait | None) -> None:
    if found is None:
        return
    rec.wait_task_id, rec.wait = found
    _add_task(rec, rec.wait_task_id)


def _attach_results(rec: JobRecord, found: _Loaded | None) -> None:
    if found is None:
        return
    rec.results_task_id, rec.results_map_index, doc, report = found
    _add_task(rec, rec.results_task_id)
    counts = report.get("counts") or {}
    rec.outcomes = {k: int(v) for k, v in counts.items() if isinstance(v, (int, float))}
    rec.load_report = {k: report.get(k) for k in LOAD_REPORT_FIELDS if k in report}
    rec.results_status = doc.get("status")
    # Each job entry carries its own usage (the results operator sums tokens per job and prices them); the
    # task's totals are not copied onto its jobs, so nothing is counted twice when the page adds jobs up.
    tokens, cost = report.get("tokens"), report.get("cost")
    rec.tokens = tokens if isinstance(tokens, dict) else None
    rec.cost = cost if isinstance(cost, dict) else None


def _add_task(rec: JobRecord, task_id: str) -> None:
    # The submit task with wait_for_completion=True records the manifest and the wait summary both.
    if task_id not in rec.task_ids:
        rec.task_ids.append(task_id)
