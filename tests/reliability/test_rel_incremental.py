"""Incremental runs (R63-R65): what is sent again, and how the counts still add up.

Each run is a submit (``incremental=True``) → the jobs' end → a load into the same table, on a new run id, the
way consecutive DAG runs (dates) are: real SQLite / PostgreSQL, the real SDK against the emulator. The emulator's
counts of ``batches.create`` and uploads say what was paid for; the destination says what each key holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchResultsError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.polling import wait_until
from tests.reliability.helpers import RunTI, StateStore, load_op, submit_op

if TYPE_CHECKING:
    from pathlib import Path

N = 40


def _ctx(run_id: str, task_id: str) -> dict[str, Any]:
    return {"ti": RunTI(task_id, run_id=run_id), "task_state_store": StateStore()}


def _wait_done(manifest: dict[str, Any]) -> None:
    """Until each job's output is visible (the emulator's lifecycle is instant; this only reads)."""
    hook = GeminiBatchHook()
    for shard in manifest["shards"]:

        def settled(name: str = shard["job_name"]) -> bool:
            status = hook.get_job(name)
            return status.output_ready or (status.done and status.state != "SUCCEEDED")

        wait_until(settled, what=f"{shard['job_name']} settled")


def run_once(
    wh: Any, source: str, dest: str, tmp_path: Path, run_id: str, **submit: Any
) -> tuple[dict, dict]:
    """One DAG run's submit → wait → load, with ``incremental=True`` against ``dest``; (manifest, summary)."""
    submit.setdefault("incremental", True)
    op = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {source} ORDER BY id", tmp_path / run_id,
        destination_conn_id=wh.conn_id, destination_table=dest, **submit,
    )  # fmt: skip
    manifest = op.execute(_ctx(run_id, "submit"))
    manifest = orjson.loads(orjson.dumps(manifest))
    sensor = GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05)
    _wait_done(manifest)
    sensor.execute(_ctx(run_id, "wait"))
    summary = load_op(wh.conn_id, dest, manifest).execute(_ctx(run_id, "load"))
    return manifest, summary


def _sent_keys(manifest: dict[str, Any]) -> list[int]:
    from airflow.sdk import ObjectStoragePath

    return sorted(
        int(orjson.loads(k))
        for s in manifest["shards"]
        for k in ObjectStoragePath(s["keys_path"]).read_bytes().splitlines()
    )


def _creates(emulator: Any) -> tuple[int, int]:
    calls = emulator.control.calls()
    return calls.get("batches.create", 0), calls.get("files.upload_start", 0)


def _stored(wh: Any, dest: str) -> dict[int, tuple]:
    return {
        r[0]: r[1:]
        for r in wh.query(f'SELECT "key", outcome, text, loaded_at, request_fingerprint FROM {dest}')
    }


def test_R63_a_changed_prompt_resends_exactly_the_changed_rows(warehouse, gemini_conn, emulator, tmp_path):
    source, dest = warehouse.table("products"), warehouse.table("answers")
    warehouse.create_prompts_table(source, N)
    first, summary = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-01")
    assert first["reused"] == 0 and first["request_count"] == N and summary["counts"]["succeeded"] == N
    assert _creates(emulator) == (1, 1)
    before = _stored(warehouse, dest)
    assert all(len(fp) == 64 for _, _, _, fp in before.values())

    # Unchanged table, next date: nothing is sent, no job, no upload; the rows stay as they are.
    second, summary = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-02")
    assert second["shards"] == [] and second["request_count"] == 0 and second["reused"] == N
    assert second["reused_cost_usd"] > 0
    assert _creates(emulator) == (1, 1)
    assert summary["counts"] == {"succeeded": 0, "failed": 0, "invalid_output": 0, "missing": 0, "reused": N}
    assert _stored(warehouse, dest) == before

    # Three prompts change: exactly those three are sent, in one new job; the other rows are untouched.
    warehouse.execute(f"UPDATE {source} SET name = 'renamed ' || name WHERE id IN (3, 17, 31)")
    third, summary = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-03")
    assert _sent_keys(third) == [3, 17, 31] and third["reused"] == N - 3
    assert _creates(emulator) == (2, 2)
    assert summary["counts"]["succeeded"] == 3 and summary["counts"]["reused"] == N - 3
    after = _stored(warehouse, dest)
    assert {k for k in after if after[k] != before[k]} == {3, 17, 31}
    assert "renamed product 17" in after[17][1]

    # A changed job-wide config (or model) changes every fingerprint: every row is sent once more.
    fourth, _ = run_once(
        warehouse, source, dest, tmp_path, "scheduled__2026-01-04", generation_config={"temperature": 0.1}
    )
    assert fourth["request_count"] == N and fourth["reused"] == 0


def test_R64_a_destination_row_that_failed_is_resent(warehouse, gemini_conn, emulator, tmp_path):
    source, dest = warehouse.table("products"), warehouse.table("answers")
    warehouse.create_prompts_table(source, N)
    emulator.control.set_job_behaviour(fail_keys=["5", "6"], count=1)
    with pytest.raises(GeminiBatchResultsError, match="2 of 40 keys did not succeed"):
        run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-01")  # loaded, then failed
    failed = warehouse.query(f"SELECT \"key\" FROM {dest} WHERE outcome = 'failed' ORDER BY 1")
    assert failed == [(5,), (6,)]

    second, summary = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-02")
    assert _sent_keys(second) == [5, 6] and second["reused"] == N - 2
    assert summary["counts"]["succeeded"] == 2
    assert warehouse.query(f"SELECT COUNT(*) FROM {dest} WHERE outcome = 'succeeded'") == [(N,)]
    assert warehouse.query(f"SELECT COUNT(*) FROM {dest}_errors") == [(0,)]


def test_R65_reused_is_an_outcome_and_the_counts_add_up(warehouse, gemini_conn, emulator, tmp_path):
    source, dest = warehouse.table("products"), warehouse.table("answers")
    warehouse.create_prompts_table(source, N)
    run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-01")
    warehouse.execute(f"INSERT INTO {source} VALUES (100, 'new product', 'tools')")
    warehouse.execute(f"UPDATE {source} SET category = 'kitchen' WHERE id = 1")
    manifest, summary = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-02")
    counts = summary["counts"]
    assert counts == {"succeeded": 2, "failed": 0, "invalid_output": 0, "missing": 0, "reused": N - 1}
    assert sum(counts.values()) == N + 1 == manifest["request_count"] + manifest["reused"]
    assert (
        summary["reused"] == manifest["reused"] and summary["reused_cost_usd"] == manifest["reused_cost_usd"]
    )
    assert warehouse.query(f'SELECT COUNT(*), COUNT(DISTINCT "key") FROM {dest}') == [(N + 1, N + 1)]
    # Without incremental, a re-run sends every row (the default: fresh answers on request).
    full, _ = run_once(warehouse, source, dest, tmp_path, "scheduled__2026-01-03", incremental=False)
    assert full["request_count"] == N + 1 and full["reused"] == 0
