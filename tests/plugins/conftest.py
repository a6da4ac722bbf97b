"""Fixtures for the UI plugin tests: record real batch jobs the way our operators do, then look at them.

``record_run`` runs a real DAG with ``dag.test()``: its tasks create real jobs in the emulator through
``GeminiBatchHook`` and push manifest / wait-summary / results-summary XComs of the documented shape
(``airflow_gemini_batch.manifest``). The operators themselves are written elsewhere; these tasks stand in for
them so the page is tested against the same metadata-DB rows a real run leaves behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_gemini_batch.manifest import (
    MANIFEST_KIND,
    MANIFEST_XCOM_KEY,
    RESULTS_SUMMARY_KIND,
    RESULTS_SUMMARY_XCOM_KEY,
    WAIT_SUMMARY_KIND,
    WAIT_SUMMARY_XCOM_KEY,
)

MODEL = "gemini-2.5-flash"


def submit_jobs(
    conn_id: str, staging: Path, prefix: str, n_jobs: int, n_requests: int
) -> list[dict[str, Any]]:
    """Upload ``n_jobs`` JSONL shards and create one job per shard; return manifest shards."""
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

    hook = GeminiBatchHook(conn_id)
    shards = []
    for i in range(n_jobs):
        path = staging / f"{prefix}-{i}.jsonl"
        with path.open("w") as f:
            for k in range(n_requests):
                line = {
                    "key": f"k{i}-{k}",
                    "request": {"contents": [{"parts": [{"text": f"Describe item {k}"}]}]},
                }
                f.write(json.dumps(line) + "\n")
        display_name = f"{prefix}-shard-{i}"
        file_name = hook.upload_jsonl(path, display_name)
        job = hook.create_job(model=MODEL, display_name=display_name, file_name=file_name)
        shards.append(
            {
                "index": i,
                "display_name": display_name,
                "job_name": job.name,
                "file_name": file_name,
                "inline": False,
                "request_count": n_requests,
                "bytes": path.stat().st_size,
                "estimated_tokens": 10 * n_requests,
            }
        )
    return shards


def manifest_for(ctx: dict[str, Any], conn_id: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    ti = ctx["ti"]
    return {
        "kind": MANIFEST_KIND,
        "version": 1,
        "gemini_conn_id": conn_id,
        "task": "generate",
        "model": MODEL,
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "shards": shards,
        "request_count": sum(s["request_count"] for s in shards),
        "skipped_count": 0,
    }


def wait_summary(conn_id: str, job_names: list[str], deadline_s: float = 60.0) -> dict[str, Any]:
    """Poll until every job is finished (the emulator is instant after a reset), like the sensor does."""
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

    hook = GeminiBatchHook(conn_id)
    end = time.monotonic() + deadline_s
    while True:
        statuses = [hook.get_job(n) for n in job_names]
        if all(s.done for s in statuses) or time.monotonic() > end:
            break
        time.sleep(0.3)
    jobs = [
        {
            k: s.to_dict()[k]
            for k in ("name", "state", "request_count", "succeeded_count", "failed_count", "pending_count")
        }
        | {"create_time": s.create_time, "end_time": s.end_time, "error": s.error}
        for s in statuses
    ]
    return {"kind": WAIT_SUMMARY_KIND, "status": "success", "jobs": jobs, "bad_jobs": []}


def results_summary(wait: dict[str, Any], per_job_usage: bool) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    for j in wait["jobs"]:
        counts = {
            "succeeded": j["succeeded_count"],
            "failed": j["failed_count"],
            "invalid_output": 0,
            "missing": 0,
        }
        jobs[j["name"]] = dict(counts)
        if per_job_usage:
            jobs[j["name"]]["tokens"] = {"prompt": 30, "output": 70, "thinking": 0, "cached": 0, "total": 100}
            jobs[j["name"]]["cost"] = {"batch_usd": 0.0125, "standard_usd": 0.025}
    total = {
        k: sum(v[k] for v in jobs.values()) for k in ("succeeded", "failed", "invalid_output", "missing")
    }
    n = len(jobs)
    return {
        "kind": RESULTS_SUMMARY_KIND,
        "total": total,
        "jobs": jobs,
        "tokens": {"prompt": 30 * n, "output": 70 * n, "thinking": 0, "cached": 0, "total": 100 * n},
        "cost": {"batch_usd": 0.0125 * n, "standard_usd": 0.025 * n, "prices_as_of": "2025-07-01"},
    }


def register_dag(dag: Any) -> None:
    """Write an in-test DAG to the metadata DB as the dag-processor would (bundle ``dags-folder``).

    ``dag.test()`` in 3.3.2 only finds DAGs by parsing a bundle, so a DAG built inside a test is otherwise
    "not serialized". This also creates the ``DagModel`` row the auth manager lists readable DAGs from.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


def run_dag(dag: Any) -> Any:
    """``dag.test()`` of an in-test DAG; asserts the run succeeded and returns it."""
    register_dag(dag)
    dag_run = dag.test()
    assert dag_run.state == "success", f"DAG {dag.dag_id} did not succeed: {dag_run.state}"
    return dag_run


@pytest.fixture
def record_run(airflow_db: Path, gemini_conn: str, tmp_path: Path) -> Callable[..., Any]:
    """Run a DAG that records jobs; returns the DagRun. See the module docstring.

    :param dag_id: the DAG id.
    :param n_jobs: jobs (shards) created by the submit task.
    :param wait: whether a sensor-like task waits and pushes a wait summary.
    :param load: whether a results-like task pushes a results summary.
    :param conn_id: the connection the manifest names (jobs are always created on ``gemini_conn``).
    :param prefix: display-name prefix (match it with ``set_job_behaviour`` to keep jobs running).
    """

    def run(
        dag_id: str,
        *,
        n_jobs: int = 1,
        n_requests: int = 3,
        wait: bool = True,
        load: bool = True,
        per_job_usage: bool = True,
        conn_id: str | None = None,
        prefix: str | None = None,
    ) -> Any:
        from airflow.sdk import DAG, get_current_context, task

        recorded_conn = conn_id or gemini_conn
        display_prefix = prefix or dag_id

        with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc)) as dag:

            @task(task_id="submit")
            def submit() -> list[str]:
                ctx = get_current_context()
                shards = submit_jobs(gemini_conn, tmp_path, display_prefix, n_jobs, n_requests)
                ctx["ti"].xcom_push(key=MANIFEST_XCOM_KEY, value=manifest_for(ctx, recorded_conn, shards))
                return [s["job_name"] for s in shards]

            @task(task_id="wait")
            def wait_for(names: list[str]) -> dict[str, Any]:
                summary = wait_summary(gemini_conn, names)
                get_current_context()["ti"].xcom_push(key=WAIT_SUMMARY_XCOM_KEY, value=summary)
                return summary

            @task(task_id="load")
            def load_results(summary: dict[str, Any]) -> None:
                value = results_summary(summary, per_job_usage)
                get_current_context()["ti"].xcom_push(key=RESULTS_SUMMARY_XCOM_KEY, value=value)

            names = submit()
            if wait:
                summary = wait_for(names)
                if load:
                    load_results(summary)

        return run_dag(dag)

    return run
