"""Where loaded results go: a warehouse table (upsert on key) or files on object storage.

Every sink implements :class:`~airflow_gemini_batch.sinks.sink.Sink` (``open()``, ``write(rows)`` per chunk,
``close()`` / ``abort()``, ``describe()``), so a new warehouse is a new module here and nothing else changes;
:func:`table_sink` picks the right table sink for a connection: BigQuery for a ``google_cloud_platform`` one,
otherwise by the common-sql hook's dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import BigQueryClients, is_bigquery_connection
from airflow_gemini_batch.sinks.bigquery import BigQueryTableSink
from airflow_gemini_batch.sinks.objectstore import ObjectStorageSink
from airflow_gemini_batch.sinks.postgres import PostgresTableSink
from airflow_gemini_batch.sinks.schema import POSTGRES, TableLayout, check_identifier, split_table
from airflow_gemini_batch.sinks.sink import Sink, SqlHook
from airflow_gemini_batch.sinks.table import TableSink, dialect_of, get_db_hook

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = [
    "BigQueryTableSink",
    "ObjectStorageSink",
    "PostgresTableSink",
    "Sink",
    "SqlHook",
    "TableLayout",
    "TableSink",
    "check_identifier",
    "get_db_hook",
    "split_table",
    "table_sink",
]


def table_sink(
    conn_id: str,
    table: str,
    *,
    key_column: str = "key",
    key_column_type: str = "TEXT",
    output_columns: Mapping[str, str] | None = None,
    errors_table: str | None = None,
    create_table: bool = True,
    hook: SqlHook | None = None,
    attempts: int = 1,
    time_partitioning: Mapping[str, Any] | None = None,
    cluster_fields: Sequence[str] | None = None,
) -> TableSink | BigQueryTableSink:
    """The table sink for a connection: load jobs + MERGE on BigQuery (a ``google_cloud_platform``
    connection), COPY-based on PostgreSQL, executemany elsewhere.

    Identifiers and types are validated here, before any connection is opened.
    """
    if hook is None and is_bigquery_connection(conn_id):
        return BigQueryTableSink(
            BigQueryClients(conn_id),
            table,
            key_column=key_column,
            key_column_type=key_column_type,
            output_columns=output_columns,
            errors_table=errors_table,
            create_table=create_table,
            time_partitioning=time_partitioning,
            cluster_fields=cluster_fields,
            attempts=attempts,
        )
    if time_partitioning or cluster_fields:
        raise GeminiBatchInputError(
            "time_partitioning and cluster_fields are BigQuery table options; the destination connection "
            f"{conn_id!r} is not a google_cloud_platform one."
        )
    split_table(table)  # refuse SQL in the name before even resolving the connection
    hook = hook or get_db_hook(conn_id)
    dialect = dialect_of(hook)
    layout = TableLayout(
        table=table,
        dialect=dialect,
        key_column=key_column,
        key_column_type=key_column_type,
        output_columns=dict(output_columns or {}),
        errors_table=errors_table,
    )
    cls = PostgresTableSink if dialect == POSTGRES else TableSink
    return cls(hook, layout, create_table=create_table, attempts=attempts)
