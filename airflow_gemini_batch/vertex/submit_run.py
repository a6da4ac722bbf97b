"""VertexBigQueryRun: a BigQuery source → one Vertex AI batch prediction job, ``bq://`` in and ``bq://`` out.

Invariants:

* No row passes through the worker: the request table is built and checked in BigQuery
  (:mod:`~airflow_gemini_batch.vertex.request_table`); the worker sees counts and the first keys of invalid
  rows, and the job names. The job reads ``bq://<request table>`` and writes ``bq://<prediction table>``; the
  key column passes through Vertex into the predictions.
* Idempotent like every submit (:mod:`~airflow_gemini_batch.submit.ledger`): the run-stable identity and a
  fingerprint of the run's *specification* (model, source SQL or table, parameters, prompt, job-wide request
  parts — not the rows, which the worker never reads) give the job a deterministic display name; the header,
  the intent (right before ``create``) and the job name (right after) go to the task state store. A retry or a
  clear re-attaches to the recorded job; a recorded intent without a name is looked up by display name, and so
  is a job whose records are gone but whose request table exists (it is built right before the create: a
  DAG run made again for the same logical date); a first try with neither looks nothing up; a recorded job that ended FAILED, EXPIRED or CANCELLED is
  followed by one new job (``-r<n>``, its own request and prediction tables) with ``on_failed_job="resubmit"``.
* ``create`` is called once per attempt and not retried: an error after the intent leaves the intent, so the
  next try finds the job if the service made one before answering.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.hooks.bigquery import BigQueryClients, is_bigquery_connection
from airflow_gemini_batch.hooks.job_status import CANCELLED, EXPIRED, FAILED
from airflow_gemini_batch.inputs.requests import RequestSpec
from airflow_gemini_batch.manifest import MANIFEST_KIND, Manifest, ShardInfo
from airflow_gemini_batch.sinks.schema import check_identifier
from airflow_gemini_batch.submit.ledger import RunIdentity, SubmissionLedger, display_name
from airflow_gemini_batch.vertex.limits import refuse_on_vertex
from airflow_gemini_batch.vertex.request_table import RequestSql, RequestTable

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_gemini_batch.hooks.bigquery import TableId
    from airflow_gemini_batch.hooks.job_status import JobStatus
    from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook
    from airflow_gemini_batch.submit.run import SubmitSettings

BACKEND = "vertex"
DEFAULT_VERTEX_DATASET = "gemini_batch_vertex"
BAD_STATES = frozenset({FAILED, EXPIRED, CANCELLED})


def is_bigquery_source(settings: SubmitSettings) -> bool:
    """A BigQuery table or query (``sql`` / ``source_table`` on a ``google_cloud_platform`` connection): this
    path; any other source goes through Cloud Storage (:mod:`~airflow_gemini_batch.vertex.gcs_run`)."""
    return bool(settings.sql or settings.source_table) and is_bigquery_connection(settings.source_conn_id)


def refuse_unsupported(settings: SubmitSettings) -> None:
    """What the Vertex AI BigQuery path does not do, refused before any call, with the alternative."""
    problems = []
    if settings.request_builder is not None:
        problems.append(
            "request_builder runs Python per row; give request_sql (a BigQuery expression) instead"
        )
    if settings.incremental:
        problems.append("incremental runs are not built for the Vertex AI path yet")
    if not is_bigquery_source(settings):
        problems.append(
            "the source must be a BigQuery table or query (sql / source_table on a google_cloud_platform "
            "source_conn_id); other sources need the gs:// path"
        )
    refuse_on_vertex(settings, problems)


class VertexBigQueryRun:
    """Build the request table in BigQuery and create (or re-attach to) the run's Vertex AI job.

    :param hook: the Vertex AI hook (``gemini_conn_id`` is a ``google_cloud_platform`` connection).
    :param settings: the submit operator's arguments (``request_sql`` gives the request as SQL).
    """

    def __init__(self, hook: GeminiVertexBatchHook, settings: SubmitSettings, log: Any = None) -> None:
        refuse_unsupported(settings)
        self.hook = hook
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.clients = BigQueryClients(str(settings.source_conn_id))
        self.spec = RequestSpec(
            key_column=settings.key_column,
            prompt_column=settings.prompt_column,
            prompt_template=settings.prompt_template,
            system_instruction=settings.system_instruction,
            generation_config=settings.generation_config,
            response_schema=settings.response_schema,
            tools=settings.tools,
            safety_settings=settings.safety_settings,
            max_request_bytes=settings.max_request_bytes,
        )
        self.request_sql = RequestSql.of(
            prompt_column=settings.prompt_column,
            prompt_template=settings.prompt_template,
            request_sql=settings.request_sql,
        )
        self.model = str(settings.model)
        self.created_jobs: list[str] = []

    # ---- what the run is -----------------------------------------------------------------------------------

    def source_sql(self) -> str:
        s = self.settings
        if s.sql:
            return str(s.sql).strip().rstrip(";")
        table = self.clients.table_id(str(s.source_table), "source_table")
        columns = (
            ", ".join(f"`{check_identifier(c, 'source column')}`" for c in s.source_columns or ()) or "*"
        )
        return f"SELECT {columns} FROM {table.sql}"

    def fingerprint(self) -> str:
        s = self.settings
        spec = {
            "model": self.model,
            "source": self.source_sql(),
            "parameters": s.parameters,
            "prompt": [self.request_sql.prompt, self.request_sql.request, self.request_sql.parameters],
            "job_wide": self.spec.job_wide(),
            "key": s.key_column,
        }
        return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()

    def dataset(self) -> str:
        return str(self.settings.bigquery_temp_dataset or DEFAULT_VERTEX_DATASET)

    def tables(self, display: str) -> tuple[TableId, TableId]:
        """The request and prediction tables of one job (named after its display name: one pair per job)."""
        base = display.replace("-", "_")
        request = self.clients.table_id(f"{self.dataset()}.{base}_requests", "bigquery_temp_dataset")
        return request, request.sibling(f"{base}_predictions")

    def _ensure_dataset(self, table: TableId) -> None:
        from google.cloud.bigquery import Dataset

        dataset = Dataset(f"{table.project}.{table.dataset}")
        if self.clients.location:
            dataset.location = self.clients.location
        self.clients.client.create_dataset(dataset, exists_ok=True)

    # ---- the run -------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Manifest:
        identity = RunIdentity.from_context(context)
        fingerprint = self.fingerprint()
        ledger = SubmissionLedger(context.get("task_state_store"))
        ti = context["ti"]
        generation = ledger.begin(
            identity=identity,
            fingerprint=fingerprint,
            shard_count=1,
            on_changed_input=self.settings.on_changed_input,
            force_resubmit=self.settings.force_resubmit,
            force_token=getattr(ti, "max_tries", None),
        )
        rec = ledger.shard(0)
        if rec.get("fingerprint") != fingerprint or rec.get("generation", 0) != generation:
            rec = {
                "fingerprint": fingerprint,
                "generation": generation,
                "display_name": display_name(identity.hash, fingerprint, 0, generation),
            }
        shard: ShardInfo = {"index": 0, "display_name": rec["display_name"], "job_name": None}
        if rec.get("previous_jobs"):
            shard["previous_jobs"] = list(rec["previous_jobs"])
            shard["recovery"] = int(rec.get("recovery", 0))
        job = self._existing_job(ledger, rec)
        if job is not None and job.state in BAD_STATES and self.settings.on_failed_job == "resubmit":
            recovery = int(rec.get("recovery", 0))
            previous = [*rec.get("previous_jobs", []), job.name]
            self.log.warning(
                "Vertex AI job %s ended %s (%s); submitting its next generation alone (on_failed_job='resubmit')",
                job.name,
                job.state,
                (job.error or {}).get("message", "no error message"),
            )
            name = display_name(identity.hash, fingerprint, 0, generation, recovery + 1)
            rec = {**rec, "display_name": name, "recovery": recovery + 1, "previous_jobs": previous}
            rec.pop("job_name", None)
            rec.pop("intent", None)
            ledger.record_recovery(0, rec)
            shard["display_name"], shard["recovery"], shard["previous_jobs"] = name, recovery + 1, previous
            job = None
        request_table, prediction_table = self.tables(rec["display_name"])
        request_count = int(rec.get("request_count", 0))
        skipped = int(rec.get("skipped_count", 0))
        if job is None:
            check = self._build_requests(request_table)
            request_count, skipped = check[0], check[1]
            rec["request_count"], rec["skipped_count"] = request_count, skipped
            if request_count:
                job = self._create(ledger, rec, request_table, prediction_table)
        else:
            self.log.info("Re-attached to Vertex AI job %s (%s): nothing created", job.name, job.state)
            if "request_count" not in rec:  # found by display name: its records are gone; count in BigQuery
                request_count = rec["request_count"] = self._count(request_table)
                ledger.record_job(0, rec, job.name)
        shard["request_count"] = request_count
        shard["keys_path"] = f"bq://{request_table}"  # the keys are the request table's key column
        if job is not None:
            shard["job_name"] = job.name
        return self._manifest(identity, fingerprint, [shard] if job else [], request_table, prediction_table,
                              request_count, skipped)  # fmt: skip

    def _existing_job(self, ledger: SubmissionLedger, rec: dict[str, Any]) -> JobStatus | None:
        """The recorded job; or, after an intent without a name (or with no store), the one found by display
        name; None when the records prove no create was attempted."""
        if rec.get("job_name"):
            return self.hook.get_job(rec["job_name"])
        if ledger.durable and not rec.get("intent") and not self._request_table_exists(rec["display_name"]):
            return None
        found = self.hook.find_job_by_display_name(rec["display_name"])
        if found is not None:
            self.log.warning(
                "Found Vertex AI job %s by its display name (its name was never recorded)", found.name
            )
            ledger.record_job(0, rec, found.name)
        return found

    def _count(self, table: TableId) -> int:
        """The request table's rows, counted by BigQuery (one answer row)."""
        job = self.clients.client.query(
            f"SELECT COUNT(*) AS n FROM {table.sql}", location=self.clients.location
        )
        return int(next(iter(job.result()))["n"])

    def _request_table_exists(self, display: str) -> bool:
        """The create marker of a run whose records are gone (a DAG run made again for the same logical date):
        the request table is built right before the create, so without it no create was attempted."""
        from google.api_core.exceptions import NotFound

        try:
            self.clients.client.get_table(str(self.tables(display)[0]))
        except NotFound:
            return False
        return True

    def _build_requests(self, table: TableId) -> tuple[int, int]:
        self._ensure_dataset(table)
        requests = RequestTable(
            self.clients,
            table,
            key_column=self.settings.key_column,
            source_sql=self.source_sql(),
            request_sql=self.request_sql,
            job_wide=self.spec.job_wide(),
            source_parameters=self.settings.parameters,
            max_request_bytes=self.settings.max_request_bytes,
        )
        requests.build()
        first = requests.check()
        check = requests.enforce(first, self.settings.on_invalid_row)
        self.log.info(
            "Request table %s: %d request(s), %d bytes, %d skipped (counted in BigQuery; no row read here)",
            table,
            check.total,
            check.request_bytes,
            first.total - check.total,
        )
        return check.total, first.total - check.total

    def _create(
        self, ledger: SubmissionLedger, rec: dict[str, Any], request_table: TableId, prediction_table: TableId
    ) -> JobStatus:
        ledger.record_intent(0, rec)
        job = self.hook.create_job(
            model=self.model,
            display_name=rec["display_name"],
            src=f"bq://{request_table}",
            dest=f"bq://{prediction_table}",
        )
        ledger.record_job(0, rec, job.name)
        self.created_jobs.append(job.name)
        self.log.info(
            "Created Vertex AI job %s (%s) reading bq://%s", job.name, rec["display_name"], request_table
        )
        return job

    def _manifest(
        self,
        identity: RunIdentity,
        fingerprint: str,
        shards: list[ShardInfo],
        request_table: TableId,
        prediction_table: TableId,
        request_count: int,
        skipped: int,
    ) -> Manifest:
        manifest = Manifest(
            kind=MANIFEST_KIND,
            version=1,
            gemini_conn_id=self.hook.gemini_conn_id,
            task=self.settings.task,
            model=self.model,
            identity=identity.text,
            fingerprint=fingerprint,
            response_schema=self.spec.response_schema,
            staging_path="",
            dag_id=identity.dag_id,
            run_id=identity.run_id,
            task_id=identity.task_id,
            map_index=identity.map_index,
            shards=shards,
            request_count=request_count,
            skipped_count=skipped,
            skipped_keys_path=None,
            estimate=None,
            incremental=False,
            reused=0,
            reused_cost_usd=None,
        )
        manifest["vertex"] = {
            "backend": BACKEND,
            "bigquery_conn_id": str(self.settings.source_conn_id),
            "request_table": str(request_table),
            "prediction_table": str(prediction_table),
            "key_column": self.settings.key_column,
        }
        return manifest

    def cancel_created_jobs(self) -> None:
        for name in self.created_jobs:
            self.hook.cancel_job(name)
