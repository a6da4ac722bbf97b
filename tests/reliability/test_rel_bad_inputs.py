"""Reliability: bad input — dirty rows, oversized prompts, broken keys, SQL in identifiers, template syntax in
row text, and an input that would need thousands of jobs.

The rule under test: bad input is refused *before any paid API call* (the emulator's call counters stay at
zero), with an error that names the rows or the parameter and the fix; and row data is only ever data
(architecture invariant 8): it is never evaluated, neither as Jinja nor as a ``{placeholder}``, nor as SQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_gemini_batch.emulator.responder import expected_text
from airflow_gemini_batch.exceptions import GeminiBatchInputError
from tests.reliability.helpers import (
    StateStore,
    context,
    load_op,
    pipeline,
    rows,
    submit_op,
    ti_states,
    unique_dag_id,
)


def no_api_calls(emulator: Any) -> bool:
    return sum(emulator.control.calls().values()) == 0


def _table(wh: Any, data: list[tuple[Any, Any]]) -> str:
    table = wh.table("dirty")
    wh.execute(f"CREATE TABLE {table} (id INTEGER, prompt TEXT)")
    wh.execute(f"INSERT INTO {table} VALUES (?, ?)", data, many=True)
    return table


def _submit(wh: Any, table: str, tmp_path: Any, **kw: Any) -> Any:
    kw.setdefault("prompt_template", None)
    kw.setdefault("prompt_column", "prompt")
    return submit_op(wh.conn_id, f"SELECT id, prompt FROM {table} ORDER BY rowid", tmp_path / "st", **kw)


def test_R30_null_empty_and_whitespace_prompts_fail_the_dag_before_any_call(
    sqlite_warehouse, gemini_conn, emulator, run_dag, all_logs, tmp_path
):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "fine"), (2, None), (3, ""), (4, " \t\n "), (5, "fine too")])
    dag = pipeline(
        unique_dag_id("blank"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, prompt FROM {src}",
        destination_table=wh.table("dst"),
        staging=tmp_path / "staging",
        submit={"prompt_template": None, "prompt_column": "prompt"},
    )
    run = run_dag(dag)
    assert run.state == "failed"
    assert ti_states(run) == {"submit": "failed", "wait": "upstream_failed", "load": "upstream_failed"}
    text = all_logs.text
    assert "GeminiBatchInputError" in text and "3 input row(s) are invalid; nothing was submitted" in text
    assert 'prompt is NULL, empty or only whitespace; first keys: "2", "3", "4"' in text
    assert no_api_calls(emulator)


def test_R30_skip_mode_submits_the_good_rows_and_lists_the_blank_ones(
    sqlite_warehouse, gemini_conn, emulator, tmp_path
):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "fine"), (2, None), (3, ""), (4, "  "), (5, "fine too")])
    manifest = _submit(wh, src, tmp_path, on_invalid_row="skip").execute(context(StateStore()))
    assert manifest["request_count"] == 2 and manifest["skipped_count"] == 3
    (job,) = emulator.control.jobs()
    assert job["request_count"] == 2


def test_R31_non_utf8_bytes_are_refused_naming_the_row(sqlite_warehouse, gemini_conn, emulator, tmp_path):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "fine")])
    wh.execute(f"INSERT INTO {src} VALUES (2, CAST(x'66ff6f' AS TEXT))")  # 'f\xffo': not UTF-8
    with pytest.raises(GeminiBatchInputError) as e:
        _submit(wh, src, tmp_path).execute(context(StateStore()))
    assert "UTF-8" in str(e.value)
    assert no_api_calls(emulator)


def test_R32_a_prompt_over_the_per_request_limit(sqlite_warehouse, gemini_conn, emulator, tmp_path):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "short"), (2, "x" * 5000), (3, "short too")])
    with pytest.raises(GeminiBatchInputError) as e:
        _submit(wh, src, tmp_path, max_request_bytes=1000).execute(context(StateStore()))
    assert "request is over the per-request limit of 1,000 bytes" in str(e.value)
    assert 'first keys: "2"' in str(e.value)
    assert no_api_calls(emulator)


def test_R33_duplicate_and_null_keys(sqlite_warehouse, gemini_conn, emulator, tmp_path):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "a"), (None, "no key"), (2, "b"), (1, "a again"), (3, "c")])
    with pytest.raises(GeminiBatchInputError) as e:
        _submit(wh, src, tmp_path).execute(context(StateStore()))
    message = str(e.value)
    assert "key is missing or NULL" in message
    assert "key appears more than once" in message and '"1"' in message
    assert no_api_calls(emulator)


@pytest.mark.parametrize(
    "option",
    [
        {"destination_table": "results; DROP TABLE src"},
        {"destination_table": 'x"; DELETE FROM src; --'},
        {"errors_table": "errs WHERE 1=1"},
        {"key_column": 'key" TEXT); DROP TABLE src; --'},
        {"output_columns": {"score); DROP TABLE src; --": "REAL"}},
        {"output_columns": {"score": "REAL); DROP TABLE src; --"}},
        {"key_column_type": "TEXT PRIMARY KEY); DROP TABLE src; --"},
    ],
)
def test_R34_sql_in_destination_identifiers_is_refused_before_any_call(
    sqlite_warehouse, gemini_conn, emulator, tmp_path, option
):
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, 3)
    manifest = {"kind": "gemini_batch_manifest", "task": "generate", "shards": []}
    kw = {"destination_table": "results", **option}
    table = kw.pop("destination_table")
    with pytest.raises(GeminiBatchInputError, match=r"Invalid|not allowed"):
        load_op(wh.conn_id, table, manifest, **kw).execute(context(task_id="load"))
    assert no_api_calls(emulator)
    assert wh.query(f"SELECT COUNT(*) FROM {src}") == [(3,)]  # nothing was dropped or deleted


@pytest.mark.parametrize(
    ("option", "named"),
    [({"prompt_column": "nope"}, "nope"), ({"key_column": "sku"}, "sku")],
)
def test_R35_a_source_column_that_is_not_in_the_query(
    sqlite_warehouse, gemini_conn, emulator, tmp_path, option, named
):
    wh = sqlite_warehouse
    src = _table(wh, [(1, "a"), (2, "b")])
    with pytest.raises(GeminiBatchInputError) as e:
        _submit(wh, src, tmp_path, **option).execute(context(StateStore()))
    assert named in str(e.value) and "prompt" in str(e.value)  # names the missing and the available columns
    assert no_api_calls(emulator)


def test_R36_row_text_with_braces_and_jinja_stays_literal_end_to_end(
    sqlite_warehouse, gemini_conn, emulator, run_dag, tmp_path
):
    """Row values reach the model byte for byte: the emulator's answer echoes exactly what it received."""
    wh = sqlite_warehouse
    values = [
        "{x}",
        "{{ x }}",
        "{{ ds }}",
        "{{ conn.gemini_batch_default.password }}",
        "{% raw %}",
        "{0.__class__}",
        "{name}",
    ]
    src = wh.table("braces")
    wh.execute(f"CREATE TABLE {src} (id INTEGER, name TEXT, category TEXT)")
    wh.execute(f"INSERT INTO {src} VALUES (?, ?, ?)", [(i, v, "c") for i, v in enumerate(values)], many=True)
    dst = wh.table("dst")
    dag = pipeline(
        unique_dag_id("braces"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        submit={"prompt_template": "Say {name} for {category} on {{ ds }}."},
    )
    run = run_dag(dag)
    assert run.state == "success"
    ds = run.logical_date.strftime("%Y-%m-%d")  # the DAG author's Jinja renders; the rows' does not
    got = rows(wh, dst)
    for i, value in enumerate(values):
        prompt = f"Say {value} for c on {ds}."
        request = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        assert got[i] == ("succeeded", expected_text(request), None), (i, got[i])
        assert got[i][1] == f"echo: {prompt}"


def test_R37_thousands_of_shards_are_refused_before_any_upload(
    sqlite_warehouse, gemini_conn, emulator, tmp_path
):
    wh = sqlite_warehouse
    src = wh.table("huge")
    wh.create_prompts_table(src, 20_000)
    op = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", tmp_path / "st", max_requests_per_job=2
    )
    with pytest.raises(GeminiBatchInputError) as e:
        op.execute(context(StateStore()))
    message = str(e.value)
    assert "needs more than max_jobs=100 batch jobs" in message and "Nothing was uploaded" in message
    assert no_api_calls(emulator)
    # It stopped at the limit instead of writing 10 000 shard files first.
    assert len(list((tmp_path / "st").glob("shard-*.jsonl"))) <= 101
