"""GeminiBatchLoadResultsOperator end to end: real SDK over HTTP against the emulator, real SQLite / PostgreSQL.

Manifests are built here (upload, create, key list files) so these tests do not depend on the submit operator.
The operator runs through ``execute()`` with a small XCom recorder as its context, plus one real ``dag.test()``.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from airflow_gemini_batch.emulator.responder import expected_embedding, expected_text, usage_for
from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchInputError, GeminiBatchResultsError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.manifest import MANIFEST_KIND, RESULTS_SUMMARY_KIND, RESULTS_SUMMARY_XCOM_KEY
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from tests.conftest import write_dag_to_db as register_dag

MODEL = "gemini-2.5-flash"
SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["sentiment", "score"],
}


# ---- building manifests against the emulator ----------------------------------------------------------------


def request_for(text: str, **extra: Any) -> dict[str, Any]:
    return {"contents": [{"parts": [{"text": text}], "role": "user"}], **extra}


def create_shard(
    hook: GeminiBatchHook,
    work: Path,
    index: int,
    items: list[tuple[Any, dict[str, Any]]],
    *,
    model: str = MODEL,
    inline: bool = False,
    embed: bool = False,
    display_name: str | None = None,
) -> dict[str, Any]:
    """Upload (or inline) ``(key, request)`` items, create the job, write the key list; return the ShardInfo."""
    work.mkdir(parents=True, exist_ok=True)
    display_name = display_name or f"results-test-{index}"
    if inline:
        requests = [{**req, "metadata": {"key": str(key)}} for key, req in items]
        job = hook.create_job(model=model, display_name=display_name, inline_requests=requests)
    else:
        path = work / f"input-{index}.jsonl"
        path.write_bytes(b"".join(orjson.dumps({"key": k, "request": r}) + b"\n" for k, r in items))
        file_name = hook.upload_jsonl(path, display_name=f"{display_name}-input")
        job = hook.create_job(model=model, display_name=display_name, file_name=file_name, embeddings=embed)
    keys_path = work / f"keys-{index}.jsonl"
    keys_path.write_bytes(b"".join(orjson.dumps(k) + b"\n" for k, _ in items))
    return {
        "index": index,
        "display_name": display_name,
        "job_name": job.name,
        "inline": inline,
        "request_count": len(items),
        "keys_path": str(keys_path),
    }


def wait_jobs(hook: GeminiBatchHook, shards: list[dict[str, Any]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for shard in shards:
        while True:
            status = hook.get_job(shard["job_name"])
            if status.output_ready or (status.done and status.state != "SUCCEEDED"):
                break
            assert time.monotonic() < deadline, f"{shard['job_name']} still {status.state}"
            time.sleep(0.05)


def make_manifest(shards: list[dict[str, Any]], work: Path, **kw: Any) -> dict[str, Any]:
    return {
        "kind": MANIFEST_KIND,
        "version": 1,
        "gemini_conn_id": "gemini_batch_default",
        "task": "generate",
        "model": MODEL,
        "response_schema": None,
        "staging_path": str(work),
        "shards": shards,
        "request_count": sum(s["request_count"] for s in shards),
        "skipped_count": 0,
        **kw,
    }


class XComRecorder:
    """The one part of a task instance the operator touches: ``xcom_push``."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = json.loads(json.dumps(value))  # what XCom would store: JSON


def run(op: GeminiBatchLoadResultsOperator) -> tuple[dict[str, Any], XComRecorder]:
    ti = XComRecorder()
    summary = op.execute(context={"ti": ti})  # type: ignore[arg-type]
    return summary, ti


def loader(wh: Any, table: str, manifest: dict[str, Any], **kw: Any) -> GeminiBatchLoadResultsOperator:
    return GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=manifest,
        destination_conn_id=wh.conn_id,
        destination_table=table,
        **kw,
    )


def rows_by_key(wh: Any, table: str, columns: str = "outcome, text, error_message") -> dict[Any, tuple]:
    return {r[0]: r[1:] for r in wh.query(f'SELECT "key", {columns} FROM {table}')}


def prompts(n: int, fail: set[int] = frozenset()) -> list[tuple[int, dict[str, Any]]]:
    return [(i, request_for(f"product {i}" + (" PLEASE_FAIL" if i in fail else ""))) for i in range(n)]


# ---- tests --------------------------------------------------------------------------------------------------


def test_outcomes_add_up_and_a_rerun_leaves_one_row_per_key(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.set_job_behaviour(match="results-test-1", fail_keys=["25"])
    items = prompts(40, fail={3, 7})
    shards = [create_shard(hook, tmp_path, 0, items[:20]), create_shard(hook, tmp_path, 1, items[20:])]
    wait_jobs(hook, shards)
    manifest = make_manifest(shards, tmp_path, skipped_count=2)
    table = warehouse.table("answers")

    op = loader(warehouse, table, manifest, key_column_type="INTEGER", max_failed_fraction=0.2)
    summary, ti = run(op)

    assert summary["kind"] == RESULTS_SUMMARY_KIND and summary["status"] == "ok"
    assert summary["counts"] == {"succeeded": 37, "failed": 3, "invalid_output": 0, "missing": 0, "reused": 0}
    assert sum(summary["counts"].values()) == manifest["request_count"] == 40
    assert summary["skipped_count"] == 2
    assert [j["counts"]["failed"] for j in summary["jobs"]] == [2, 1]
    assert ti.pushed[RESULTS_SUMMARY_XCOM_KEY] == json.loads(json.dumps(summary))

    rows = rows_by_key(warehouse, table)
    assert set(rows) == set(range(40)) and all(isinstance(k, int) for k in rows)
    for key, request in items:
        outcome, text, error = rows[key]
        if key in (3, 7):
            assert outcome == "failed" and "PLEASE_FAIL" in error
        elif key == 25:
            assert outcome == "failed" and "injected row failure" in error
        else:
            assert (outcome, text, error) == ("succeeded", expected_text(request), None)
    errors = warehouse.query(
        f'SELECT "key", outcome, error_code, job_name FROM {table}_errors ORDER BY "key"'
    )
    assert [(k, o, c) for k, o, c, _ in errors] == [
        (3, "failed", 400),
        (7, "failed", 400),
        (25, "failed", 500),
    ]
    assert errors[2][3] == shards[1]["job_name"]

    summary2, _ = run(loader(warehouse, table, manifest, key_column_type="INTEGER", max_failed_fraction=0.2))
    assert summary2["counts"] == summary["counts"]
    assert warehouse.query(f'SELECT COUNT(*), COUNT(DISTINCT "key") FROM {table}') == [(40, 40)]
    assert warehouse.query(f"SELECT COUNT(*) FROM {table}_errors") == [(3,)]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("malformed", {"malformed_lines": 1, "missing": [0]}),
        ("truncate", {"malformed_lines": 1, "missing": [9]}),
        ("drop_key", {"malformed_lines": 0, "missing": [0]}),
        ("unknown_key", {"malformed_lines": 0, "missing": [], "unknown_keys": 1}),
        ("duplicate_key", {"malformed_lines": 0, "missing": [], "duplicate_keys": 1}),
    ],
)
def test_corrupt_output_is_reported_and_the_rest_loads(
    gemini_conn, emulator, warehouse, tmp_path, mode, expected
):
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.set_job_behaviour(corrupt_output=mode)
    items = prompts(10)
    shards = [create_shard(hook, tmp_path, 0, items)]
    wait_jobs(hook, shards)
    table = warehouse.table("corrupt")

    summary, _ = run(loader(warehouse, table, make_manifest(shards, tmp_path), max_failed_fraction=1.0))

    missing = expected["missing"]
    assert summary["counts"] == {
        "succeeded": 10 - len(missing),
        "failed": 0,
        "invalid_output": 0,
        "missing": len(missing),
        "reused": 0,
    }
    assert summary["malformed_lines"] == expected["malformed_lines"]
    assert summary["unknown_keys"] == expected.get("unknown_keys", 0)
    assert summary["duplicate_keys"] == expected.get("duplicate_keys", 0)
    if mode == "truncate":
        assert summary["jobs"][0]["truncated"] is True and summary["jobs"][0]["malformed_line_numbers"] == [
            10
        ]
    if mode == "unknown_key":
        assert summary["unknown_key_examples"] == ["__emulator_unknown_key__"]
    rows = rows_by_key(warehouse, table)
    assert len(rows) == 10  # unknown keys are never loaded, duplicates once
    assert sorted(int(k) for k, (o, _, _) in rows.items() if o == "missing") == missing
    assert sorted(int(k) for (k,) in warehouse.query(f'SELECT "key" FROM {table}_errors')) == missing


def test_inline_responses(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    items = [(f"row-{i}", request_for(f"inline {i}" + (" PLEASE_FAIL" if i == 2 else ""))) for i in range(6)]
    shards = [create_shard(hook, tmp_path, 0, items, inline=True)]
    wait_jobs(hook, shards)
    table = warehouse.table("inline")

    summary, _ = run(loader(warehouse, table, make_manifest(shards, tmp_path), max_failed_fraction=0.5))

    assert summary["counts"] == {"succeeded": 5, "failed": 1, "invalid_output": 0, "missing": 0, "reused": 0}
    rows = rows_by_key(warehouse, table)
    assert rows["row-2"][0] == "failed"
    assert rows["row-4"] == ("succeeded", expected_text(items[4][1]), None)


def test_int_keys_come_back_as_ints_from_inline_string_metadata(
    gemini_conn, emulator, sqlite_warehouse, tmp_path
):
    hook = GeminiBatchHook(gemini_conn)
    shards = [create_shard(hook, tmp_path, 0, prompts(4), inline=True)]
    wait_jobs(hook, shards)
    table = sqlite_warehouse.table("intkeys")
    run(loader(sqlite_warehouse, table, make_manifest(shards, tmp_path), key_column_type="INTEGER"))
    assert sqlite_warehouse.query(f'SELECT "key", typeof("key") FROM {table} ORDER BY 1') == [
        (i, "integer") for i in range(4)
    ]


def test_structured_output_into_typed_columns(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    config = {"generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}}
    items = [(i, request_for(f"review {i}", **config)) for i in range(8)]
    shards = [create_shard(hook, tmp_path, 0, items)]
    wait_jobs(hook, shards)
    table = warehouse.table("structured")

    summary, _ = run(
        loader(
            warehouse,
            table,
            make_manifest(shards, tmp_path, response_schema=SCHEMA),
            key_column_type="INTEGER",
            output_columns={"sentiment": "TEXT", "score": "REAL"},
        )
    )

    assert summary["counts"]["succeeded"] == 8
    got = {
        k: (s, sc, j)
        for k, s, sc, j in warehouse.query(f'SELECT "key", sentiment, score, json_value FROM {table}')
    }
    for key, request in items:
        value = json.loads(expected_text(request))
        sentiment, score, json_value = got[key]
        assert sentiment == value["sentiment"] and math.isclose(score, value["score"], rel_tol=1e-6)
        assert (json_value if isinstance(json_value, dict) else json.loads(json_value)) == value


def test_invalid_output(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    config = {"generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}}
    # Key 0 answers plain text (not JSON); keys 1-3 answer JSON that a stricter schema rejects (score > 1).
    items = [(0, request_for("plain text answer"))] + [
        (i, request_for(f"review {i}", **config)) for i in (1, 2, 3)
    ]
    shards = [create_shard(hook, tmp_path, 0, items)]
    wait_jobs(hook, shards)
    strict = {**SCHEMA, "properties": {**SCHEMA["properties"], "score": {"type": "number", "minimum": 5}}}
    table = warehouse.table("invalid")

    summary, _ = run(
        loader(
            warehouse,
            table,
            make_manifest(shards, tmp_path, response_schema=strict),
            key_column_type="INTEGER",
            max_failed_fraction=1,
        )
    )

    assert summary["counts"] == {"succeeded": 0, "failed": 0, "invalid_output": 4, "missing": 0, "reused": 0}
    rows = rows_by_key(warehouse, table)
    assert rows[0][2].startswith("output is not valid JSON")
    assert "does not match the response schema at score" in rows[1][2]
    assert rows[1][1] == expected_text(items[1][1])  # the answer is kept for inspection


def test_max_failed_fraction_fails_after_loading(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    shards = [create_shard(hook, tmp_path, 0, prompts(10, fail={4, 8}))]
    wait_jobs(hook, shards)
    table = warehouse.table("strict")

    with pytest.raises(GeminiBatchResultsError) as err:
        run(
            loader(
                warehouse,
                table,
                make_manifest(shards, tmp_path),
                key_column_type="INTEGER",
                max_failed_fraction=0.1,
            )
        )
    message = str(err.value)
    assert "2 of 10 keys did not succeed (2 failed, 0 invalid_output, 0 missing)" in message
    assert "First keys: [4, 8]" in message and f"{table}_errors" in message
    assert warehouse.query(f"SELECT outcome, COUNT(*) FROM {table} GROUP BY outcome ORDER BY 1") == [
        ("failed", 2),
        ("succeeded", 8),
    ]
    summary, _ = run(
        loader(
            warehouse,
            table,
            make_manifest(shards, tmp_path),
            key_column_type="INTEGER",
            max_failed_fraction=0.2,
        )
    )
    assert summary["status"] == "ok"


def test_cost_matches_tokens_times_price(gemini_conn, emulator, sqlite_warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    items = prompts(12)
    shards = [create_shard(hook, tmp_path, 0, items)]
    wait_jobs(hook, shards)
    usage = [usage_for(req, expected_text(req)) for _, req in items]
    prompt = sum(u["promptTokenCount"] for u in usage)
    output = sum(u["candidatesTokenCount"] for u in usage)
    manifest = make_manifest(shards, tmp_path)

    summary, _ = run(loader(sqlite_warehouse, sqlite_warehouse.table("cost"), manifest))

    assert summary["tokens"] == {
        "prompt": prompt,
        "output": output,
        "thinking": 0,
        "cached": 0,
        "total": prompt + output,
    }
    cost = summary["cost"]
    assert math.isclose(cost["standard"], (prompt * 0.30 + output * 2.50) / 1e6, abs_tol=1e-6)
    assert math.isclose(cost["batch"], (prompt * 0.15 + output * 1.25) / 1e6, abs_tol=1e-6)
    assert cost["prices_as_of"] and cost["currency"] == "USD"
    stored = sqlite_warehouse.query(
        f"SELECT SUM(prompt_tokens), SUM(output_tokens) FROM {summary['destination']['table']}"
    )
    assert stored == [(prompt, output)]

    overridden, _ = run(
        loader(sqlite_warehouse, sqlite_warehouse.table("cost2"), {**manifest, "model": "my-model"},
               prices={"my-model": {"input": 1.0, "output": 2.0}})
    )  # fmt: skip
    assert math.isclose(overridden["cost"]["standard"], (prompt + 2 * output) / 1e6, abs_tol=1e-9)
    unknown, _ = run(
        loader(sqlite_warehouse, sqlite_warehouse.table("cost3"), {**manifest, "model": "nope-1"})
    )
    assert unknown["cost"]["batch"] is None and unknown["status"] == "ok"
    assert [j["cost"]["batch"] for j in unknown["jobs"]] == [None]


def test_tokens_and_cost_per_job_add_up_to_the_task(gemini_conn, emulator, sqlite_warehouse, tmp_path):
    """Three jobs (one with failing lines, one EXPIRED): each job's tokens are its own lines' usage, its cost
    is ``compute_cost`` of them (same model and overrides as the task), and the task's tokens are their sum."""
    from airflow_gemini_batch.cost.pricing import compute_cost

    hook = GeminiBatchHook(gemini_conn)
    emulator.control.set_job_behaviour(match="results-test-2", final_state="EXPIRED")
    items = prompts(15, fail={3, 7})
    parts = [items[:4], items[4:11], items[11:]]
    shards = [create_shard(hook, tmp_path, i, part) for i, part in enumerate(parts)]
    wait_jobs(hook, shards)
    prices = {MODEL: {"output": 3.0}}  # a partial override: merged over the built-in entry, for every job

    summary, _ = run(
        loader(sqlite_warehouse, sqlite_warehouse.table("perjob"), make_manifest(shards, tmp_path),
               max_failed_fraction=0.5, prices=prices)
    )  # fmt: skip

    jobs = summary["jobs"]
    assert [j["job_name"] for j in jobs] == [s["job_name"] for s in shards]
    for job, part in zip(jobs[:2], parts[:2], strict=True):
        # Failed lines (PLEASE_FAIL) carry no usage; every succeeded line's usage counts.
        usage = [usage_for(req, expected_text(req)) for key, req in part if key not in {3, 7}]
        prompt = sum(u["promptTokenCount"] for u in usage)
        output = sum(u["candidatesTokenCount"] for u in usage)
        assert job["tokens"] == {"prompt": prompt, "output": output, "thinking": 0, "cached": 0,
                                 "total": prompt + output}  # fmt: skip
    assert jobs[2]["state"] == "EXPIRED" and jobs[2]["tokens"] == dict.fromkeys(jobs[2]["tokens"], 0)
    assert jobs[2]["cost"]["batch"] == 0.0
    assert summary["tokens"] == {k: sum(j["tokens"][k] for j in jobs) for k in summary["tokens"]}
    assert all(j["tokens"]["total"] > 0 for j in jobs[:2])
    for job in jobs:
        assert job["cost"] == compute_cost(MODEL, job["tokens"], overrides=prices)
        assert job["cost"]["price"]["output"] == 3.0
    assert summary["cost"] == compute_cost(MODEL, summary["tokens"], overrides=prices)
    for k in ("batch", "standard", "savings"):
        # Per-job amounts are rounded to 6 decimals each, so they add up to the task's up to that rounding.
        assert math.isclose(sum(j["cost"][k] for j in jobs), summary["cost"][k], abs_tol=len(jobs) * 1e-6)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_object_storage_outputs(gemini_conn, emulator, tmp_path, fmt):
    hook = GeminiBatchHook(gemini_conn)
    items = prompts(7, fail={5})
    shards = [create_shard(hook, tmp_path / "staging", 0, items)]
    wait_jobs(hook, shards)
    dest = tmp_path / "out"
    op = GeminiBatchLoadResultsOperator(
        task_id="to_files", manifest=make_manifest(shards, tmp_path), destination_path=f"file://{dest}",
        output_format=fmt, key_column_type="INTEGER", max_failed_fraction=0.5,
    )  # fmt: skip
    summary, _ = run(op)

    if fmt == "jsonl":
        rows = [orjson.loads(line) for line in (dest / "results.jsonl").read_bytes().splitlines()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(dest / "results.parquet").to_pylist()
    assert len(rows) == 7 and summary["counts"]["succeeded"] == 6
    by_key = {r["key"]: r for r in rows}
    assert by_key[1]["text"] == expected_text(items[1][1]) and by_key[1]["outcome"] == "succeeded"
    assert by_key[5]["outcome"] == "failed"
    errors = [orjson.loads(line) for line in (dest / "errors.jsonl").read_bytes().splitlines()]
    assert [(e["key"], e["outcome"]) for e in errors] == [(5, "failed")]
    assert summary["destination"]["path"].endswith(f"results.{fmt}")


def test_embeddings_land_as_vectors(gemini_conn, emulator, warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    texts = {f"doc-{i}": f"document number {i}" for i in range(5)}
    items = [(k, {"content": {"parts": [{"text": t}]}, "outputDimensionality": 8}) for k, t in texts.items()]
    shards = [create_shard(hook, tmp_path, 0, items, model="gemini-embedding-001", embed=True)]
    wait_jobs(hook, shards)
    table = warehouse.table("vectors")
    manifest = make_manifest(shards, tmp_path, task="embed", model="gemini-embedding-001")

    summary, _ = run(loader(warehouse, table, manifest))

    assert summary["counts"]["succeeded"] == 5
    for key, vector in warehouse.query(f'SELECT "key", embedding FROM {table}'):
        if warehouse.kind == "sqlite":
            vector = json.loads(vector)  # JSON text on SQLite
        else:
            assert isinstance(vector, list)  # DOUBLE PRECISION[] on PostgreSQL
        expected = expected_embedding(texts[key], 8)
        assert len(vector) == 8 and all(
            math.isclose(a, b, rel_tol=1e-9) for a, b in zip(vector, expected, strict=True)
        )


def test_jobs_that_did_not_succeed_fail_all_their_keys(gemini_conn, emulator, sqlite_warehouse, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.set_job_behaviour(match="results-test-1", final_state="EXPIRED")
    shards = [create_shard(hook, tmp_path, 0, prompts(3)), create_shard(hook, tmp_path, 1, prompts(6)[3:])]
    wait_jobs(hook, shards)
    table = sqlite_warehouse.table("expired")

    summary, _ = run(
        loader(sqlite_warehouse, table, make_manifest(shards, tmp_path), max_failed_fraction=0.5)
    )

    assert summary["counts"] == {"succeeded": 3, "failed": 3, "invalid_output": 0, "missing": 0, "reused": 0}
    assert [j["state"] for j in summary["jobs"]] == ["SUCCEEDED", "EXPIRED"]
    failed = sqlite_warehouse.query(f"SELECT error_code, error_message FROM {table} WHERE outcome = 'failed'")
    assert len(failed) == 3 and all(m.startswith("job EXPIRED: Batch expired") for _, m in failed)


def test_an_unfinished_job_is_not_loaded(gemini_conn, emulator, sqlite_warehouse, tmp_path):
    """A job still PENDING/RUNNING must not have its keys recorded as failed (its paid answers would be lost)."""
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.hold_state("PENDING")  # until the test ends
    shards = [create_shard(hook, tmp_path, 0, prompts(3))]
    table = sqlite_warehouse.table("unfinished")

    with pytest.raises(GeminiBatchError, match=r"is PENDING, not finished"):
        run(loader(sqlite_warehouse, table, make_manifest(shards, tmp_path), max_failed_fraction=1.0))
    assert sqlite_warehouse.query(f"SELECT COUNT(*) FROM {table}") == [(0,)]


@pytest.mark.parametrize("bad", ["results; DROP TABLE x", 'results"--', "a.b.c", "1table", "main.t x"])
def test_a_table_name_carrying_sql_is_refused(gemini_conn, emulator, sqlite_warehouse, tmp_path, bad):
    manifest = make_manifest([], tmp_path)
    with pytest.raises(GeminiBatchInputError, match="Invalid table name"):
        run(loader(sqlite_warehouse, bad, manifest))
    assert emulator.control.calls().get("batches.get", 0) == 0


def test_bad_output_column_type_is_refused(sqlite_warehouse, tmp_path):
    op = loader(
        sqlite_warehouse, "ok_table", make_manifest([], tmp_path), output_columns={"x": "TEXT); DROP"}
    )
    with pytest.raises(GeminiBatchInputError, match="not allowed on sqlite"):
        run(op)


def xcoms(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == task_id
            )
        ).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def test_dag_test_end_to_end(airflow_db, gemini_conn, emulator, sqlite_warehouse, tmp_path):
    from airflow.sdk import DAG, task

    table = sqlite_warehouse.table("dag_results")

    with DAG(dag_id="gemini_results_e2e", schedule=None, start_date=datetime(2025, 1, 1)) as dag:

        @task
        def submit() -> dict[str, Any]:
            hook = GeminiBatchHook()
            shard = create_shard(hook, tmp_path, 0, prompts(5, fail={2}))
            wait_jobs(hook, [shard])
            return make_manifest([shard], tmp_path)

        GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit(),
            destination_conn_id=sqlite_warehouse.conn_id,
            destination_table=table,
            key_column_type="INTEGER",
            max_failed_fraction=0.25,
        )

    register_dag(dag)
    dag_run = dag.test()

    assert dag_run.state == "success"
    values = xcoms(dag.dag_id, dag_run.run_id, "load")
    summary = values["return_value"]
    assert values[RESULTS_SUMMARY_XCOM_KEY] == summary
    assert summary["kind"] == RESULTS_SUMMARY_KIND
    assert summary["counts"] == {"succeeded": 4, "failed": 1, "invalid_output": 0, "missing": 0, "reused": 0}
    assert sqlite_warehouse.query(f"SELECT \"key\", outcome FROM {table} WHERE outcome != 'succeeded'") == [
        (2, "failed")
    ]
    assert sqlite_warehouse.query(f"SELECT COUNT(*) FROM {table}") == [(5,)]
    assert len(emulator.control.jobs()) == 1


def test_load_totals_count_column_wise_like_row_by_row():
    """LoadTotals.add sums whole chunks column-wise; the rule stays the per-row one: every outcome counted,
    tokens only from rows that report a total, the first failed keys in order."""
    from airflow_gemini_batch.results.loading import LoadTotals
    from airflow_gemini_batch.results.parsing import OUTCOMES, ResultRow, ShardReport

    rows = []
    for i in range(2_000):
        outcome = OUTCOMES[0] if i % 7 else OUTCOMES[1 + i % 3]
        total = None if i % 11 == 0 else i % 50
        rows.append(ResultRow(i, outcome, prompt_tokens=i % 5 or None, output_tokens=3, thinking_tokens=None,
                              cached_tokens=i % 2, total_tokens=total))  # fmt: skip
    totals, report = LoadTotals(), ShardReport(job_name="j")
    for start in range(0, len(rows), 300):
        totals.add(rows[start : start + 300], report)
    with_total = [r for r in rows if r.total_tokens is not None]
    assert totals.counts == {o: sum(r.outcome == o for r in rows) for o in OUTCOMES} == report.counts
    assert totals.tokens == {
        "prompt": sum(r.prompt_tokens or 0 for r in with_total),
        "output": sum(r.output_tokens for r in with_total),
        "thinking": 0,
        "cached": sum(r.cached_tokens for r in with_total),
        "total": sum(r.total_tokens for r in with_total),
    }
    assert totals.first_failed_keys == [r.key for r in rows if r.outcome != OUTCOMES[0]][:10]
    assert totals.rows == 2_000
    assert report.tokens == totals.tokens  # one report: its tokens are the task's
    # Two reports: each gets its own chunks' sums, and together they are the task's.
    totals, first, second = LoadTotals(), ShardReport(job_name="a"), ShardReport(job_name="b")
    for start in range(0, len(rows), 300):
        totals.add(rows[start : start + 300], first if start < 900 else second)
    head = [r for r in rows[:900] if r.total_tokens is not None]
    assert first.tokens["total"] == sum(r.total_tokens for r in head)
    assert first.tokens["prompt"] == sum(r.prompt_tokens or 0 for r in head)
    assert {k: first.tokens[k] + second.tokens[k] for k in totals.tokens} == totals.tokens
    with pytest.raises(ValueError, match="unknown outcome"):
        totals.add([ResultRow(1, "weird")], report)
