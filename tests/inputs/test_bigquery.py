"""The BigQuery source on the BigQuery emulator (real REST and Storage Read gRPC wire protocols): a query run
as a job into a temporary table, a table read directly, bounded batches, the paged fallback, clean-up."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import orjson
import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import STORAGE_EMULATOR_HOST, parse_table_id
from airflow_gemini_batch.inputs.bigquery import BigQueryRowSource
from tests.gcp_emulators import PROJECT

pytestmark = pytest.mark.timeout(300)


def load_prompts(client: Any, table: str, n: int) -> None:
    """``(id INT64, name STRING, category STRING, attrs JSON)`` with ``n`` deterministic rows (a load job)."""
    from google.cloud import bigquery

    schema = [
        bigquery.SchemaField("id", "INT64"),
        bigquery.SchemaField("name", "STRING"),
        bigquery.SchemaField("category", "STRING"),
        bigquery.SchemaField("attrs", "JSON"),
    ]
    data = b"".join(
        orjson.dumps(
            {"id": i, "name": f"product {i}", "category": ("tools", "garden")[i % 2], "attrs": {"i": i}}
        )
        + b"\n"
        for i in range(n)
    )
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(io.BytesIO(data), table, job_config=config).result(timeout=60)


def rows_of(source: BigQueryRowSource) -> tuple[list[int], list[tuple[Any, ...]]]:
    sizes, rows = [], []
    for batch in source.batches():
        sizes.append(len(batch))
        rows.extend(batch)
    return sizes, rows


def dataset_tables(client: Any, dataset: str) -> list[str]:
    return [t.table_id for t in client.list_tables(dataset)]


def test_query_runs_into_a_temporary_table_read_by_storage_read(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    table = f"{PROJECT}.{bq_dataset}.prompts"
    load_prompts(bq_client, table, 53)
    source = BigQueryRowSource(
        gcp_conn,
        sql=f"SELECT id, name FROM `{table}` WHERE category = @cat AND id >= @low;",
        parameters={"cat": "garden", "low": 10},
        temp_dataset=bq_dataset,
        batch_size=7,
    )
    sizes, rows = rows_of(source)
    assert source.read_path == "storage"
    assert source.columns == ["id", "name"]
    assert sorted(rows) == [(i, f"product {i}") for i in range(11, 53, 2)]
    assert max(sizes) == 7 and sum(sizes) == 21
    assert dataset_tables(bq_client, bq_dataset) == ["prompts"], "the temporary table is deleted"


def test_table_read_directly_with_selected_columns(gcp_conn: str, bq_client: Any, bq_dataset: str):
    load_prompts(bq_client, f"{PROJECT}.{bq_dataset}.prompts", 30)
    source = BigQueryRowSource(
        gcp_conn, table=f"{bq_dataset}.prompts", columns=["attrs", "id"], batch_size=1000
    )
    _, rows = rows_of(source)
    assert source.columns == ["attrs", "id"]
    assert sorted(rows, key=lambda r: r[1]) == [(orjson.dumps({"i": i}).decode(), i) for i in range(30)]

    missing = BigQueryRowSource(gcp_conn, table=f"{bq_dataset}.prompts", columns=["id", "nope"])
    with pytest.raises(GeminiBatchInputError, match=r"\['nope'\] are not in .*prompts"):
        rows_of(missing)


class _StorageReadRefused(grpc.GenericRpcHandler):
    """Every Storage Read call answers PERMISSION_DENIED, as BigQuery does when the API is not enabled."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def service(self, handler_call_details: Any) -> Any:
        self.calls.append(handler_call_details.method)

        def refuse(request: Any, context: Any) -> None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "BigQuery Storage API has not been used in project"
            )

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
def storage_read_refused(monkeypatch: pytest.MonkeyPatch, gcp_conn: str) -> Iterator[_StorageReadRefused]:
    handler = _StorageReadRefused()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv(STORAGE_EMULATOR_HOST, f"127.0.0.1:{port}")
    yield handler
    server.stop(grace=None)


def test_falls_back_to_paged_list_rows_without_the_storage_api(
    storage_read_refused: _StorageReadRefused, gcp_conn: str, bq_client: Any, bq_dataset: str
):
    load_prompts(bq_client, f"{PROJECT}.{bq_dataset}.prompts", 25)
    source = BigQueryRowSource(gcp_conn, table=f"{bq_dataset}.prompts", columns=["id"], batch_size=10)
    sizes, rows = rows_of(source)
    assert storage_read_refused.calls == ["/google.cloud.bigquery.storage.v1.BigQueryRead/CreateReadSession"]
    assert source.read_path == "list_rows"
    assert sizes == [10, 10, 5]
    assert sorted(r[0] for r in rows) == list(range(25)), "every row once"


def test_a_failing_query_names_the_error_and_leaves_no_table(gcp_conn: str, bq_client: Any, bq_dataset: str):
    source = BigQueryRowSource(
        gcp_conn, sql="SELECT id FROM `no_such_dataset.nothing`", temp_dataset=bq_dataset
    )
    with pytest.raises(Exception, match=r"(?i)nothing|not found"):
        rows_of(source)
    assert dataset_tables(bq_client, bq_dataset) == []


def test_temporary_table_is_deleted_when_the_reader_stops_early(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    load_prompts(bq_client, f"{PROJECT}.{bq_dataset}.prompts", 40)
    source = BigQueryRowSource(
        gcp_conn, sql=f"SELECT id FROM `{bq_dataset}.prompts`", temp_dataset=bq_dataset, batch_size=5
    )
    batches = source.batches()
    assert len(next(batches)) == 5
    assert len(dataset_tables(bq_client, bq_dataset)) == 2
    batches.close()
    assert dataset_tables(bq_client, bq_dataset) == ["prompts"]


@pytest.mark.parametrize(
    "bad", ["prompts", "a.b.c.d", "d.t`; DROP TABLE x", "d.t t", "`d`.`t`", "d.t;", "p'.d.t"]
)
def test_table_ids_that_could_carry_sql_are_refused(bad: str):
    with pytest.raises(GeminiBatchInputError, match="Invalid BigQuery table"):
        parse_table_id(bad, PROJECT)


def test_table_ids():
    assert str(parse_table_id("d.t", PROJECT)) == f"{PROJECT}.d.t"
    assert parse_table_id("`example.com:proj.d_1.t-2`", PROJECT).sql == "`example.com:proj.d_1.t-2`"


def test_source_arguments_are_checked_before_any_call():
    with pytest.raises(GeminiBatchInputError, match="exactly one of sql and source_table"):
        BigQueryRowSource("any", sql="SELECT 1", table="d.t")
    with pytest.raises(GeminiBatchInputError, match="source_columns"):
        BigQueryRowSource("any", sql="SELECT 1", columns=["a"])
    with pytest.raises(GeminiBatchInputError, match="Invalid source column"):
        BigQueryRowSource("any", table="d.t", columns=["a; DROP"])


def test_unsupported_parameter_types_are_named():
    from airflow_gemini_batch.inputs.bigquery import query_parameters

    with pytest.raises(GeminiBatchInputError, match="Query parameter tags is a list"):
        query_parameters({"tags": ["a"]})
    assert [p.type_ for p in query_parameters([1, "x", None, True])] == ["INT64", "STRING", "STRING", "BOOL"]


def test_the_submit_run_reads_sql_on_a_google_cloud_connection_from_bigquery(gcp_conn: str, sqlite_warehouse):
    from airflow_gemini_batch.inputs.sources import SqlRowSource
    from airflow_gemini_batch.submit.run import SubmitRun, SubmitSettings

    def source_of(**settings: Any) -> Any:
        return SubmitRun(None, SubmitSettings(prompt_column="p", **settings).validated()).source()  # type: ignore[arg-type]

    assert isinstance(source_of(sql="SELECT 1 AS id", source_conn_id=gcp_conn), BigQueryRowSource)
    table = source_of(source_table="d.t", source_columns=["id"], source_conn_id=gcp_conn)
    assert isinstance(table, BigQueryRowSource) and table.selected == ["id"]
    assert isinstance(source_of(sql="SELECT 1 AS id", source_conn_id=sqlite_warehouse.conn_id), SqlRowSource)
