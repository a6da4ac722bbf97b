"""Names for the tables and files a run reads and writes: Airflow Assets and OpenLineage datasets.

Invariants:

* One name per place, derived from the connection, never from row data: the same table gets the same Asset
  URI and the same OpenLineage dataset on every run, so downstream DAGs scheduled on it and lineage graphs
  join up with what other operators (common-sql, the Google provider) publish for that table.
* Naming follows each side's conventions. PostgreSQL: Asset ``postgres://host:port/db/schema/table`` (the
  postgres provider's AIP-60 form) and dataset ``postgres://host:port`` + ``db.schema.table`` (the
  OpenLineage naming spec, through the hook's own ``get_openlineage_database_info``). Files: the common-io
  ``file://`` form, or the object store's own URI (``s3://bucket/key``, ``gs://bucket/key``).
* BigQuery: the Google provider's own names, through its helpers (``providers.google.assets.bigquery``):
  Asset ``bigquery://project/dataset/table`` and dataset namespace ``bigquery``, name
  ``project.dataset.table`` - what its BigQuery operators publish. A ``dataset.table`` without a project gets
  the connection's project, as the load and the source do.
* SQLite has no scheme in either, so it gets one of ours, documented in the README: Asset
  ``x-sqlite://localhost/<absolute db path>/<table>`` (the ``x-`` prefix is Airflow's mark for a scheme no
  provider handles) and dataset namespace ``sqlite://localhost``, name ``<absolute db path>.main.<table>``.
* Lineage never fails a task: a place that cannot be named (an unknown connection type, a SQL that is not a
  single-table SELECT) is left out, with a debug line.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_gemini_batch.storage import uri_of

if TYPE_CHECKING:
    from airflow.sdk import Asset
    from airflow.sdk.definitions.connection import Connection

    from airflow_gemini_batch.storage import AnyPath

log = logging.getLogger(__name__)

SQLITE_ASSET_SCHEME = "x-sqlite"
SQLITE_NAMESPACE = "sqlite://localhost"


@dataclass(frozen=True)
class LineagePlace:
    """One table or file, named for Airflow (``asset_uri``) and for OpenLineage (``namespace`` + ``name``)."""

    asset_uri: str
    namespace: str
    name: str

    def asset(self) -> Asset:
        from airflow.sdk import Asset

        return Asset(uri=self.asset_uri, name=self.asset_uri)

    def dataset(self) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset

        return Dataset(namespace=self.namespace, name=self.name)


def table_place(conn_id: str, table: str) -> LineagePlace | None:
    """The table ``table`` on the connection ``conn_id``: ``name`` or ``schema.name`` on a common-sql
    connection, ``dataset.table`` or ``project.dataset.table`` on a BigQuery one."""
    from airflow.sdk import BaseHook

    from airflow_gemini_batch.hooks.bigquery import GCP_CONN_TYPE

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type == GCP_CONN_TYPE:
        return bigquery_place(conn_id, table)
    *qualifiers, name = table.split(".")  # a database part (db.schema.table) is the connection's anyway
    schema = qualifiers[-1] if qualifiers else None
    if conn.conn_type in ("postgres", "postgresql"):
        return _postgres_place(conn, schema or "public", name)
    if conn.conn_type == "sqlite":
        return _sqlite_place(conn, name)
    log.debug("No lineage naming for connection type %r (%s)", conn.conn_type, conn_id)
    return None


def _postgres_place(conn: Connection, schema: str, table: str) -> LineagePlace:
    from airflow.providers.openlineage.sqlparser import SQLParser
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    info = PostgresHook(postgres_conn_id=conn.conn_id).get_openlineage_database_info(conn)
    namespace = SQLParser.create_namespace(info)
    return LineagePlace(
        asset_uri=f"postgres://{info.authority}/{info.database}/{schema}/{table}",
        namespace=namespace,
        name=f"{info.database}.{schema}.{table}",
    )


def bigquery_place(conn_id: str, table: str) -> LineagePlace:
    """A BigQuery table, named by the Google provider's asset helpers (its URI and its OpenLineage dataset)."""
    from airflow.providers.google.assets.bigquery import convert_asset_to_openlineage, create_asset

    from airflow_gemini_batch.hooks.bigquery import BigQueryClients

    table_id = BigQueryClients(conn_id).table_id(table)
    asset = create_asset(project_id=table_id.project, dataset_id=table_id.dataset, table_id=table_id.table)
    dataset = convert_asset_to_openlineage(asset, None)
    return LineagePlace(asset_uri=asset.uri, namespace=dataset.namespace, name=dataset.name)


def _sqlite_place(conn: Connection, table: str) -> LineagePlace:
    path = os.path.abspath(conn.host or "")
    return LineagePlace(
        asset_uri=f"{SQLITE_ASSET_SCHEME}://localhost{path}/{table}",
        namespace=SQLITE_NAMESPACE,
        name=f"{path}.main.{table}",
    )


def path_place(where: AnyPath) -> LineagePlace:
    """A file or folder: a local path, a ``file://`` URI, an object-store URI or an ``ObjectStoragePath``."""
    uri = uri_of(where)
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        path = os.path.abspath(parts.path if parts.scheme else uri)
        return LineagePlace(asset_uri=f"file://{path}", namespace="file", name=path)
    path = parts.path or "/"
    bucket = parts.netloc.rpartition("@")[2]  # gs://<conn_id>@bucket/...: the connection is not the place
    return LineagePlace(
        asset_uri=f"{parts.scheme}://{bucket}{path}",
        namespace=f"{parts.scheme}://{bucket}",
        name=path.lstrip("/") or "/",
    )


def sql_source_place(conn_id: str, sql: str) -> LineagePlace | None:
    """The table a single-table SELECT reads, parsed with the OpenLineage provider's own SQL parser (in the
    BigQuery dialect on a BigQuery connection: `project.dataset.table` in backticks is one name there)."""
    from airflow.providers.openlineage.sqlparser import SQLParser
    from airflow.sdk import BaseHook

    from airflow_gemini_batch.hooks.bigquery import GCP_CONN_TYPE

    bigquery = BaseHook.get_connection(conn_id).conn_type == GCP_CONN_TYPE
    try:
        meta = SQLParser(dialect="bigquery" if bigquery else None).parse(sql)
    except Exception as error:  # the parser is best effort; lineage must never fail the task
        log.debug("Could not parse the source SQL for lineage: %s", error)
        return None
    if meta is None or len(meta.in_tables) != 1:
        return None
    table = meta.in_tables[0]
    return table_place(conn_id, ".".join(p for p in (table.database, table.schema, table.name) if p))


@functools.cache
def _run_facet_class() -> type:
    """Built on first use: the OpenLineage client is an optional dependency (the ``openlineage`` extra)."""
    import attrs
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    @attrs.define
    class GeminiBatchRunFacet(RunFacet):
        """Which batch jobs a task used, its counts per outcome, its tokens and its cost."""

        jobs: list[str] = attrs.field(factory=list)
        requestCount: int | None = None
        counts: dict[str, int] = attrs.field(factory=dict)
        tokens: dict[str, int] = attrs.field(factory=dict)
        cost: dict[str, Any] = attrs.field(factory=dict)

        @staticmethod
        def _get_schema() -> str:
            return "https://github.com/airflow-gemini-batch/airflow-gemini-batch/GeminiBatchRunFacet.json"

    return GeminiBatchRunFacet


def run_facet(
    *,
    jobs: list[str],
    request_count: int | None = None,
    counts: dict[str, int] | None = None,
    tokens: dict[str, int] | None = None,
    cost: dict[str, Any] | None = None,
) -> Any:
    """The ``geminiBatch`` run facet of a submit or load task."""
    return _run_facet_class()(
        jobs=list(jobs),
        requestCount=request_count,
        counts=dict(counts or {}),
        tokens=dict(tokens or {}),
        cost=dict(cost or {}),
    )


def operator_lineage(
    inputs: list[LineagePlace | None], outputs: list[LineagePlace | None], facet: Any | None
) -> Any:
    """An ``OperatorLineage`` of the named places (those that could not be named are left out)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[p.dataset() for p in inputs if p is not None],
        outputs=[p.dataset() for p in outputs if p is not None],
        run_facets={"geminiBatch": facet} if facet is not None else {},
    )


def safely(build: Any) -> Any:
    """Call ``build()``; any error is logged and gives ``None``: lineage never fails a task."""
    try:
        return build()
    except Exception as error:
        log.warning("Could not name a lineage place: %s: %s", type(error).__name__, error)
        return None


class OpenLineageMixin:
    """``get_openlineage_facets_on_complete`` / ``_on_failure`` for an operator that names what it used.

    The operator implements :meth:`lineage`; this turns it into the provider's ``OperatorLineage``. On
    failure the same places are reported with what the task knew by then, so a failed load still shows
    which table it was writing.
    """

    def lineage(self) -> tuple[list[LineagePlace | None], list[LineagePlace | None], Any]:
        raise NotImplementedError

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(*self.lineage())

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return operator_lineage(*self.lineage())


def submit_lineage(
    *,
    source_conn_id: str | None,
    sql: str | None,
    input_path: AnyPath | None,
    manifest: dict[str, Any] | None,
    source_table: str | None = None,
) -> tuple[list[LineagePlace | None], list[LineagePlace | None], Any]:
    """The submit task read its source table (a single-table SELECT, or a BigQuery ``source_table``) or its
    input file."""
    source: LineagePlace | None = None
    if sql and source_conn_id:
        source = safely(lambda: sql_source_place(source_conn_id, sql))
    elif source_table and source_conn_id:
        source = safely(lambda: table_place(source_conn_id, source_table))
    elif input_path:
        source = safely(lambda: path_place(input_path))
    shards = (manifest or {}).get("shards") or []
    facet = run_facet(
        jobs=[s["job_name"] for s in shards if s.get("job_name")],
        request_count=(manifest or {}).get("request_count"),
    )
    return [source], [], facet


def load_lineage(
    *,
    destination_conn_id: str | None,
    destination_table: str | None,
    destination_path: AnyPath | None,
    summary: dict[str, Any] | None,
) -> tuple[list[LineagePlace | None], list[LineagePlace | None], Any]:
    """The load task wrote its destination table or folder."""
    summary = summary or {}
    facet = run_facet(
        jobs=[j["job_name"] for j in summary.get("jobs") or [] if j.get("job_name")],
        request_count=summary.get("request_count"),
        counts=summary.get("counts"),
        tokens=summary.get("tokens"),
        cost=summary.get("cost"),
    )
    return [], [destination_place(destination_conn_id, destination_table, destination_path)], facet


def destination_place(conn_id: str | None, table: str | None, path: AnyPath | None) -> LineagePlace | None:
    """The load's destination: a table on a common-sql connection, or a folder."""
    if table and conn_id:
        return safely(lambda: table_place(conn_id, table))
    if path:
        return safely(lambda: path_place(path))
    return None


def destination_alias_name(dag_id: str, task_id: str) -> str:
    """The AssetAlias a load task declares: its destination is only known once templates are rendered."""
    return f"gemini_batch:{dag_id}.{task_id}"


class SubmitLineage(OpenLineageMixin):
    """For the submit operator: its source, and the manifest its ``execute`` kept in ``_manifest``."""

    source_conn_id: str | None
    sql: str | None
    source_table: str | None
    input_path: AnyPath | None
    _manifest: Any

    def lineage(self) -> tuple[list[LineagePlace | None], list[LineagePlace | None], Any]:
        return submit_lineage(
            source_conn_id=self.source_conn_id,
            sql=self.sql,
            source_table=self.source_table,
            input_path=self.input_path,
            manifest=dict(self._manifest) if self._manifest else None,
        )


class LoadLineage(OpenLineageMixin):
    """For the load operator: its destination, and the summary its ``execute`` kept in ``_summary``."""

    destination_conn_id: str | None
    destination_table: str | None
    destination_path: AnyPath | None
    _summary: dict[str, Any] | None

    def lineage(self) -> tuple[list[LineagePlace | None], list[LineagePlace | None], Any]:
        return load_lineage(
            destination_conn_id=self.destination_conn_id,
            destination_table=self.destination_table,
            destination_path=self.destination_path,
            summary=self._summary,
        )
