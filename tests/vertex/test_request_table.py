"""The Vertex AI request table is built and checked in BigQuery (the emulator): template → SQL with bound values,
the checks answer counts and first keys only, skip deletes the invalid rows from the request table."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import BigQueryClients
from airflow_gemini_batch.vertex.request_table import RequestSql, RequestTable
from tests.vertex.bigquery_row_bytes import count_row_bytes

pytestmark = pytest.mark.timeout(300)

ROWS = [
    (1, 'he said "hi"\n{x} {{y}}'),
    (2, None),
    (3, "   "),
    (4, "x" * 200),
    (5, "fine"),
]


def _source(bq_client, dataset: str, rows=ROWS) -> str:
    from google.cloud import bigquery

    table = f"{bq_client.project}.{dataset}.src"
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("body", "STRING")]
    bq_client.create_table(bigquery.Table(table, schema=schema))
    bq_client.insert_rows_json(table, [{"id": k, "body": b} for k, b in rows])
    return f"SELECT id, body FROM `{table}`"


def _table(gcp_conn, dataset, source, template="Say {body} @x '); DROP TABLE t; --", **kw) -> RequestTable:
    clients = BigQueryClients(gcp_conn)
    spec = RequestSql.of(prompt_column=None, prompt_template=template, request_sql=None)
    return RequestTable(
        clients,
        clients.table_id(f"{dataset}.req"),
        key_column="id",
        source_sql=source,
        request_sql=spec,
        job_wide={"generationConfig": {"temperature": 0}},
        max_request_bytes=kw.pop("max_request_bytes", 200),
        **kw,
    )


def test_template_text_is_bound_never_spliced():
    spec = RequestSql.of(prompt_column=None, prompt_template="A '{body}' B {{c}}", request_sql=None)
    assert spec.prompt == "CONCAT(@agb_p0, CAST(`body` AS STRING), @agb_p1)"
    assert spec.parameters == {"agb_p0": "A '", "agb_p1": "' B {c}"}
    with pytest.raises(GeminiBatchInputError, match="placeholder"):
        RequestSql.of(prompt_column=None, prompt_template="{bo`dy}", request_sql=None)


def test_build_then_check_counts_and_first_keys(gcp_conn, bq_client, bq_dataset, monkeypatch):
    table = _table(gcp_conn, bq_dataset, _source(bq_client, bq_dataset))
    counted = count_row_bytes(monkeypatch)
    table.build()
    check = table.check()
    assert check.total == 5
    # row 3's blank body still makes a prompt ("Say    …"); a NULL column makes none, like the Developer path
    assert check.problems == {"empty prompt": (1, ["2"]), "over the request limit": (1, ["4"])}
    # what the worker received: one row of counts and key lists, no request and no source row
    assert counted.rows == 1 and counted.read_clients == 0
    with pytest.raises(
        GeminiBatchInputError,
        match=r"1 empty prompt \(first keys: 2\); 1 over the request limit \(first keys: 4\)",
    ):
        table.enforce(check, "fail")
    rows = {r["id"]: r["request"] for r in bq_client.list_rows(str(table.table))}
    assert orjson.loads(rows[1]) == {
        "contents": [
            {"role": "user", "parts": [{"text": 'Say he said "hi"\n{x} {{y}} @x \'); DROP TABLE t; --'}]}
        ],
        "generationConfig": {"temperature": 0},
    }
    assert rows[2] is None


def test_skip_deletes_the_invalid_rows_from_the_request_table_only(gcp_conn, bq_client, bq_dataset):
    table = _table(gcp_conn, bq_dataset, _source(bq_client, bq_dataset))
    table.build()
    left = table.enforce(table.check(), "skip")
    assert left.total == 3 and not left.problems
    assert sorted(r["id"] for r in bq_client.list_rows(str(table.table))) == [1, 3, 5]
    assert bq_client.get_table(f"{bq_dataset}.src").num_rows == 5


def test_duplicate_keys_are_never_skipped(gcp_conn, bq_client, bq_dataset):
    table = _table(gcp_conn, bq_dataset, _source(bq_client, bq_dataset, [(1, "a"), (1, "b"), (2, "c")]))
    table.build()
    with pytest.raises(GeminiBatchInputError, match=r"1 duplicate key \(first keys: 1\).*unique"):
        table.enforce(table.check(), "skip")
