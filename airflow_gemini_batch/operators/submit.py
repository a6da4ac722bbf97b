"""GeminiBatchSubmitOperator: warehouse rows (or a list, or a JSONL file) → validated shards → batch jobs.

A thin wiring of the small modules, each with its own invariants:
``sources`` (bounded batches) → ``requests`` (row → request line, validation) → ``shards`` (files under the
limits, fingerprint) → ``staging`` (key lists) → ``submission`` (idempotent upload + create).

Invariants this operator adds:

* No API call happens before the whole input is read and validated; a run that would need more than
  ``max_jobs`` shards is refused before the first upload.
* XCom carries only the small manifest (``airflow_gemini_batch.manifest.Manifest``): names, counts, paths.
* The API key is never logged or returned; only job, file and display names are.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_gemini_batch.exceptions import GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.inputs.requests import DEFAULT_MAX_REQUEST_BYTES, RequestEncoder, RequestSpec
from airflow_gemini_batch.inputs.shards import (
    DEFAULT_MAX_BYTES_PER_JOB,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_REQUESTS_PER_JOB,
    ShardLimits,
    ShardPlan,
    build_shards,
)
from airflow_gemini_batch.inputs.sources import (
    DEFAULT_BATCH_SIZE,
    JsonlRowSource,
    ListRowSource,
    RowSource,
    SqlRowSource,
)
from airflow_gemini_batch.inputs.validation import InvalidRows
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import MANIFEST_KIND, MANIFEST_XCOM_KEY, Manifest, job_names
from airflow_gemini_batch.submit.ledger import RunIdentity, SubmissionLedger
from airflow_gemini_batch.submit.staging import Staging, default_staging_uri
from airflow_gemini_batch.submit.submission import CreateRetry, inline_requests, submit_plan
from airflow_gemini_batch.wait.verdict import DEFAULT_TIMEOUT_SECONDS, DEFER_TIMEOUT_SLACK_SECONDS, WaitPolicy
from airflow_gemini_batch.wait.waiter import JobWaiter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context

DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_EMBEDDING_MODEL = "gemini-embedding-001"
MAX_INLINE_BYTES = 20 * 1024 * 1024  # the API's limit for inline batch requests


class GeminiBatchSubmitOperator(BaseOperator):
    """Submit rows as Gemini Batch Mode jobs (half price, answers within 24 h) and return a small manifest.

    Input is exactly one of ``sql`` (+ ``source_conn_id``), ``requests`` or ``input_path``.

    :param sql: a SELECT on ``source_conn_id``; read in bounded batches, never whole. (templated)
    :param source_conn_id: any common-sql connection (sqlite, postgres, bigquery, ...). (templated)
    :param parameters: query parameters. (templated)
    :param requests: a small list: prompt strings (key = position), row dicts, or ``{"key", "request"}``
        dicts. (templated; may be an XCom)
    :param input_path: an existing JSONL file of ``{"key", "request"}`` lines; local path or ObjectStoragePath
        URI. (templated)
    :param task: ``"generate"`` (GenerateContent) or ``"embed"`` (embeddings batch).
    :param model: model name; default ``gemini-2.5-flash``, or ``gemini-embedding-001`` for ``task="embed"``.
        (templated)
    :param key_column: the column whose value keys each request and its answer. (templated)
    :param prompt_column: the column holding the prompt (the SQL builds it). (templated)
    :param prompt_template: a prompt with ``{column}`` placeholders; values are inserted literally, never
        evaluated; ``{{``/``}}`` are literal braces. (templated: Jinja renders it once, before any row is
        read, so ``{{ ds }}`` works; a literal brace pair therefore needs Jinja escaping, e.g.
        ``{% raw %}{{{% endraw %}``)
    :param request_builder: a callable ``row dict → GenerateContentRequest dict`` (REST camelCase names).
    :param system_instruction: text (or a Content dict) added to every request. (templated)
    :param generation_config: GenerationConfig fields (snake_case or camelCase). (templated)
    :param response_schema: a JSON-schema dict or a pydantic model class; sets ``responseMimeType``
        ``application/json`` and ``responseJsonSchema``; stored in the manifest for result classification.
    :param tools: tools for every request (e.g. ``[{"googleSearch": {}}]``).
    :param safety_settings: SafetySetting dicts for every request.
    :param cached_content: a ``cachedContents/...`` name used by every request. (templated)
    :param embedding_task_type: embeddings ``taskType`` (e.g. ``RETRIEVAL_DOCUMENT``).
    :param output_dimensionality: embeddings ``outputDimensionality``.
    :param on_invalid_row: ``"fail"`` (default; nothing is submitted, the error names the keys) or ``"skip"``
        (invalid rows are counted, logged and listed in ``skipped_keys.jsonl`` under the staging path).
    :param max_request_bytes: per-request limit of one JSON line (default 10 MiB).
    :param max_bytes_per_job: shard file limit (default 1.9 GB, under the 2 GB File API limit).
    :param max_requests_per_job: requests per shard (default 100 000).
    :param max_tokens_per_job: estimated tokens per shard (~4 bytes/token), e.g. to stay under the
        enqueued-token quota of your tier; default None (off).
    :param max_jobs: refuse a run needing more shards (default 100, the concurrent batch limit).
    :param inline_threshold_bytes: a single shard up to this size is sent inline instead of uploaded
        (default 0: always a file; at most 20 MB). Generate only.
    :param staging_path: ObjectStoragePath URI for key lists and skipped keys. Default: a local folder
        ``<tempdir>/gemini-batch/<identity>`` — multi-worker deployments need shared storage here.
        (templated)
    :param fetch_batch_size: rows per fetch; bounds memory.
    :param on_changed_input: on a retry whose input differs from what the recorded jobs were built from:
        ``"fail"`` (default) or ``"resubmit"``.
    :param force_resubmit: submit new jobs even if this task instance already submitted (a deliberate new
        run; every try with it set submits again, so turn it off afterwards).
    :param create_retry_attempts: attempts of ``create`` on 429 / ambiguous errors.
    :param create_retry_base_seconds: base of the exponential backoff (with full jitter); after an ambiguous
        error (5xx, lost connection) the job is looked up no sooner than five bases later (10 s by default).
    :param cancel_on_kill: on kill, cancel the jobs this execution created (and, while waiting, the jobs
        waited for).
    :param gemini_conn_id: the ``gemini_batch`` connection. (templated)
    :param wait_for_completion: also wait for the jobs in this task (same semantics as
        ``GeminiBatchJobSensor``); the task still returns the manifest, and pushes the wait summary.
    :param deferrable: with ``wait_for_completion``, wait in the triggerer instead of holding a worker.
    :param poll_interval: seconds between job reads while waiting.
    :param wait_timeout: seconds to wait before failing with ``GeminiBatchTimeoutError`` (default 48 h 15 min).
    :param allow_partial: with ``wait_for_completion``, succeed when only some jobs fail / expire / are
        cancelled (they are listed in the wait summary; the good ones can still be loaded).
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = (
        "sql",
        "source_conn_id",
        "parameters",
        "requests",
        "input_path",
        "staging_path",
        "model",
        "key_column",
        "prompt_column",
        "prompt_template",
        "system_instruction",
        "generation_config",
        "cached_content",
        "gemini_conn_id",
    )
    template_fields_renderers = {"sql": "sql", "requests": "json", "generation_config": "json"}
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        sql: str | None = None,
        source_conn_id: str | None = None,
        parameters: Any = None,
        requests: Any = None,
        input_path: str | None = None,
        task: str = "generate",
        model: str | None = None,
        key_column: str = "id",
        prompt_column: str | None = None,
        prompt_template: str | None = None,
        request_builder: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        system_instruction: str | dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        response_schema: Any = None,
        tools: list[Any] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        cached_content: str | None = None,
        embedding_task_type: str | None = None,
        output_dimensionality: int | None = None,
        on_invalid_row: str = "fail",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_bytes_per_job: int = DEFAULT_MAX_BYTES_PER_JOB,
        max_requests_per_job: int = DEFAULT_MAX_REQUESTS_PER_JOB,
        max_tokens_per_job: int | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        inline_threshold_bytes: int = 0,
        staging_path: str | None = None,
        fetch_batch_size: int = DEFAULT_BATCH_SIZE,
        on_changed_input: str = "fail",
        force_resubmit: bool = False,
        create_retry_attempts: int = 6,
        create_retry_base_seconds: float = 2.0,
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
        inputs = [n for n, v in (("sql", sql), ("requests", requests), ("input_path", input_path)) if v]
        if len(inputs) != 1:
            raise ValueError(f"Give exactly one of sql, requests, input_path (got {inputs or 'none'}).")
        if sql and not source_conn_id:
            raise ValueError("sql needs source_conn_id (a common-sql connection).")
        if on_invalid_row not in ("fail", "skip"):
            raise ValueError(f"on_invalid_row must be 'fail' or 'skip', got {on_invalid_row!r}.")
        if on_changed_input not in ("fail", "resubmit"):
            raise ValueError(f"on_changed_input must be 'fail' or 'resubmit', got {on_changed_input!r}.")
        if not 0 <= inline_threshold_bytes <= MAX_INLINE_BYTES:
            raise ValueError(f"inline_threshold_bytes must be between 0 and {MAX_INLINE_BYTES} (20 MB).")
        if task not in ("generate", "embed"):
            raise ValueError(f"task must be 'generate' or 'embed', got {task!r}.")
        self.sql = sql
        self.source_conn_id = source_conn_id
        self.parameters = parameters
        self.requests = requests
        self.input_path = input_path
        self.task = task
        self.model = model or (DEFAULT_EMBEDDING_MODEL if task == "embed" else DEFAULT_MODEL)
        self.key_column = key_column
        self.prompt_column = prompt_column
        self.prompt_template = prompt_template
        self.request_builder = request_builder
        self.system_instruction = system_instruction
        self.generation_config = generation_config
        self.response_schema = response_schema
        self.tools = tools
        self.safety_settings = safety_settings
        self.cached_content = cached_content
        self.embedding_task_type = embedding_task_type
        self.output_dimensionality = output_dimensionality
        self.on_invalid_row = on_invalid_row
        self.max_request_bytes = max_request_bytes
        self.max_bytes_per_job = max_bytes_per_job
        self.max_requests_per_job = max_requests_per_job
        self.max_tokens_per_job = max_tokens_per_job
        self.max_jobs = max_jobs
        self.inline_threshold_bytes = inline_threshold_bytes
        self.staging_path = staging_path
        self.fetch_batch_size = fetch_batch_size
        self.on_changed_input = on_changed_input
        self.force_resubmit = force_resubmit
        self.create_retry_attempts = create_retry_attempts
        self.create_retry_base_seconds = create_retry_base_seconds
        self.cancel_on_kill = cancel_on_kill
        self.gemini_conn_id = gemini_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.allow_partial = allow_partial
        self._created_jobs: list[str] = []
        self._waiter: JobWaiter | None = None

    @cached_property
    def hook(self) -> GeminiBatchHook:
        return GeminiBatchHook(gemini_conn_id=self.gemini_conn_id)

    # ---- building ------------------------------------------------------------------------------------------

    def _spec(self) -> RequestSpec:
        limits = self._limits()
        return RequestSpec(
            task=self.task,
            key_column=self.key_column,
            prompt_column=self.prompt_column,
            prompt_template=self.prompt_template,
            request_builder=self.request_builder,
            system_instruction=self.system_instruction,
            generation_config=self.generation_config,
            response_schema=self.response_schema,
            tools=self.tools,
            safety_settings=self.safety_settings,
            cached_content=self.cached_content,
            embedding_task_type=self.embedding_task_type,
            output_dimensionality=self.output_dimensionality,
            # A request larger than a shard could never be placed; the shard budget caps the request limit.
            max_request_bytes=min(self.max_request_bytes, limits.byte_budget),
        )

    def _limits(self) -> ShardLimits:
        return ShardLimits(
            max_bytes=self.max_bytes_per_job,
            max_requests=self.max_requests_per_job,
            max_tokens=self.max_tokens_per_job,
            max_jobs=self.max_jobs,
        )

    def _source(self) -> RowSource:
        if self.sql:
            return SqlRowSource(self.source_conn_id, self.sql, self.parameters, self.fetch_batch_size)  # type: ignore[arg-type]
        if self.input_path:
            return JsonlRowSource(str(self.input_path), self.fetch_batch_size)
        return ListRowSource(self.requests, self.fetch_batch_size)

    def build(self, staging: Staging) -> ShardPlan:
        """Read, validate and shard the whole input into ``staging`` (no API call). Public for benchmarks."""
        spec = self._spec()
        source = self._source()
        if isinstance(source, ListRowSource) and source.kind == "str":
            # A list of prompt strings is keyed by position, whatever key_column says for SQL inputs.
            spec.key_column = "key"
        self.log.info("Reading %s into shards under %s", source.describe(), staging.local_dir)
        with staging.local_skipped_path.open("wb") as skipped_file:
            invalid = InvalidRows(self.on_invalid_row == "skip", skipped_file, spec.max_request_bytes)
            plan = build_shards(
                source.batches(),
                lambda: RequestEncoder(spec, source.columns, invalid, prebuilt=source.prebuilt),
                staging,
                self._limits(),
                invalid,
                task=self.task,
                model=self.model,
            )
        if plan.skipped_count:
            self.log.warning(
                "Skipped %d invalid row(s) (on_invalid_row='skip'); listed in %s.\n%s",
                plan.skipped_count,
                staging.skipped_uri,
                invalid.message(),
            )
        return plan

    # ---- execution -----------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Manifest:
        self._created_jobs = []
        identity = RunIdentity.from_context(context)
        staging = Staging(self.staging_path or default_staging_uri(identity.hash), identity.hash)
        staging.clear_stale()
        plan = self.build(staging)
        if not plan.shards:
            self.log.warning("The input has no valid rows: nothing to submit.")
        ledger = SubmissionLedger(context.get("task_state_store"))
        scan = not self.force_resubmit and not ledger.has_records()
        generation = ledger.begin(
            identity=identity,
            fingerprint=plan.fingerprint,
            shard_count=len(plan.shards),
            on_changed_input=self.on_changed_input,
            force_resubmit=self.force_resubmit,
            force_token=getattr(context["ti"], "max_tries", None),
        )
        # Published only once the input is accepted: a retry refused for changed input must not overwrite
        # the key lists that the recorded jobs' results are reconciled against.
        keys_uris = [staging.publish(s.keys_path, f"{staging.uri}/{s.keys_path.name}") for s in plan.shards]
        skipped_uri = (
            staging.publish(staging.local_skipped_path, staging.skipped_uri) if plan.skipped_count else None
        )
        retry = CreateRetry(self.create_retry_attempts, self.create_retry_base_seconds)
        inline = None
        single = plan.shards[0] if len(plan.shards) == 1 else None
        if single and self.task == "generate" and single.bytes <= self.inline_threshold_bytes:
            inline = inline_requests(single.path)
        submitted = submit_plan(
            self.hook,
            ledger,
            plan,
            identity_hash=identity.hash,
            generation=generation,
            keys_uris=keys_uris,
            model=self.model,
            embeddings=self.task == "embed",
            inline=inline,
            retry=retry,
            scan=scan,
            on_created=self._created_jobs.append,
        )
        shards = submitted.shards
        self.log.info(
            "Submitted %d shard(s): %d job(s) created now, %d re-attached; %s bytes uploaded; %s requests",
            len(shards),
            submitted.created,
            len(shards) - submitted.created,
            f"{submitted.uploaded_bytes:,}",
            f"{plan.request_count:,}",
        )
        manifest = Manifest(
            kind=MANIFEST_KIND,
            version=1,
            gemini_conn_id=self.gemini_conn_id,
            task=self.task,
            model=self.model,
            identity=identity.text,
            fingerprint=plan.fingerprint,
            response_schema=self._spec().response_schema,
            staging_path=staging.uri,
            dag_id=identity.dag_id,
            run_id=identity.run_id,
            task_id=identity.task_id,
            map_index=identity.map_index,
            shards=shards,
            request_count=plan.request_count,
            skipped_count=plan.skipped_count,
            skipped_keys_path=skipped_uri,
        )
        context["ti"].xcom_push(key=MANIFEST_XCOM_KEY, value=manifest)
        if self.wait_for_completion:
            self._wait(context, manifest)
        return manifest

    # ---- waiting (the sensor's machinery: one verdict in every mode) -----------------------------------------

    def _job_waiter(self, manifest: Manifest, deadline: float | None = None) -> JobWaiter:
        policy = WaitPolicy(allow_partial=self.allow_partial)
        self._waiter = JobWaiter(self.hook, job_names(manifest), policy, self.log, deadline)
        return self._waiter

    def _wait(self, context: Context, manifest: Manifest) -> None:
        waiter = self._job_waiter(manifest, deadline=time.time() + self.wait_timeout)
        if not self.deferrable:
            waiter.record_summary(context, waiter.wait(self.poll_interval))
            return
        decision = waiter.poll()
        if decision.done:
            waiter.record_summary(context, decision.raise_for_outcome())
            return
        self.defer(
            trigger=waiter.trigger(self.gemini_conn_id, self.poll_interval, self.cancel_on_kill),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.wait_timeout + DEFER_TIMEOUT_SLACK_SECONDS),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Manifest:
        """Conclude a deferred wait exactly as the sensor does; return the manifest for the load task.

        The manifest comes back from this task's own XCom (pushed before deferring), not from the deferral's
        kwargs: it survives any resumption path, and the trigger row stays small.
        """
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
        """Cancel the jobs this execution created (not jobs re-attached from earlier tries)."""
        if self.cancel_on_kill and self._waiter is not None:
            self._waiter.cancel_unfinished()
            return
        if not self.cancel_on_kill or not self._created_jobs:
            return
        for name in self._created_jobs:
            try:
                self.hook.cancel_job(name)
                self.log.info("Cancelled job %s on kill", name)
            except Exception as e:
                self.log.warning("Could not cancel job %s on kill: %s", name, type(e).__name__)
