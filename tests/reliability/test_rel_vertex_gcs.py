"""Vertex AI with gs:// in and out for a SQLite source (R88, R89): real ``dag.test()``, the real task runner's
clear, google-genai with ``vertexai=True`` against the emulator, ObjectStoragePath against the GCS emulator."""

from __future__ import annotations

from airflow_gemini_batch.vertex.gcs_run import ROW_LABEL
from tests.reliability.helpers import outcome_counts, rerun_task, rows, ti_states
from tests.vertex.vertex_gcs_env import gcs_pipeline


def test_R88_failed_vertex_job_then_clear_creates_exactly_one_new_job(
    vertex_gcs_emulator, gcs_conn, sqlite_warehouse, run_dag
):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 9)
    vertex_gcs_emulator.control.set_job_behaviour(
        "-00001", final_state="FAILED", count=1
    )  # shard 1's first job only
    dag = gcs_pipeline(wh, gcs_conn, src, dst, max_requests_per_job=3)
    run = run_dag(dag)
    assert ti_states(run)["wait"] == "failed"
    assert vertex_gcs_emulator.control.calls().get("batchPredictionJobs.create") == 3
    failed = [j for j in vertex_gcs_emulator.control.jobs() if j["state"] == "JOB_STATE_FAILED"]
    assert len(failed) == 1

    assert rerun_task(dag, run, "submit") == "success"  # a user's clear of the failed run
    assert rerun_task(dag, run, "wait") == "success"
    assert rerun_task(dag, run, "load") == "success"

    assert (
        vertex_gcs_emulator.control.calls().get("batchPredictionJobs.create") == 4
    )  # exactly one new job: shard 1's -r1
    jobs = vertex_gcs_emulator.control.jobs()
    assert len(jobs) == 4
    names = sorted(j["display_name"] for j in jobs)
    assert sum("-r1-00001" in n for n in names) == 1
    assert outcome_counts(wh, dst) == {"succeeded": 9}
    assert sorted(rows(wh, dst)) == list(range(9))


def test_R89_rows_vertex_failed_load_as_failed_with_its_error_every_key_once(
    vertex_gcs_emulator, gcs_conn, sqlite_warehouse, run_dag
):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 8)
    # Line 1 of each shard fails with a 400 row error (Vertex writes it into the row's status text).
    vertex_gcs_emulator.control.set_job_behaviour("*", fail_keys=["1"], fail_status=400, key_column=ROW_LABEL)
    load = {"max_failed_fraction": 0.5}  # the failures are the point: the load loads them and succeeds
    run = run_dag(gcs_pipeline(wh, gcs_conn, src, dst, load=load, max_requests_per_job=4))
    assert ti_states(run) == {"submit": "success", "wait": "success", "load": "success"}

    got = rows(wh, dst)
    assert sorted(got) == list(range(8))
    assert {k for k, (outcome, _, _) in got.items() if outcome == "failed"} == {1, 5}
    message = got[1][2]
    assert message and not message.startswith(("Bad Request", "{"))  # the parsed error message, not the text
    code = wh.query(f'SELECT error_code FROM {dst} WHERE "key" = 1')[0][0]
    assert int(code) == 400
    assert outcome_counts(wh, dst) == {"succeeded": 6, "failed": 2}
