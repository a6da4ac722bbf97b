"""Sinks on real SQLite and PostgreSQL (and local object storage): DDL, upsert on key, errors table, validation."""

from __future__ import annotations

import json

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results import FAILED, MISSING, SUCCEEDED, ResultRow
from airflow_gemini_batch.sinks import (
    ObjectStorageSink,
    PostgresTableSink,
    TableLayout,
    TableSink,
    table_sink,
)


def ok(key, text="t", **kw) -> ResultRow:
    return ResultRow(
        key, SUCCEEDED, text, prompt_tokens=1, output_tokens=2, total_tokens=3, job_name="batches/1", **kw
    )


def bad(key, outcome=FAILED) -> ResultRow:
    return ResultRow(key, outcome, error_code=500, error_message=f"no {key}", job_name="batches/1")


def load(sink, *chunks) -> None:
    sink.open()
    for chunk in chunks:
        sink.write(chunk)
    sink.close()


def test_dialect_picks_the_sink(warehouse):
    sink = table_sink(warehouse.conn_id, warehouse.table("pick"))
    assert type(sink) is (PostgresTableSink if warehouse.kind == "postgres" else TableSink)


def test_upsert_on_key_and_the_errors_table_follows(warehouse):
    table = warehouse.table("sink")
    warehouse.table(f"{table}_errors")  # dropped afterwards too
    first = [ok(1, "one"), bad(2), bad(3, MISSING)]
    load(table_sink(warehouse.conn_id, table, key_column_type="INTEGER"), first[:2], first[2:])
    # A rerun where key 2 now succeeds and key 1 changed: still one row per key, errors table updated.
    load(
        table_sink(warehouse.conn_id, table, key_column_type="INTEGER"),
        [ok(1, "uno"), ok(2, "two"), bad(3, MISSING)],
    )

    rows = warehouse.query(f'SELECT "key", outcome, text, total_tokens FROM {table} ORDER BY "key"')
    assert rows == [(1, SUCCEEDED, "uno", 3), (2, SUCCEEDED, "two", 3), (3, MISSING, None, None)]
    errors = warehouse.query(
        f'SELECT "key", outcome, error_code, error_message, job_name FROM {table}_errors'
    )
    assert errors == [(3, MISSING, 500, "no 3", "batches/1")]
    assert warehouse.query(f"SELECT COUNT(DISTINCT loaded_at) FROM {table}") == [(1,)]


def test_output_columns_and_vectors(warehouse):
    table = warehouse.table("typed")
    warehouse.table(f"{table}_errors")
    sink = table_sink(
        warehouse.conn_id, table, output_columns={"label": "TEXT", "score": "REAL", "tags": "TEXT"}
    )
    value = {"label": "x", "score": 0.5, "tags": ["a", "b"]}
    row = ok("k", json.dumps(value), value=value, json_value=json.dumps(value), embedding=[0.25, -1.5])
    load(sink, [row, ok("plain")])
    got = warehouse.query(f"SELECT label, score, tags, embedding FROM {table} WHERE \"key\" = 'k'")[0]
    assert got[:3] == ("x", 0.5, '["a","b"]')
    assert (got[3] if warehouse.kind == "postgres" else orjson.loads(got[3])) == [0.25, -1.5]
    assert warehouse.query(f"SELECT label FROM {table} WHERE \"key\" = 'plain'") == [(None,)]


@pytest.mark.parametrize("name", ["t; DROP TABLE x", 't"', "a.b.c", "9t", "t x", "t--", "", "schema.", "t\n"])
def test_identifiers_carrying_sql_are_refused(sqlite_warehouse, name):
    with pytest.raises(GeminiBatchInputError, match="Invalid table name"):
        table_sink(sqlite_warehouse.conn_id, name)


def test_types_and_columns_are_whitelisted():
    with pytest.raises(GeminiBatchInputError, match="not allowed on sqlite"):
        TableLayout("t", "sqlite", output_columns={"a": "TEXT; DROP TABLE t"})
    with pytest.raises(GeminiBatchInputError, match="clashes"):
        TableLayout("t", "postgresql", output_columns={"outcome": "TEXT"})
    with pytest.raises(GeminiBatchInputError, match="Invalid output column"):
        TableLayout("t", "postgresql", output_columns={"a b": "TEXT"})
    layout = TableLayout(
        "s.t", "postgresql", key_column_type="bigint", output_columns={"n": "double  precision"}
    )
    assert layout.qualified == '"s"."t"' and layout.errors_qualified == '"s"."t_errors"'
    assert '"n" DOUBLE PRECISION' in layout.create_sql() and '"key" BIGINT PRIMARY KEY' in layout.create_sql()


def test_schema_qualified_table_on_postgres(postgres_warehouse):
    postgres_warehouse.execute("CREATE SCHEMA IF NOT EXISTS gemini_sink_test")
    table = postgres_warehouse.table("qualified")
    name = f"gemini_sink_test.{table}"
    try:
        load(table_sink(postgres_warehouse.conn_id, name), [ok("a"), bad("b")])
        load(table_sink(postgres_warehouse.conn_id, name), [ok("a"), ok("b")])
        assert postgres_warehouse.query(f"SELECT COUNT(*) FROM {name}") == [(2,)]
        assert postgres_warehouse.query(f"SELECT COUNT(*) FROM {name}_errors") == [(0,)]
    finally:
        postgres_warehouse.execute("DROP SCHEMA gemini_sink_test CASCADE")


def test_object_storage_overwrites_on_rerun(tmp_path):
    for _ in range(2):
        load(ObjectStorageSink(str(tmp_path / "out"), "jsonl"), [ok("a"), bad("b")], [ok("c")])
    lines = (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["key"] for line in lines] == ["a", "b", "c"]
    assert [
        orjson.loads(line)["key"] for line in (tmp_path / "out" / "errors.jsonl").read_bytes().splitlines()
    ] == ["b"]


def test_parquet_row_groups_per_chunk(tmp_path):
    import pyarrow.parquet as pq

    sink = ObjectStorageSink(str(tmp_path), "parquet", {"label": "TEXT"}, integer_keys=True)
    load(sink, [ok(1, value={"label": "x"}), ok(2)], [ResultRow(3, SUCCEEDED, embedding=[1.0, 2.0])])
    parquet = pq.ParquetFile(tmp_path / "results.parquet")
    assert parquet.metadata.num_row_groups == 2
    rows = parquet.read().to_pylist()
    assert [(r["key"], r["label"], r["embedding"]) for r in rows] == [
        (1, "x", None),
        (2, None, None),
        (3, None, [1.0, 2.0]),
    ]


def test_streamed_copy_commits_buffers_errors_and_aborts_cleanly(postgres_warehouse, monkeypatch):
    """Into fresh tables the PostgreSQL sink keeps one COPY open across chunks: errors rows wait in a bounded
    buffer, commits end the COPY, and an abort fails the open COPY so none of its rows stay."""
    import airflow_gemini_batch.sinks.postgres as pg

    wh = postgres_warehouse
    monkeypatch.setattr(pg, "ERRORS_BUFFER_ROWS", 3)  # flushed mid-load, not only at the end
    table = wh.table("stream")
    wh.table(f"{table}_errors")
    sink = table_sink(wh.conn_id, table, key_column_type="INTEGER")
    sink.commit_every = 40  # a commit every other chunk
    chunks = [[ok(i) if i % 4 else bad(i) for i in range(start, start + 20)] for start in range(0, 100, 20)]
    load(sink, *chunks)
    assert wh.query(f'SELECT COUNT(*), COUNT(DISTINCT "key") FROM {table}') == [(100, 100)]
    assert wh.query(f'SELECT COUNT(*) FROM {table}_errors WHERE MOD("key", 4) = 0') == [(25,)]
    assert wh.query(f"SELECT COUNT(*) FROM {table}_errors") == [(25,)]

    aborted = wh.table("aborted")
    wh.table(f"{aborted}_errors")
    sink = table_sink(wh.conn_id, aborted, key_column_type="INTEGER")
    sink.open()
    sink.write([ok(1), bad(2)])
    sink.abort()
    assert wh.query(f"SELECT COUNT(*) FROM {aborted}") == [(0,)]
