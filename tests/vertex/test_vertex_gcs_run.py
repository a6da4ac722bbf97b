"""A SQLite source with the Vertex AI backend: shards written to a gs:// staging path, one batch prediction
job per shard reading it, predictions.jsonl read back from each job's output directory and loaded into a
SQLite table, in a real ``dag.test()`` against the emulator over the GCS emulator."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.vertex.gcs_predictions import convert_predictions, status_error
from airflow_gemini_batch.vertex.gcs_run import ROW_LABEL
from tests.reliability.helpers import outcome_counts, rows, ti_states
from tests.vertex.vertex_gcs_env import gcs_pipeline


def test_three_shards_on_gcs_give_one_row_per_key(
    vertex_gcs_emulator, gcs_conn, sqlite_warehouse, register_dag
):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 10)
    dag = gcs_pipeline(wh, gcs_conn, src, dst, max_requests_per_job=4)
    register_dag(dag)
    run = dag.test()

    assert ti_states(run) == {"submit": "success", "wait": "success", "load": "success"}
    jobs = vertex_gcs_emulator.control.jobs()
    assert len(jobs) == 3 and {j["state"] for j in jobs} == {"JOB_STATE_SUCCEEDED"}
    assert vertex_gcs_emulator.control.calls().get("batchPredictionJobs.create") == 3
    assert outcome_counts(wh, dst) == {"succeeded": 10}
    got = rows(wh, dst)
    assert sorted(got) == list(range(10)) and all(text for _, text, _ in got.values())


def test_predictions_map_back_by_label_in_any_order_and_status_is_parsed(tmp_path):
    keys = [b'"K-\xc3\xa9 long key ' + b"x" * 80 + b'"', b"17"]
    answer = {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}
    lines = [
        {"request": {"labels": {ROW_LABEL: "1"}}, "response": answer, "status": ""},
        {
            "request": {"labels": {ROW_LABEL: "0"}},
            "response": None,
            "status": 'Internal Server Error: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}',
        },
        {"request": {"labels": {}}, "response": answer, "status": ""},
    ]
    source = tmp_path / "p.jsonl"
    source.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "r.jsonl"
    with source.open("rb") as f, out.open("wb") as o:
        assert convert_predictions(f, keys, o) == 3
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert got[0] == {"key": 17, "response": answer}
    assert got[1] == {
        "key": orjson.loads(keys[0]),
        "error": {"code": 500, "message": "boom", "status": "INTERNAL"},
    }
    assert "key" not in got[2]  # no row label: no key (the load reports the line malformed, the key missing)
    assert status_error("Bad Request: not json") == {"message": "Bad Request: not json"}


def test_a_staging_path_that_is_not_gcs_is_refused_before_any_call(
    vertex_gcs_emulator, sqlite_warehouse, tmp_path
):
    from airflow_gemini_batch.exceptions import GeminiBatchInputError
    from tests.reliability.helpers import context, submit_op
    from tests.vertex.vertex_gcs_env import VERTEX_CONN_ID

    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, 3)
    op = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", tmp_path, gemini_conn_id=VERTEX_CONN_ID
    )
    with pytest.raises(GeminiBatchInputError, match=r"staging_path='gs://"):
        op.execute(context())
    assert vertex_gcs_emulator.control.jobs() == []
    assert not vertex_gcs_emulator.control.calls().get("batchPredictionJobs.create")
