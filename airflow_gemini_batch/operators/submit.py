"""GeminiBatchSubmitOperator: warehouse rows (or a list, or a JSONL file) → validated shards → batch jobs.

Thin by design: :class:`~airflow_gemini_batch.submit.run.SubmitRun` owns the submission, its order and its
invariants; the operator runs it round by round (deferring between admission rounds under the quotas,
:mod:`airflow_gemini_batch.submit.admission`), pushes its manifest and may wait the sensor's way
(``JobWaiter``)."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_gemini_batch.exceptions import GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook
from airflow_gemini_batch.lineage import SubmitLineage
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import MANIFEST_XCOM_KEY, Manifest, job_names
from airflow_gemini_batch.submit.admission import (
    DEFAULT_MAX_CONCURRENT_JOBS,
    AdmissionPending,
    AdmissionState,
)
from airflow_gemini_batch.submit.run import SubmitRun, SubmitSettings
from airflow_gemini_batch.triggers.admission import GeminiBatchAdmissionTrigger
from airflow_gemini_batch.vertex.gcs_run import VertexGcsRun
from airflow_gemini_batch.vertex.submit_run import VertexBigQueryRun, is_bigquery_source
from airflow_gemini_batch.wait.verdict import DEFAULT_TIMEOUT_SECONDS, DEFER_TIMEOUT_SLACK_SECONDS, WaitPolicy
from airflow_gemini_batch.wait.waiter import JobWaiter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context

    from airflow_gemini_batch.storage import AnyPath


class GeminiBatchSubmitOperator(SubmitLineage, BaseOperator):
    """Submit rows as Gemini Batch Mode jobs (half price, answers within 24 h) and return a small manifest.

    :param sql: a SELECT on ``source_conn_id`` (give one of sql, source_table, requests, input_path); streamed.
        On a ``google_cloud_platform`` connection it runs as a BigQuery job into a temporary table that is
        read with the Storage Read API. (templated)
    :param source_conn_id: any common-sql connection (sqlite, postgres, ...) or a ``google_cloud_platform``
        one (BigQuery). (templated)
    :param parameters: query parameters (for BigQuery: a dict for ``@name``, a list for ``?``). (templated)
    :param source_table: a BigQuery table (``dataset.table`` or ``project.dataset.table``) read directly
        with the Storage Read API, on the ``google_cloud_platform`` connection ``source_conn_id``. (templated)
    :param source_columns: with ``source_table``: the columns to read (default all).
    :param bigquery_temp_dataset: the dataset (created when missing) for a BigQuery ``sql``'s result table,
        deleted after the read (default ``gemini_batch_tmp``). (templated)
    :param requests: a list: prompts (key = position), row dicts or ``{"key", "request"}`` dicts. (templated)
    :param input_path: an existing JSONL file of ``{"key", "request"}`` lines (local path or URI). (templated)
    :param task: ``"generate"`` (GenerateContent) or ``"embed"`` (embeddings batch).
    :param model: default ``gemini-2.5-flash``, or ``gemini-embedding-001`` for ``task="embed"``. (templated)
    :param key_column: the column whose value keys each request and its answer. (templated)
    :param prompt_column: the column holding the prompt (the SQL builds it). (templated)
    :param prompt_template: a prompt with ``{column}`` placeholders; values are inserted literally, never
        evaluated; ``{{``/``}}`` are literal braces. (templated: Jinja renders it once, before any row is
        read, so ``{{ ds }}`` works; a literal brace pair needs Jinja escaping: ``{% raw %}{{{% endraw %}``)
    :param request_builder: a callable ``row dict → GenerateContentRequest dict`` (REST camelCase names).
    :param request_sql: Vertex AI with a BigQuery source only: a BigQuery expression over the source's columns
        giving each row's whole request JSON (instead of a prompt); evaluated in BigQuery. (templated)
    :param system_instruction: text (or a Content dict) added to every request. (templated)
    :param generation_config: GenerationConfig fields (snake_case or camelCase). (templated)
    :param response_schema: a JSON-schema dict or a pydantic model class; sets ``responseMimeType``
        ``application/json`` and ``responseJsonSchema``; stored in the manifest for result classification.
    :param tools: tools for every request (e.g. ``[{"googleSearch": {}}]``).
    :param safety_settings: SafetySetting dicts for every request.
    :param cached_content: an existing ``cachedContents/...`` name used by every request (yours: never
        deleted). (templated)
    :param shared_context: a long prefix shared by every request (text, a Content dict, or a list of them):
        cached once for the run (with ``system_instruction`` and ``tools``), referenced by every request,
        deleted after the load, on a kill and on a final failure. At least the model's minimum cacheable size
        (2.5 Flash 1 024 tokens, 2.5 Pro 4 096), else refused before any call. (templated)
    :param cache_ttl_seconds: the cache's TTL (default 6 h), renewed while the wait runs; the backstop when
        nothing deletes it.
    :param embedding_task_type: embeddings ``taskType`` (e.g. ``RETRIEVAL_DOCUMENT``).
    :param output_dimensionality: embeddings ``outputDimensionality``.
    :param on_invalid_row: ``"fail"`` (default; nothing is submitted, the error names the keys) or ``"skip"``
        (invalid rows are counted, logged and listed in ``skipped_keys.jsonl`` under the staging path).
    :param max_request_bytes: per-request limit of one JSON line (default 10 MiB).
    :param max_bytes_per_job: shard file limit (default 1.9 GB, under the 2 GB File API limit).
    :param max_requests_per_job: requests per shard (default 100 000).
    :param max_tokens_per_job: estimated tokens per shard (~4 bytes/token), e.g. your tier's token quota.
    :param max_jobs: a safety cap: refuse a run needing more shards (default 100), before any upload.
    :param max_concurrent_jobs: at most this many of the run's jobs unfinished at once (default 100, the
        service's limit per project); the other shards wait for headroom and are submitted in later rounds.
    :param max_enqueued_tokens: at most this many estimated tokens (~4 bytes/token) in the run's unfinished
        jobs, e.g. your tier's enqueued-token quota for the model (README: Quotas); None: unlimited. Also caps
        each shard, so every shard fits alone.
    :param inline_threshold_bytes: a lone shard up to this size is sent inline (at most 20 MB; generate only).
    :param staging_path: ObjectStoragePath URI for key lists and skipped keys. Default: a local folder
        ``<tempdir>/gemini-batch/<identity>`` — multi-worker deployments need shared storage here. (templated)
    :param fetch_batch_size: rows per fetch; bounds memory.
    :param on_changed_input: if a retry's input differs from its recorded jobs': ``"fail"`` or ``"resubmit"``.
    :param force_resubmit: new jobs for every shard even if already submitted (each try with it pays again).
    :param on_failed_job: on a retry / clear, a shard whose job ended FAILED, EXPIRED or CANCELLED is sent
        alone again (``"resubmit"``) or re-attached, so the wait fails as before (``"fail"``).
    :param keep_uploaded_files: keep the uploaded input files after their jobs finished (default: the load
        deletes them; Files API storage is 20 GB per project, and the service deletes them after 48 h).
    :param incremental: leave out the rows whose answer is already in the load's destination table for the
        same request fingerprint (model + job-wide config + request); they are counted as ``reused`` and their
        rows stay as they are. Default False: a re-run sends every row, as before. Needs ``destination_conn_id``
        and ``destination_table`` (and ``destination_key_column``), the load's values: a SQLite, PostgreSQL or
        BigQuery (``google_cloud_platform``) table.
    :param destination_conn_id: with ``incremental``: the load's ``destination_conn_id``. (templated)
    :param destination_table: with ``incremental``: the load's ``destination_table``. (templated)
    :param destination_path: the load's ``destination_path``; refused with ``incremental`` (object-store
        output is rewritten whole by each load). (templated)
    :param destination_key_column: with ``incremental``: the load's ``key_column``. (templated)
    :param create_retry_attempts: attempts of ``create`` on 429 / ambiguous errors; a 429 that outlasts
        them ends the admission round (the rest is submitted after ``poll_interval``, doubling, up to 16 times).
    :param create_retry_base_seconds: exponential backoff base (full jitter); after an ambiguous error (5xx,
        lost connection) the job is looked up no sooner than five bases later (10 s by default).
    :param max_cost_usd: refuse the run before any upload (``GeminiBatchBudgetError``) when its estimated
        cost at the batch price exceeds this many USD; the estimate is logged and in the manifest either way.
    :param expected_output_tokens: output tokens expected per request (thinking included) for the estimate,
        where a request sets no ``maxOutputTokens`` (which bounds it instead); default 1024.
    :param prices: price overrides ``{model: {"input": ..., "output": ..., ...}}`` (USD per 1M tokens) over
        the table and ``[gemini_batch] prices``.
    :param cancel_on_kill: on kill, cancel the jobs this execution created (while waiting: those waited for).
    :param gemini_conn_id: the ``gemini_batch`` connection. (templated)
    :param wait_for_completion: also wait for the jobs in this task (same semantics as
        ``GeminiBatchJobSensor``); the task still returns the manifest, and pushes the wait summary.
    :param deferrable: wait in the triggerer instead of holding a worker: for quota headroom between
        admission rounds, and with ``wait_for_completion`` for the jobs.
    :param poll_interval: seconds between job reads while waiting (for headroom, or for the jobs).
    :param wait_timeout: seconds to wait before failing with ``GeminiBatchTimeoutError`` (default 48 h 15 min).
    :param allow_partial: with ``wait_for_completion``, succeed when only some jobs fail / expire / are
        cancelled (they are listed in the wait summary; the good ones can still be loaded).
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = (
        "sql", "source_conn_id", "parameters", "source_table", "bigquery_temp_dataset", "requests", "input_path", "staging_path", "model",
        "key_column", "prompt_column", "prompt_template", "request_sql", "system_instruction", "generation_config",
        "cached_content", "shared_context", "gemini_conn_id", "destination_conn_id", "destination_table",
        "destination_path", "destination_key_column",
    )  # fmt: skip
    template_fields_renderers = {"sql": "sql", "requests": "json", "generation_config": "json"}
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        sql: str | None = None,
        source_conn_id: str | None = None,
        parameters: Any = None,
        source_table: str | None = None,
        source_columns: Sequence[str] | None = None,
        bigquery_temp_dataset: str | None = None,
        requests: Any = None,
        input_path: AnyPath | None = None,
        task: str = "generate",
        model: str | None = None,
        key_column: str = "id",
        prompt_column: str | None = None,
        prompt_template: str | None = None,
        request_builder: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        request_sql: str | None = None,
        system_instruction: str | dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        response_schema: Any = None,
        tools: list[Any] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        cached_content: str | None = None,
        shared_context: Any = None,
        cache_ttl_seconds: float | None = None,
        embedding_task_type: str | None = None,
        output_dimensionality: int | None = None,
        on_invalid_row: str = "fail",
        max_request_bytes: int = SubmitSettings.max_request_bytes,
        max_bytes_per_job: int = SubmitSettings.max_bytes_per_job,
        max_requests_per_job: int = SubmitSettings.max_requests_per_job,
        max_tokens_per_job: int | None = None,
        max_jobs: int = SubmitSettings.max_jobs,
        max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS,
        max_enqueued_tokens: int | None = None,
        inline_threshold_bytes: int = 0,
        staging_path: AnyPath | None = None,
        fetch_batch_size: int = SubmitSettings.fetch_batch_size,
        on_changed_input: str = "fail",
        force_resubmit: bool = False,
        on_failed_job: str = SubmitSettings.on_failed_job,
        keep_uploaded_files: bool = False,
        create_retry_attempts: int = 6,
        create_retry_base_seconds: float = 2.0,
        max_cost_usd: float | None = None,
        expected_output_tokens: int = SubmitSettings.expected_output_tokens,
        prices: dict[str, dict[str, float]] | None = None,
        incremental: bool = False,
        destination_conn_id: str | None = None,
        destination_table: str | None = None,
        destination_path: AnyPath | None = None,
        destination_key_column: str = "key",
        cancel_on_kill: bool = True,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        wait_for_completion: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60.0,
        wait_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        allow_partial: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Each argument named like a SubmitSettings field is validated here, then kept (and rendered) as is.
        settings = SubmitSettings.of(locals()).validated()
        for name in SubmitSettings.names():
            setattr(self, name, getattr(settings, name))
        self.gemini_conn_id, self.cancel_on_kill = gemini_conn_id, cancel_on_kill
        self.wait_for_completion, self.deferrable = wait_for_completion, deferrable
        self.poll_interval, self.wait_timeout, self.allow_partial = poll_interval, wait_timeout, allow_partial
        self._run: SubmitRun | None = None
        self._vertex_run: VertexBigQueryRun | None = None
        self._manifest: Manifest | None = None
        self._waiter: JobWaiter | None = None

    @cached_property
    def hook(self) -> GeminiBatchHook:
        return batch_hook(self.gemini_conn_id)

    def execute(self, context: Context) -> Manifest:
        return self._admit(context, None)

    def execute_admitted(self, context: Context, event: dict[str, Any] | None = None) -> Manifest:
        """Quota headroom appeared (the admission trigger fired): the next round, on the retry path."""
        return self._admit(context, AdmissionState.from_event(event))

    def _admit(self, context: Context, admission: AdmissionState | None) -> Manifest:
        settings = SubmitSettings.of(self)
        if isinstance(self.hook, GeminiVertexBatchHook) and is_bigquery_source(settings):
            # Vertex AI with a BigQuery source: bq:// in, bq:// out, no admission rounds
            self._vertex_run = VertexBigQueryRun(self.hook, settings, self.log)
            return self._submitted(context, self._vertex_run.execute(context))
        if isinstance(self.hook, GeminiVertexBatchHook):  # any other source: gs:// shards in, gs:// out
            self._run = VertexGcsRun(self.hook, settings, self.log)
        else:
            self._run = SubmitRun(self.hook, settings, self.log)
        outcome = self._run.admit(context, admission)
        while isinstance(outcome, AdmissionPending):
            if self.deferrable:
                self.defer(
                    trigger=GeminiBatchAdmissionTrigger.of(
                        outcome, self.gemini_conn_id, self.poll_interval, self.cancel_on_kill
                    ),
                    method_name="execute_admitted",
                )
            outcome = self._run.admit(context, outcome.wait(self.hook, self.poll_interval, self.log))
        return self._submitted(context, outcome)

    def _submitted(self, context: Context, manifest: Manifest) -> Manifest:
        self._manifest = manifest
        context["ti"].xcom_push(key=MANIFEST_XCOM_KEY, value=manifest)
        if self.wait_for_completion and manifest.get("shards"):  # no jobs (all reused): nothing to wait for
            self._wait(context, manifest)
        return manifest

    def _job_waiter(self, manifest: Manifest, deadline: float | None = None) -> JobWaiter:
        self._manifest = manifest  # also after a deferral, for lineage
        policy = WaitPolicy(allow_partial=self.allow_partial)
        cache = manifest.get("context_cache")
        self._waiter = JobWaiter(
            self.hook,
            job_names(manifest),
            policy,
            self.log,
            deadline,
            context_cache=dict(cache) if cache else None,
        )
        return self._waiter

    def _wait(self, context: Context, manifest: Manifest) -> None:
        waiter = self._job_waiter(manifest, deadline=time.time() + self.wait_timeout)
        decision = waiter.poll() if self.deferrable else None  # deferrable: one read, then defer if not done
        if decision is not None and not decision.done:
            self.defer(
                trigger=waiter.trigger(self.gemini_conn_id, self.poll_interval, self.cancel_on_kill),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.wait_timeout + DEFER_TIMEOUT_SLACK_SECONDS),
            )
        summary = decision.raise_for_outcome() if decision is not None else waiter.wait(self.poll_interval)
        waiter.record_summary(context, summary)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Manifest:
        """Conclude a deferred wait as the sensor does. The manifest comes from this task's XCom (pushed
        before deferring), not the trigger's kwargs: any resumption finds it; the trigger row stays small."""
        ti = context["ti"]
        manifest = ti.xcom_pull(task_ids=ti.task_id, key=MANIFEST_XCOM_KEY, map_indexes=ti.map_index)
        if not manifest:
            raise GeminiBatchTriggerEventError(
                f"The deferred task {ti.task_id} has no {MANIFEST_XCOM_KEY} XCom to resume from; clear it to "
                "re-attach to its recorded jobs."
            )
        waiter = self._job_waiter(manifest)
        waiter.record_summary(context, waiter.conclude(event))
        return manifest

    def on_kill(self) -> None:
        """Cancel the jobs this execution created (not jobs re-attached from earlier tries), and delete the
        run's context cache when no job left running needs it."""
        if self.cancel_on_kill and self._waiter is not None:
            self._waiter.cancel_unfinished()
        elif self.cancel_on_kill and self._vertex_run is not None:
            self._vertex_run.cancel_created_jobs()
        elif self.cancel_on_kill and self._run is not None:
            self._run.cancel_created_jobs()
        elif self._run is not None:
            self._run.release_cache_on_kill(jobs_cancelled=False)
