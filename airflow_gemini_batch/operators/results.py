"""GeminiBatchLoadResultsOperator: batch results → a warehouse table (upsert on key) or object storage.

Thin by design: :class:`~airflow_gemini_batch.results.load_run.LoadRun` owns the load, its order and its
invariants (every key ends in exactly one outcome; results stream to the sink, never through XCom;
``max_failed_fraction`` is checked only after everything is written). The operator validates and stores its
arguments, runs a ``LoadRun``, pushes its summary, then fails the task if too many keys failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator

from airflow_gemini_batch.lineage import LoadLineage, destination_alias_name, destination_place
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import RESULTS_SUMMARY_XCOM_KEY
from airflow_gemini_batch.results.load_run import LoadRun, LoadSettings
from airflow_gemini_batch.vertex.gcs_predictions import VertexGcsLoadRun
from airflow_gemini_batch.vertex.predictions_load import VertexLoadRun

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_gemini_batch.storage import AnyPath


class GeminiBatchLoadResultsOperator(LoadLineage, BaseOperator):
    """Load the results of the batch jobs in a submit manifest into a table or onto object storage.

    Exactly one of ``destination_table`` (with ``destination_conn_id``) and ``destination_path``.

    The destination is published as an Airflow Asset (through the ``AssetAlias``
    ``gemini_batch:<dag_id>.<task_id>`` this task declares, unless ``outlets`` are given) and as the
    OpenLineage output dataset.

    :param manifest: the submit operator's manifest (usually its XComArg). (templated)
    :param gemini_conn_id: Gemini connection; default: the manifest's. (templated)
    :param destination_conn_id: a common-sql connection (SQLite, PostgreSQL) or a ``google_cloud_platform``
        one (BigQuery) for ``destination_table``. (templated)
    :param destination_table: ``table`` or ``schema.table`` (BigQuery: ``dataset.table`` or
        ``project.dataset.table``); created if missing; one row per input key, upserted on the key (BigQuery:
        load jobs into a staging table, then one MERGE), every outcome (filter on ``outcome``). (templated)
    :param errors_table: where non-succeeded keys are mirrored; default ``<destination_table>_errors``.
        (templated)
    :param destination_path: a folder (ObjectStoragePath URI, e.g. ``gs://<conn_id>@bucket/prefix``, or local
        path) for ``results.jsonl`` / ``results.parquet`` and ``errors.jsonl``, replaced when the load
        succeeds, left as they were when it fails. (templated)
    :param output_format: ``jsonl`` or ``parquet`` for ``destination_path``.
    :param key_column: name of the key column in the destination.
    :param key_column_type: its SQL type (``INTEGER`` when the submitted keys are ints: they travel as
        strings and are stored as integers, also as int64 in Parquet and numbers in JSONL).
    :param output_columns: structured-output fields to copy into typed columns, e.g.
        ``{"sentiment": "TEXT", "score": "REAL"}`` (types from a per-dialect whitelist).
    :param create_table: create the tables when missing.
    :param time_partitioning: BigQuery only: the destination's ``timePartitioning`` when this task creates it
        (API form, e.g. ``{"type": "DAY", "field": "loaded_at"}``).
    :param cluster_fields: BigQuery only: the destination's clustering columns when this task creates it.
    :param max_failed_fraction: the largest share of non-succeeded keys that still passes (default 0: any
        failure fails the task, after loading).
    :param prices: price overrides ``{model: {"input": ..., "output": ..., ...}}`` (USD per 1M tokens).
    :param chunk_size: rows per write to the sink.
    :param download_dir: where responses files are downloaded (default: a temp dir, removed afterwards).
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = (
        "manifest",
        "gemini_conn_id",
        "destination_conn_id",
        "destination_table",
        "errors_table",
        "destination_path",
    )
    ui_color = "#c9e7f5"
    # Set from LoadSettings in __init__ (one attribute per field), declared here for the type checker.
    destination_conn_id: str | None
    destination_table: str | None
    destination_path: AnyPath | None

    def __init__(
        self,
        *,
        manifest: Any,
        gemini_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        destination_table: str | None = None,
        errors_table: str | None = None,
        destination_path: AnyPath | None = None,
        output_format: str = "jsonl",
        key_column: str = "key",
        key_column_type: str = "TEXT",
        output_columns: dict[str, str] | None = None,
        create_table: bool = True,
        time_partitioning: dict[str, Any] | None = None,
        cluster_fields: list[str] | None = None,
        max_failed_fraction: float = 0.0,
        prices: dict[str, dict[str, float]] | None = None,
        chunk_size: int = 5_000,
        download_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Each argument named like a LoadSettings field is validated here, then kept (and rendered) as is.
        settings = LoadSettings.of(locals()).validated()
        for name in LoadSettings.names():
            setattr(self, name, getattr(settings, name))
        self.manifest = manifest
        self.gemini_conn_id = gemini_conn_id
        if not self.outlets:
            self.outlets = [AssetAlias(name=destination_alias_name(self.dag_id, self.task_id))]
        self._summary: dict[str, Any] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        # A Vertex AI BigQuery run is loaded in BigQuery (one MERGE from its prediction table), not downloaded.
        vertex = self.manifest if isinstance(self.manifest, dict) else {}
        load_run = (
            VertexLoadRun
            if vertex.get("vertex")
            else VertexGcsLoadRun
            if vertex.get("vertex_gcs")
            else LoadRun
        )
        run = load_run(self.manifest, LoadSettings.of(self), self.log, gemini_conn_id=self.gemini_conn_id)
        summary = self._summary = run.execute()
        # Pushed before the failure check: a task failed for too many failures still shows what was loaded.
        context["ti"].xcom_push(key=RESULTS_SUMMARY_XCOM_KEY, value=summary)
        self._publish_asset(context, summary)
        run.raise_for_failures(summary)
        return summary

    def _publish_asset(self, context: Context, summary: dict[str, Any]) -> None:
        """An asset event for the concrete destination, through the alias this task declared."""
        aliases = [o for o in self.outlets if isinstance(o, AssetAlias)]
        events = context.get("outlet_events")  # absent when execute() is called outside a task run
        place = destination_place(self.destination_conn_id, self.destination_table, self.destination_path)
        if not aliases or events is None or place is None:
            return
        for alias in aliases:
            events[alias].add(place.asset(), extra={"counts": summary["counts"]})
