"""BigQuery as a row source: a query (run as a job into a named table) or a table, read as Arrow record batches.

Invariants:

* Bounded memory: rows come from the BigQuery Storage Read API as Arrow record batches (google-cloud-bigquery's
  ``RowIterator.to_arrow_iterable`` with a Storage Read client, a bounded queue between its stream readers and
  us) and leave as ``batch_size``-row tuple batches, like every :class:`~airflow_gemini_batch.inputs.sources.
  RowSource`. Where the Storage Read API is unavailable (not enabled, no permission, no gRPC), the same table
  is read through paged ``tabledata.list`` (``list_rows``), one page at a time; the switch happens only
  before the first row is handed on, so no row is read twice.
* ``sql`` is run as ``CREATE TABLE <temp> AS <sql>`` into ``temp_dataset`` (created when missing, tables
  expiring after a day), then that table is read. Not a query with a destination table: the construct works
  on BigQuery and on its emulator alike (the emulator ignores a query's destination setting and cannot
  Storage-Read anonymous query results). The temporary table is deleted when the read ends, however it ends.
* Parameters are bound as BigQuery query parameters (``@name`` for a mapping, ``?`` for a sequence), never
  spliced into the SQL.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import BigQueryClients, TableId
from airflow_gemini_batch.inputs.sources import DEFAULT_BATCH_SIZE, RowSource
from airflow_gemini_batch.sinks.schema import check_identifier

if TYPE_CHECKING:
    import pyarrow as pa
    from google.cloud.bigquery import Client, SchemaField

log = logging.getLogger(__name__)

DEFAULT_TEMP_DATASET = "gemini_batch_tmp"
TEMP_TABLE_EXPIRATION_MS = 24 * 3600 * 1000
# Errors that mean "no Storage Read API here" (not enabled, no permission, no gRPC) rather than a bad read.
_STORAGE_UNAVAILABLE = (
    "PermissionDenied",
    "Forbidden",
    "Unimplemented",
    "ServiceUnavailable",
    "Unauthenticated",
)


def storage_read_unavailable(error: BaseException) -> bool:
    """Whether opening a Storage Read session failed because the API is not there for us (not enabled, no
    permission, no gRPC), so the paged ``list_rows`` can read the same rows, rather than a bad read."""
    return type(error).__name__ in _STORAGE_UNAVAILABLE or isinstance(error, ImportError)


_PARAM_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),  # before int: bool is an int
    (int, "INT64"),
    (float, "FLOAT64"),
    (decimal.Decimal, "NUMERIC"),
    (str, "STRING"),
    (bytes, "BYTES"),
    (datetime.datetime, "TIMESTAMP"),
    (datetime.date, "DATE"),
)


def query_parameters(parameters: Mapping[str, Any] | Sequence[Any] | None) -> list[Any]:
    """Scalar BigQuery query parameters: named from a mapping, positional from a sequence."""
    from google.cloud.bigquery import ScalarQueryParameter

    if parameters is None:
        return []
    items: Sequence[tuple[str | None, Any]]
    if isinstance(parameters, Mapping):
        items = [(check_identifier(str(k), "query parameter name"), v) for k, v in parameters.items()]
    elif isinstance(parameters, Sequence) and not isinstance(parameters, (str, bytes)):
        items = [(None, v) for v in parameters]
    else:
        raise GeminiBatchInputError(
            f"parameters must be a mapping (@name) or a list (?) for BigQuery, got {type(parameters).__name__}."
        )
    result: list[Any] = []
    for name, value in items:
        type_name = (
            "STRING" if value is None else next((t for c, t in _PARAM_TYPES if isinstance(value, c)), None)
        )
        if type_name is None:
            raise GeminiBatchInputError(
                f"Query parameter {name or len(result)} is a {type(value).__name__}; BigQuery parameters here "
                "are bool, int, float, Decimal, str, bytes, datetime or date."
            )
        result.append(ScalarQueryParameter(name, type_name, value))
    return result


class BigQueryRowSource(RowSource):
    """Rows of a BigQuery query or table, streamed through the Storage Read API.

    :param conn_id: a ``google_cloud_platform`` connection (the provider's ``BigQueryHook``).
    :param sql: a GoogleSQL SELECT (give ``sql`` or ``table``).
    :param table: ``dataset.table`` or ``project.dataset.table`` to read directly.
    :param columns: with ``table``: the columns to read (default all), in this order.
    :param parameters: query parameters for ``sql``.
    :param temp_dataset: where ``sql``'s result table is written (``dataset`` or ``project.dataset``).
    :param batch_size: rows per yielded batch; memory is bounded by this and the reader's queue.
    """

    def __init__(
        self,
        conn_id: str,
        *,
        sql: str | None = None,
        table: str | None = None,
        columns: Sequence[str] | None = None,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        temp_dataset: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        clients: BigQueryClients | None = None,
    ) -> None:
        if bool(sql) == bool(table):
            raise GeminiBatchInputError("Give the BigQuery source exactly one of sql and source_table.")
        if columns and not table:
            raise GeminiBatchInputError(
                "source_columns selects columns of source_table; a query selects its own."
            )
        self.conn_id = conn_id
        self.sql = sql.strip().rstrip(";").rstrip() if sql else None
        self.table = table
        self.selected = [check_identifier(c, "source column") for c in columns or ()]
        self.parameters = parameters
        self.temp_dataset = temp_dataset or DEFAULT_TEMP_DATASET
        self.batch_size = batch_size
        self.clients = clients or BigQueryClients(conn_id)
        #: how the last read went: "storage" (Storage Read API) or "list_rows" (the paged fallback).
        self.read_path: str | None = None

    def describe(self) -> str:
        what = f"table {self.table}" if self.table else "query"
        return f"BigQuery {what} on connection {self.conn_id!r}"

    # ---- the query's result table -------------------------------------------------------------------------

    def _temp_table(self, client: Client) -> TableId:
        from google.cloud.bigquery import Dataset

        parts = self.temp_dataset.split(".")
        text = f"{self.temp_dataset}._gemini_batch_src_{uuid.uuid4().hex}"
        if len(parts) > 2:
            raise GeminiBatchInputError(
                f"temp_dataset {self.temp_dataset!r}: give 'dataset' or 'project.dataset'."
            )
        temp = self.clients.table_id(text, "temp_dataset")
        dataset = Dataset(f"{temp.project}.{temp.dataset}")
        dataset.default_table_expiration_ms = TEMP_TABLE_EXPIRATION_MS
        if self.clients.location:
            dataset.location = self.clients.location
        client.create_dataset(dataset, exists_ok=True)
        return temp

    def _run_query(self, client: Client, temp: TableId) -> None:
        from google.cloud.bigquery import QueryJobConfig

        config = QueryJobConfig(query_parameters=query_parameters(self.parameters), use_legacy_sql=False)
        sql = (
            f"CREATE TABLE {temp.sql} OPTIONS (expiration_timestamp = "
            f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)) AS\n{self.sql}"
        )
        job = client.query(sql, job_config=config, location=self.clients.location)
        log.info("BigQuery job %s writes the query's rows to %s", job.job_id, temp)
        job.result()

    # ---- reading ------------------------------------------------------------------------------------------

    def _fields(self, client: Client, table: TableId) -> list[SchemaField]:
        schema = client.get_table(str(table)).schema
        if not self.selected:
            return list(schema)
        by_name = {f.name.lower(): f for f in schema}
        missing = [c for c in self.selected if c.lower() not in by_name]
        if missing:
            raise GeminiBatchInputError(
                f"source_columns {missing} are not in {table} (it has {[f.name for f in schema]})."
            )
        return [by_name[c.lower()] for c in self.selected]

    def _record_batches(
        self, client: Client, table: TableId, fields: list[SchemaField]
    ) -> Iterator[pa.RecordBatch]:
        """Storage Read when it answers, otherwise paged ``list_rows``; never both for the same rows."""
        rows = client.list_rows(str(table), selected_fields=fields, page_size=self.batch_size)
        try:
            read_client = self.clients.read_client()
            stream = iter(rows.to_arrow_iterable(bqstorage_client=read_client, max_queue_size=2))
            first = next(stream, None)
        except Exception as e:
            if not storage_read_unavailable(e):
                raise
            log.warning(
                "The BigQuery Storage Read API is unavailable (%s: %s); reading %s through paged list_rows "
                "instead (slower; enable the API and grant bigquery.readsessions.create to use it).",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                table,
            )
            self.read_path = "list_rows"
            rows = client.list_rows(str(table), selected_fields=fields, page_size=self.batch_size)
            yield from rows.to_arrow_iterable()
            return
        self.read_path = "storage"
        if first is not None:
            yield first
            yield from stream

    def _tuple_batches(self, record_batches: Iterator[pa.RecordBatch]) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Arrow record batches → ``batch_size``-row lists of tuples in column order.

        A record batch is cut into ``batch_size``-row slices (zero-copy) and each slice converted column-wise
        when it is needed, so at most one batch of Python values exists at a time, however large the server's
        messages are (the emulator sends a whole stream in one)."""
        pending: list[tuple[Any, ...]] = []
        size = self.batch_size
        for rb in record_batches:
            offset = 0
            while offset < rb.num_rows:
                take = min(size - len(pending), rb.num_rows - offset)
                part = rb.slice(offset, take)
                pending.extend(zip(*(column.to_pylist() for column in part.columns), strict=True))
                offset += take
                if len(pending) >= size:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        client = self.clients.client
        temp: TableId | None = None
        try:
            if self.sql:
                temp = self._temp_table(client)
                self._run_query(client, temp)
                table = temp
            else:
                table = self.clients.table_id(str(self.table), "source_table")
            fields = self._fields(client, table)
            self.columns = [f.name for f in fields]
            yield from self._tuple_batches(self._record_batches(client, table, fields))
        finally:
            if temp is not None:
                try:
                    client.delete_table(str(temp), not_found_ok=True)
                except Exception:  # it expires within a day anyway
                    log.warning("Could not delete the temporary table %s; it expires within a day", temp)
