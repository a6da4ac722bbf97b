"""``@task.llm_batch`` with a Gemini model id, end to end: real Airflow ``dag.test()``, common-ai's own operator,
our adapter (found through the entry point), the real google-genai SDK, the emulator.

Jobs of the emulator finish at once; the only knob turned is common-ai's 30 s poll floor, lowered so a poll
that finds a job still running waits a second rather than half a minute (it decides nothing about states).
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "airflow.providers.common.ai.batch.base",
    reason="apache-airflow-providers-common-ai is not installed (it needs Python 3.11+)",
)

from pydantic import BaseModel, field_validator

from tests.conftest import TEST_API_KEY, xcom_of

MODEL_ID = "google:gemini-2.5-flash"
WHEN = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
PROMPTS = [f"Describe product {i}" for i in range(5)]


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.common.ai.operators import llm_batch

    monkeypatch.setattr(llm_batch, "_MIN_POLL_INTERVAL", 1)


def _dag(dag_id: str, result_path: Path, prompts: list[str] = PROMPTS, **kwargs: Any) -> Any:
    from airflow.sdk import DAG, task

    with DAG(dag_id=dag_id, schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:

        @task.llm_batch(
            llm_conn_id="gemini_batch_default",
            model_id=MODEL_ID,
            result_path=str(result_path),
            system_prompt="You write product copy.",
            poll_interval=1,
            **kwargs,
        )
        def describe() -> list[str]:
            return prompts

        describe()
    return dag


def _run(dag: Any) -> Any:
    return dag.test(logical_date=WHEN, run_after=WHEN)


def _state_files(result_path: Path) -> list[Path]:
    return sorted((result_path / "_airflow_batch_state").glob("*.json"))


def _rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    lines = Path(manifest["result_uri"].removeprefix("file://")).read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["index"])


def _task_state(run: Any) -> str:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
        ).one()
        return ti.state


@pytest.mark.parametrize("deferrable", [False, True], ids=["blocking", "deferred"])
def test_end_to_end_then_rerun_reattaches(register_dag, gemini_conn, emulator, tmp_path, deferrable):
    result_path = tmp_path / "results"
    dag = register_dag(_dag(f"llm_batch_gemini_{int(deferrable)}", result_path, deferrable=deferrable))

    run = _run(dag)
    assert run.state == "success"
    manifest = xcom_of(run, "describe")
    assert manifest["adapter"] == "google" and manifest["model_id"] == MODEL_ID
    assert manifest["counts"] == {
        "succeeded": 5, "errored": 0, "invalid_output": 0, "expired": 0, "cancelled": 0, "missing": 0
    }  # fmt: skip
    assert manifest["terminal_reason"] == "succeeded"
    jobs = emulator.control.jobs()
    assert [j["name"] for j in jobs] == [manifest["batch_id"]]
    rows = _rows(manifest)
    assert [r["output"] for r in rows] == [f"echo: {p}" for p in PROMPTS]
    assert all(r["finish_reason"] == "STOP" and r["model"] for r in rows)
    # The system prompt went on the wire: the emulator counts its text into the prompt tokens.
    assert [r["usage"]["input_tokens"] for r in rows] == [
        math.ceil(len(f"You write product copy.\n{p}") / 4) for p in PROMPTS
    ]

    # The API key is nowhere common-ai writes: the two-phase state file, the result rows, the XCom manifest.
    (state_file,) = _state_files(result_path)
    record = json.loads(state_file.read_text())
    assert record["batch_id"] == manifest["batch_id"] and record["adapter"] == "google"
    assert TEST_API_KEY not in state_file.read_text()
    assert TEST_API_KEY not in Path(manifest["result_uri"].removeprefix("file://")).read_text()
    assert TEST_API_KEY not in json.dumps(manifest)

    # Same run id again: common-ai's identity key and fingerprint match the state file, so it re-attaches to
    # the finished job and re-lands its results; nothing is uploaded or created a second time.
    again = _run(dag)
    assert again.state == "success" and again.run_id == run.run_id
    assert xcom_of(again, "describe")["counts"] == manifest["counts"]
    assert xcom_of(again, "describe")["batch_id"] == manifest["batch_id"]
    calls = emulator.control.calls()
    assert calls["batches.create"] == 1 and calls["files.upload_start"] == 1
    assert len(emulator.control.jobs()) == 1


def test_per_row_errors_and_invalid_output(register_dag, gemini_conn, emulator, tmp_path):
    """A row Gemini answers with an error is ``errored``; an answer the output_type rejects, ``invalid_output``."""

    class Copy(BaseModel):
        headline: str

        @field_validator("headline")
        @classmethod
        def never_good_enough(cls, value: str) -> str:
            raise ValueError("rejected by the reviewer")

    prompts = ["Describe the kettle", "PLEASE_FAIL: describe the spade", "Describe the rake"]
    dag = register_dag(_dag("llm_batch_gemini_rows", tmp_path / "r", prompts, output_type=Copy))
    run = _run(dag)
    assert run.state == "success"
    manifest = xcom_of(run, "describe")
    assert manifest["structured"] is True
    assert manifest["counts"] == {
        "succeeded": 0, "errored": 1, "invalid_output": 2, "expired": 0, "cancelled": 0, "missing": 0
    }  # fmt: skip
    assert manifest["terminal_reason"] == "partial"
    rows = _rows(manifest)
    assert [r["status"] for r in rows] == ["invalid_output", "error", "invalid_output"]
    assert rows[1]["error"]["provider_code"] == "400" and rows[1]["error"]["stage"] == "provider"
    assert json.loads(rows[0]["raw_output"]).keys() == {"headline"}  # Gemini got the schema and answered it
    assert "rejected by the reviewer" in rows[0]["error"]["message"]


def test_structured_output_succeeds(register_dag, gemini_conn, emulator, tmp_path):
    class Copy(BaseModel):
        headline: str
        words: int

    dag = register_dag(_dag("llm_batch_gemini_structured", tmp_path / "r", PROMPTS[:2], output_type=Copy))
    run = _run(dag)
    manifest = xcom_of(run, "describe")
    assert manifest["counts"]["succeeded"] == 2
    assert all(set(r["output"]) == {"headline", "words"} for r in _rows(manifest))


def test_expired_job_lands_every_row_as_expired(register_dag, gemini_conn, emulator, tmp_path):
    emulator.control.set_job_behaviour(final_state="EXPIRED")
    dag = register_dag(_dag("llm_batch_gemini_expired", tmp_path / "r"))
    run = _run(dag)
    assert run.state == "success"  # fail_on_partial_error=False: the manifest tells
    manifest = xcom_of(run, "describe")
    assert manifest["counts"]["expired"] == 5 and manifest["counts"]["missing"] == 0
    assert manifest["terminal_reason"] == "expired"
    assert len(emulator.control.jobs()) == 1


def test_failed_job_fails_the_task_and_a_rerun_submits_a_new_generation(
    register_dag, gemini_conn, emulator, tmp_path
):
    emulator.control.set_job_behaviour(final_state="FAILED", count=1)
    result_path = tmp_path / "r"
    dag = register_dag(_dag("llm_batch_gemini_failed", result_path))
    run = _run(dag)
    assert run.state == "failed" and _task_state(run) == "failed"
    assert _state_files(result_path) == []  # common-ai clears it: a FAILED job will never answer
    assert len(emulator.control.jobs()) == 1

    # A FAILED job is the one case where a new job is right (architecture invariant 3).
    again = _run(dag)
    assert again.state == "success"
    assert xcom_of(again, "describe")["counts"]["succeeded"] == 5
    assert [j["state"] for j in emulator.control.jobs()] == ["BATCH_STATE_FAILED", "BATCH_STATE_SUCCEEDED"]


def test_orphaned_create_is_found_by_display_name(register_dag, gemini_conn, emulator, tmp_path):
    """The create took effect but its reply was an error: the intent has no job name. The next run finds
    the job by the display name (key + fingerprint) and re-attaches instead of creating a second one."""
    emulator.control.inject_fault("batches.create", status=400, after=True)
    result_path = tmp_path / "r"
    dag = register_dag(_dag("llm_batch_gemini_orphan", result_path))
    first = _run(dag)
    assert first.state == "failed"
    (state_file,) = _state_files(result_path)
    assert json.loads(state_file.read_text())["batch_id"] is None  # phase A only
    (job,) = emulator.control.jobs()

    again = _run(dag)
    assert again.state == "success"
    manifest = xcom_of(again, "describe")
    assert manifest["batch_id"] == job["name"] and manifest["counts"]["succeeded"] == 5
    assert emulator.control.calls()["batches.create"] == 1
    assert len(emulator.control.jobs()) == 1
