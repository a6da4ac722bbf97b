"""Sinks on real SQLite and PostgreSQL (and local object storage): DDL, upsert on key, errors table, validation."""

from __future__ import annotations

import json

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results.parsing import FAILED, MISSING, SUCCEEDED, ResultRow
from airflow_gemini_batch.sinks import (
    ObjectStorageSink,
    PostgresTableSink,
    Sink,
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


def test_every_sink_is_a_sink(warehouse, tmp_path):
    """The loading stage talks to all of them through the one Protocol (open, write, close, abort, describe)."""
    table = warehouse.table("protocol")
    warehouse.table(f"{table}_errors")
    for sink in (table_sink(warehouse.conn_id, table), ObjectStorageSink(str(tmp_path / "out"))):
        assert isinstance(sink, Sink)
        load(sink, [ok(1), bad(2)])
        assert sink.rows_written == 2 and sink.describe()


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


class _TracedSqliteHook:
    """The warehouse's SqliteHook, with every statement SQLite runs recorded (real SQLite, real sink)."""

    def __init__(self, conn_id: str) -> None:
        from airflow_gemini_batch.sinks import get_db_hook

        self.hook = get_db_hook(conn_id)
        self.dialect_name = "sqlite"
        self.placeholder = "?"
        self.statements: list[str] = []

    def get_conn(self):
        conn = self.hook.get_conn()
        conn.set_trace_callback(self.statements.append)
        return conn


def _inserted_columns(statements: list[str], table: str) -> list[str]:
    """The column list of each INSERT into ``main.table`` SQLite ran (the trace is per execution)."""
    prefix = f'INSERT INTO "main"."{table}" ('
    return sorted({s[len(prefix) : s.index(")")] for s in statements if s.startswith(prefix)})


def test_sqlite_binds_only_what_varies_and_stores_the_same_rows(sqlite_warehouse):
    """A chunk's INSERT leaves out columns NULL in all its rows and writes plain job names as literals; the
    table ends up exactly as with every column bound, also when an upsert replaces a row that had values."""
    wh = sqlite_warehouse
    think = {"thinking_tokens": 7, "cached_tokens": 2}
    first = [
        [ok(1), ok(2, **think), bad(3)],
        [ok(4, "vier", **think), ok(5, model_version="m-1")],
    ]
    second = [  # key 2 loses its thinking tokens, 3 succeeds, 4 fails: left-out columns must become NULL
        [ok(1), ok(2), ok(3)],
        [
            bad(4),
            ResultRow(5, SUCCEEDED, "fünf", job_name="batches/o'brien"),
        ],  # a quote: bound, not a literal
        [ResultRow(6, SUCCEEDED, "", finish_reason="STOP", prompt_tokens=0, job_name="batches/2")],
    ]
    narrow, full = wh.table("narrow"), wh.table("full")
    wh.table(f"{narrow}_errors"), wh.table(f"{full}_errors")
    traced = _TracedSqliteHook(wh.conn_id)
    literals: set[str | None] = set()
    for chunks in (first, second):
        # Schema-qualified ("main."), so the PRAGMA that finds columns without a default is the qualified one.
        narrow_sink = table_sink(wh.conn_id, f"main.{narrow}", key_column_type="INTEGER", hook=traced)
        load(narrow_sink, *chunks)
        literals |= {job for _, job in narrow_sink._narrow_sql}
        sink = table_sink(wh.conn_id, full, key_column_type="INTEGER")
        sink.open()
        sink._omittable = frozenset()  # the reference: every column bound, as before this optimisation
        for chunk in chunks:
            sink.write(chunk)
        sink.close()

    columns = "\"key\", outcome, text, json_value, embedding, finish_reason, prompt_tokens, output_tokens, " \
        "thinking_tokens, cached_tokens, total_tokens, model_version, error_code, error_message, job_name"  # fmt: skip
    for suffix in ("", "_errors"):
        cols = columns if not suffix else '"key", outcome, error_code, error_message, job_name'
        got = wh.query(f'SELECT {cols} FROM {narrow}{suffix} ORDER BY "key"')
        assert got == wh.query(f'SELECT {cols} FROM {full}{suffix} ORDER BY "key"')
    assert wh.query(f'SELECT "key", thinking_tokens, error_code, job_name FROM {narrow} ORDER BY "key"') == [
        (1, None, None, "batches/1"), (2, None, None, "batches/1"), (3, None, None, "batches/1"),
        (4, None, 500, "batches/1"), (5, None, None, "batches/o'brien"), (6, None, None, "batches/2"),
    ]  # fmt: skip
    assert wh.query(f'SELECT text, prompt_tokens FROM {narrow} WHERE "key" = 6') == [("", 0)]

    # What was bound: columns NULL in a whole chunk were left out, filled ones kept.
    inserts = _inserted_columns(traced.statements, narrow)
    assert all('"embedding"' not in c and '"json_value"' not in c for c in inserts), inserts
    assert any('"thinking_tokens"' in c for c in inserts) and any(
        '"thinking_tokens"' not in c for c in inserts
    )
    # Plain job names went into the SQL as literals; the one with a quote was bound.
    assert literals == {"batches/1", "batches/2", None}


@pytest.mark.parametrize("value", ["o'brien", "a\nb", "a\\b", "a;b", "naïve", '"x"', "a\x00b", "a\tb"])
def test_only_plain_values_may_become_sql_literals(value):
    """What the SQLite sink may write into SQL as a literal: letters, digits and ``_/:.+ -`` - no quote, no
    backslash, no statement separator, no control or non-ASCII character - or it binds the value."""
    from airflow_gemini_batch.sinks.table import _PLAIN_LITERAL

    assert _PLAIN_LITERAL.fullmatch("batches/abc-123_x") and _PLAIN_LITERAL.fullmatch(
        "2026-11-27T22:11:48.123456+00:00"
    )
    assert not _PLAIN_LITERAL.fullmatch(value)


def test_sqlite_columns_with_a_default_are_always_bound(sqlite_warehouse):
    """A table made by its user may give a column a default; a NULL there must stay NULL, not the default."""
    wh = sqlite_warehouse
    table = wh.table("defaults")
    wh.table(f"{table}_errors")
    layout = TableLayout(table, "sqlite", key_column_type="INTEGER")
    ddl = layout.create_sql().replace('"thinking_tokens" INTEGER', '"thinking_tokens" INTEGER DEFAULT 0')
    assert "DEFAULT 0" in ddl
    wh.execute(ddl)
    wh.execute(layout.create_sql(errors=True))
    load(table_sink(wh.conn_id, table, key_column_type="INTEGER", create_table=False), [ok(1), ok(2)])
    assert wh.query(f'SELECT "key", thinking_tokens, cached_tokens FROM {table} ORDER BY "key"') == [
        (1, None, None),
        (2, None, None),
    ]


def test_attempts_is_the_loads_constant_and_an_upsert_replaces_it(warehouse):
    table = warehouse.table("attempts")
    warehouse.table(f"{table}_errors")
    load(table_sink(warehouse.conn_id, table, key_column_type="INTEGER"), [ok(1), bad(2), bad(3, MISSING)])
    # A second round resends keys 2 and 3 only: their rows now say 2 attempts, key 1 keeps 1.
    load(table_sink(warehouse.conn_id, table, key_column_type="INTEGER", attempts=2), [ok(2), bad(3)])
    rows = warehouse.query(f'SELECT "key", outcome, attempts FROM {table} ORDER BY "key"')
    assert rows == [(1, SUCCEEDED, 1), (2, SUCCEEDED, 2), (3, FAILED, 2)]
    # The errors table says the same: key 3 failed after 2 attempts; key 2 succeeded and left it.
    errors = warehouse.query(f'SELECT "key", outcome, attempts FROM {table}_errors ORDER BY "key"')
    assert errors == [(3, FAILED, 2)]


def _legacy_table(warehouse, table: str) -> None:
    """A destination made before the attempts column existed: the layout of that time, one row in it."""
    legacy = TableLayout(table=table, dialect=warehouse_dialect(warehouse), key_column_type="INTEGER")
    legacy.attempts_column = legacy.errors_attempts_column = False
    warehouse.execute(legacy.create_sql())
    warehouse.execute(legacy.create_sql(errors=True))
    warehouse.execute(f"INSERT INTO {table} (\"key\", outcome, text) VALUES (9, 'succeeded', 'old')")


def warehouse_dialect(warehouse) -> str:
    return "postgresql" if warehouse.kind == "postgres" else "sqlite"


def test_a_table_made_before_attempts_gets_the_column(warehouse):
    table = warehouse.table("legacy")
    warehouse.table(f"{table}_errors")
    _legacy_table(warehouse, table)
    load(table_sink(warehouse.conn_id, table, key_column_type="INTEGER"), [ok(1), bad(2)])
    rows = warehouse.query(f'SELECT "key", outcome, text, attempts FROM {table} ORDER BY "key"')
    assert rows == [(1, SUCCEEDED, "t", 1), (2, FAILED, None, 1), (9, SUCCEEDED, "old", None)]
    assert warehouse.query(f'SELECT "key", attempts FROM {table}_errors') == [(2, 1)]  # its errors table too


def test_a_user_managed_table_without_attempts_keeps_loading(warehouse):
    table = warehouse.table("managed")
    warehouse.table(f"{table}_errors")
    _legacy_table(warehouse, table)
    sink = table_sink(warehouse.conn_id, table, key_column_type="INTEGER", create_table=False)
    load(sink, [ok(1), bad(2)])
    columns = [d for (d,) in warehouse.query(f"SELECT outcome FROM {table} ORDER BY outcome")]
    assert sorted(columns) == [FAILED, SUCCEEDED, SUCCEEDED]
    with pytest.raises(Exception, match="attempts"):
        warehouse.query(f"SELECT attempts FROM {table}")
    assert warehouse.query(f'SELECT "key", outcome FROM {table}_errors') == [(2, FAILED)]
    with pytest.raises(Exception, match="attempts"):
        warehouse.query(f"SELECT attempts FROM {table}_errors")


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_object_storage_rows_carry_attempts(tmp_path, output_format):
    sink = ObjectStorageSink(str(tmp_path / "out"), output_format, attempts=3)
    load(sink, [ok("a"), bad("b")])
    if output_format == "jsonl":
        lines = [orjson.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()]
    else:
        import pyarrow.parquet as pq

        lines = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert [(r["key"], r["attempts"]) for r in lines] == [("a", 3), ("b", 3)]


def test_a_table_made_before_fingerprints_gets_the_column_and_stores_them(warehouse):
    table = warehouse.table("old")
    warehouse.table(f"{table}_errors")
    layout = TableLayout(table=table, dialect="postgresql" if warehouse.kind == "postgres" else "sqlite")
    columns = ", ".join(f'"{n}" {t}' for n, t in layout.columns() if n != "request_fingerprint")
    warehouse.execute(f"CREATE TABLE {table} ({columns})")
    warehouse.execute(f"INSERT INTO {table} (\"key\", outcome) VALUES ('old', 'succeeded')")
    load(table_sink(warehouse.conn_id, table), [ok("a", request_fingerprint="f" * 64), ok("b"), bad("c")])
    rows = warehouse.query(f'SELECT "key", request_fingerprint FROM {table} ORDER BY "key"')
    assert rows == [("a", "f" * 64), ("b", None), ("c", None), ("old", None)]


def test_object_storage_rows_carry_the_fingerprint(tmp_path):
    sink = ObjectStorageSink(str(tmp_path / "out"))
    load(sink, [ok("a", request_fingerprint="e" * 64)])
    (row,) = [orjson.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()]
    assert row["request_fingerprint"] == "e" * 64
