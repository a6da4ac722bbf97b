"""The BigQuery sink on the BigQuery emulator: schema derived from sinks/schema.py, MERGE upsert on key (a rerun
never duplicates), the errors table, a failed load leaving the destination as it was, table options."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results.rows import FAILED, MISSING, N_STORED, STORED_FIELDS, SUCCEEDED, ResultRow
from airflow_gemini_batch.sinks import BigQueryTableSink, Sink, table_sink
from airflow_gemini_batch.sinks.schema import RESULT_COLUMNS
from tests.gcp_emulators import PROJECT

pytestmark = pytest.mark.timeout(300)


def ok(key: Any, text: str = "t", **kw: Any) -> ResultRow:
    return ResultRow(
        key, SUCCEEDED, text, prompt_tokens=1, output_tokens=2, total_tokens=3, job_name="batches/1", **kw
    )


def bad(key: Any, outcome: str = FAILED) -> ResultRow:
    return ResultRow(key, outcome, error_code=500, error_message=f"no {key}", job_name="batches/1")


def load(sink: Any, *chunks: list[ResultRow]) -> None:
    sink.open()
    try:
        for chunk in chunks:
            sink.write(chunk)
    except BaseException:
        sink.abort()
        raise
    sink.close()


def table_rows(client: Any, table: str) -> dict[Any, dict[str, Any]]:
    rows = [dict(r) for r in client.list_rows(table)]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate keys in {table}: {keys}"
    return {r["key"]: r for r in rows}


# BigQuery's API names the types by their legacy names (INTEGER, FLOAT), the emulator by the GoogleSQL ones.
_SAME_TYPE = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def tables_of(client: Any, dataset: str) -> list[str]:
    return sorted(t.table_id for t in client.list_tables(dataset))


def test_the_connection_type_picks_the_bigquery_sink(gcp_conn: str, bq_dataset: str):
    sink = table_sink(gcp_conn, f"{bq_dataset}.results")
    assert type(sink) is BigQueryTableSink and isinstance(sink, Sink)
    assert sink.describe()["table"] == f"{PROJECT}.{bq_dataset}.results"


def test_schema_is_derived_from_the_documented_columns(gcp_conn: str, bq_client: Any, bq_dataset: str):
    sink = table_sink(
        gcp_conn, f"{bq_dataset}.results", key_column_type="INTEGER", output_columns={"score": "REAL"}
    )
    load(sink, [ok(1)])
    fields = bq_client.get_table(f"{bq_dataset}.results").schema
    schema = {f.name: (_SAME_TYPE.get(f.field_type, f.field_type), f.mode) for f in fields}
    assert list(schema) == ["key", *(c for c, _, _ in RESULT_COLUMNS), "loaded_at", "attempts", "score"]
    assert schema["key"] == ("INT64", "NULLABLE")
    assert schema["json_value"][0] == "JSON"
    assert schema["embedding"] == ("FLOAT64", "REPEATED")
    assert schema["prompt_tokens"][0] == schema["total_tokens"][0] == "INT64"
    assert schema["loaded_at"][0] == "TIMESTAMP" and schema["text"][0] == "STRING"
    assert schema["score"][0] == "FLOAT64"
    errors = [f.name for f in bq_client.get_table(f"{bq_dataset}.results_errors").schema]
    assert errors == ["key", "outcome", "error_code", "error_message", "job_name", "loaded_at", "attempts"]
    assert len(STORED_FIELDS) == N_STORED == 1 + len(RESULT_COLUMNS)


def test_merge_upserts_on_the_key_and_the_errors_table_follows(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    table = f"{bq_dataset}.results"
    first = [
        ok(1, "one", json_value='{"label": "a", "n": [1, 2]}', value={"label": "a", "n": [1, 2]}),
        bad(2),
        bad(3, MISSING),
        ResultRow(4, SUCCEEDED, embedding=[0.25, -1.5], job_name="batches/1"),
    ]
    sink = table_sink(gcp_conn, table, key_column_type="INTEGER", output_columns={"label": "STRING"})
    load(sink, first[:2], first[2:])
    rows = table_rows(bq_client, table)
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[1]["json_value"] == {"label": "a", "n": [1, 2]} and rows[1]["label"] == "a"
    assert rows[4]["embedding"] == [0.25, -1.5]
    assert rows[2]["error_message"] == "no 2" and rows[1]["prompt_tokens"] == 1
    assert sorted(table_rows(bq_client, f"{table}_errors")) == [2, 3]

    # A rerun: key 2 now succeeds, key 1 changed, key 5 is new. One row per key; the errors table updated.
    sink = table_sink(gcp_conn, table, key_column_type="INTEGER", output_columns={"label": "STRING"})
    load(sink, [ok(1, "uno"), ok(2, "two"), bad(3, MISSING), ok(4), ok(5)])
    rows = table_rows(bq_client, table)
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert (rows[1]["text"], rows[1]["label"], rows[2]["outcome"]) == ("uno", None, SUCCEEDED)
    assert sorted(table_rows(bq_client, f"{table}_errors")) == [3]
    assert tables_of(bq_client, bq_dataset) == ["results", "results_errors"], "no staging table is left"


def test_a_failed_load_leaves_the_destination_as_it_was(gcp_conn: str, bq_client: Any, bq_dataset: str):
    table = f"{bq_dataset}.results"
    load(
        table_sink(gcp_conn, table, output_columns={"score": "INT64"}),
        [ok("a", "before", value={"score": 1})],
    )
    before = table_rows(bq_client, table)

    # One load job per chunk: the first chunk reaches the staging table, the second is refused by BigQuery
    # (a score that is not an INT64), so the load fails after rows were already staged.
    sink = BigQueryTableSink(
        table_sink(gcp_conn, table).clients, table, output_columns={"score": "INT64"}, load_chunk_bytes=1
    )
    with pytest.raises(Exception, match=r"(?i)score|cast|invalid"):
        load(
            sink,
            [ok("a", "after", value={"score": 2}), ok("b", value={"score": 3})],
            [ok("c", value={"score": "x"})],
        )
    assert sink.load_jobs == 1, "the first chunk was staged before the failure"
    assert table_rows(bq_client, table) == before
    assert tables_of(bq_client, bq_dataset) == ["results", "results_errors"], "the staging table is dropped"


def test_partitioning_and_clustering_are_passed_through(gcp_conn: str, bq_client: Any, bq_dataset: str):
    sink = table_sink(
        gcp_conn,
        f"{PROJECT}.{bq_dataset}.parted",
        time_partitioning={"type": "DAY", "field": "loaded_at"},
        cluster_fields=["outcome"],
    )
    load(sink, [ok("k")])
    created = bq_client.get_table(f"{bq_dataset}.parted")
    assert (created.time_partitioning.type_, created.time_partitioning.field) == ("DAY", "loaded_at")
    assert created.clustering_fields == ["outcome"]


def test_missing_table_without_create_table_is_named(gcp_conn: str, bq_dataset: str):
    sink = table_sink(gcp_conn, f"{bq_dataset}.absent", create_table=False)
    with pytest.raises(GeminiBatchInputError, match=r"absent does not exist and create_table=False"):
        sink.open()


def test_bad_destination_arguments_fail_before_any_call(gcp_conn: str, sqlite_warehouse: Any):
    with pytest.raises(GeminiBatchInputError, match="Invalid BigQuery destination_table"):
        table_sink(gcp_conn, "results; DROP TABLE x").open()
    with pytest.raises(GeminiBatchInputError, match="BigQuery keys are STRING or INT64"):
        table_sink(gcp_conn, "d.t", key_column_type="FLOAT64")
    with pytest.raises(GeminiBatchInputError, match="not a BigQuery column type"):
        table_sink(gcp_conn, "d.t", output_columns={"x": "GEOGRAPHY; --"})
    with pytest.raises(GeminiBatchInputError, match="clashes"):
        table_sink(gcp_conn, "d.t", output_columns={"outcome": "STRING"})
    with pytest.raises(GeminiBatchInputError, match="BigQuery table options"):
        table_sink(sqlite_warehouse.conn_id, "t", cluster_fields=["outcome"])


def test_integer_keys_that_are_not_integers_are_named(gcp_conn: str, bq_dataset: str):
    sink = table_sink(gcp_conn, f"{bq_dataset}.results", key_column_type="INT64")
    sink.open()
    try:
        with pytest.raises(GeminiBatchInputError, match="Key 'x1' is not an integer"):
            sink.write([ok("x1")])
    finally:
        sink.abort()


def test_a_table_made_before_the_attempts_column_gets_it(gcp_conn: str, bq_client: Any, bq_dataset: str):
    from google.cloud import bigquery

    sink = table_sink(gcp_conn, f"{bq_dataset}.old", attempts=2)
    old = [f for f in sink.schema() if f.name != "attempts"]
    bq_client.create_table(bigquery.Table(f"{PROJECT}.{bq_dataset}.old", schema=old))
    load(sink, [ok("k")])
    # Read by a query: the emulator's table metadata (list_rows) does not show a column added by ALTER TABLE.
    rows = list(bq_client.query(f"SELECT `key`, attempts FROM `{bq_dataset}.old`").result())
    assert [tuple(r.values()) for r in rows] == [("k", 2)]


def test_a_first_load_goes_straight_into_the_new_table_and_an_abort_drops_it(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    table = f"{bq_dataset}.fresh"
    sink = BigQueryTableSink(
        table_sink(gcp_conn, table).clients, table, output_columns={"score": "INT64"}, load_chunk_bytes=1
    )
    with pytest.raises(Exception, match=r"(?i)score|cast|invalid"):
        load(sink, [ok("a", value={"score": 1})], [ok("b", value={"score": "x"})])
    assert sink.load_jobs == 1, "the first chunk was loaded into the new table before the failure"
    assert tables_of(bq_client, bq_dataset) == [], "the tables this load created are gone: as before it"

    sink = table_sink(gcp_conn, table, output_columns={"score": "INT64"})
    load(sink, [ok("a", value={"score": 1}), bad("b")])
    assert sink.load_jobs == 1 and tables_of(bq_client, bq_dataset) == ["fresh", "fresh_errors"]
    assert sorted(table_rows(bq_client, table)) == ["a", "b"]
    assert sorted(table_rows(bq_client, f"{table}_errors")) == ["b"]


def test_a_table_made_before_fingerprints_gets_the_column_and_stores_them(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    from google.cloud import bigquery

    table = f"{bq_dataset}.older"
    sink = table_sink(gcp_conn, table)
    old = [f for f in sink.schema() if f.name not in ("request_fingerprint", "attempts")]
    bq_client.create_table(bigquery.Table(f"{PROJECT}.{bq_dataset}.older", schema=old))
    bq_client.query(
        f"INSERT INTO `{table}` (`key`, outcome, text) VALUES ('old', 'succeeded', 'kept')"
    ).result()

    load(sink, [ok("a", request_fingerprint="f" * 64), ok("b"), bad("c", MISSING)])
    # Read by a query: the emulator's table metadata (list_rows) does not show a column added by ALTER TABLE.
    query = f"SELECT `key`, request_fingerprint, attempts FROM `{table}` ORDER BY `key`"
    rows = [tuple(r.values()) for r in bq_client.query(query).result()]
    assert rows == [("a", "f" * 64, 1), ("b", None, 1), ("c", None, 1), ("old", None, None)]

    # The next load (its ADD COLUMN IF NOT EXISTS now a no-op) updates the fingerprint.
    load(table_sink(gcp_conn, table), [ok("b", request_fingerprint="e" * 64)])
    rows = [tuple(r.values()) for r in bq_client.query(query).result()]
    assert rows[1] == ("b", "e" * 64, 1) and len(rows) == 4


def test_the_errors_table_carries_attempts_also_when_made_before_them(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    from google.cloud import bigquery

    table = f"{bq_dataset}.rounds"
    load(table_sink(gcp_conn, table, attempts=1), [ok("a"), bad("b")])
    query = f"SELECT `key`, attempts FROM `{table}_errors` ORDER BY `key`"
    assert [tuple(r.values()) for r in bq_client.query(query).result()] == [("b", 1)]
    load(table_sink(gcp_conn, table, attempts=3), [bad("b")])
    assert [tuple(r.values()) for r in bq_client.query(query).result()] == [("b", 3)]

    sink = table_sink(gcp_conn, f"{bq_dataset}.older_errors", attempts=2)
    old_errors = [f for f in sink.schema(sink._error_names()) if f.name != "attempts"]
    bq_client.create_table(bigquery.Table(f"{PROJECT}.{bq_dataset}.older_errors_errors", schema=old_errors))
    load(sink, [bad("c")])
    # Read by a query: the emulator's table metadata (list_rows) does not show a column added by ALTER TABLE.
    rows = bq_client.query(f"SELECT `key`, attempts FROM `{bq_dataset}.older_errors_errors`").result()
    assert [tuple(r.values()) for r in rows] == [("c", 2)]
