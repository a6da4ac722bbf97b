"""The submit run: one execution of the submit stage, from rows to recorded jobs and a manifest.

:class:`SubmitRun` is the one place that knows the *order* of a submission; every stage is a method, so a
stage is extended where it happens (a budget check between :meth:`SubmitRun.build` and
:meth:`SubmitRun.begin`, a new source in :meth:`SubmitRun.source`, ...). It is longer than most modules because
the settings, every stage and the order between them read best in one place. The order keeps the invariants:

* No API call before the whole input is read and validated: :meth:`~SubmitRun.build` reads, validates and
  shards everything (a run needing more than ``max_jobs`` shards is refused there), and nothing before it
  talks to the Gemini API.
* Nothing is recorded or uploaded before the cost is estimated: :meth:`~SubmitRun.estimate` (a bounded
  sample, at most one free ``countTokens`` call) runs between :meth:`~SubmitRun.build` and
  :meth:`~SubmitRun.begin`, and a run over ``max_cost_usd`` is refused there.
* Whether to scan ``batches.list`` for orphans is decided *before* the ledger records this run's header:
  records left by an earlier try are authoritative, the header this try writes is not evidence of anything.
  With a task state store, no records and no create marker in the staging folder prove that no job of this
  identity was ever created (the marker is written before the first create and outlives a re-created DAG
  run), so a first try makes no ``batches.list`` call at all.
* Housekeeping: a shard's local file is deleted once its job exists, every shard file when the submit ends
  (failed or not: a retry rebuilds them); uploaded input files are the load's to delete, once their jobs
  are finished (:mod:`airflow_gemini_batch.results.uploaded_files`), unless ``keep_uploaded_files``.
* Key lists (and the skipped-keys file) are published only after the ledger accepted the input: a retry
  refused for a changed input must not overwrite the key lists that the recorded jobs' results are
  reconciled against.
* Jobs are created or re-attached only after the header is recorded (at most one paid job per shard
  generation, :mod:`airflow_gemini_batch.submit.submission`); a shard whose job ended FAILED, EXPIRED or
  CANCELLED is resubmitted alone (``on_failed_job``), and the manifest names its new job.
* A context cache (``shared_context``) is checked for its size before anything else, and created (or
  re-used) only after the ledger accepted the input, right before the shard files are filled with its name
  and uploaded (:mod:`airflow_gemini_batch.submit.context_cache`). A failure that ends the task for good
  deletes it when no job references it; a failure that will be retried keeps it for the retry.
* Admission under the quotas (:mod:`airflow_gemini_batch.submit.admission`): :meth:`SubmitRun.admit` is one
  round — this whole order again, on the retry path — and returns :class:`AdmissionPending` while shards wait
  for headroom; :meth:`SubmitRun.execute` waits on the worker between rounds, the operator defers instead.
* The manifest carries names, counts and locations only; never row data, never the API key.
* A row-retry round (``round_number`` ≥ 2, :class:`~airflow_gemini_batch.operators.batch.GeminiBatchOperator`)
  is the same order over the same source filtered to the previous round's remainder keys (``key_filter``),
  with its own staging folder (``<staging>/round-<n>``), ledger records and display names (``-a<n>``), so
  it is idempotent on its own: a resumption, retry or clear re-attaches to the round's jobs.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_gemini_batch.cost.budget import check_budget
from airflow_gemini_batch.cost.estimate import DEFAULT_EXPECTED_OUTPUT_TOKENS, RunEstimate, estimate_run
from airflow_gemini_batch.cost.prices import price_overrides
from airflow_gemini_batch.cost.pricing import compute_cost
from airflow_gemini_batch.hooks.bigquery import is_bigquery_connection
from airflow_gemini_batch.inputs.bigquery import BigQueryRowSource
from airflow_gemini_batch.inputs.incremental import DESTINATION_PARAMETERS, ReuseCheck, ReuseDestination
from airflow_gemini_batch.inputs.incremental_bigquery import BigQueryReuseCheck
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
    PREBUILT_COLUMNS,
    JsonlRowSource,
    ListRowSource,
    RowSource,
    SqlRowSource,
)
from airflow_gemini_batch.inputs.validation import InvalidRows
from airflow_gemini_batch.manifest import MANIFEST_KIND, Manifest
from airflow_gemini_batch.submit.admission import (
    DEFAULT_MAX_CONCURRENT_JOBS,
    AdmissionLimits,
    AdmissionPending,
    AdmissionState,
    rate_limit_pause,
)
from airflow_gemini_batch.submit.context_cache import (
    RunCache,
    SharedContext,
    delete_cache,
    ensure_cache,
    fill_cache_slots,
    placeholder_name,
)
from airflow_gemini_batch.submit.ledger import RunIdentity, SubmissionLedger, recorded_job_names
from airflow_gemini_batch.submit.round_input import KeyFilteredSource
from airflow_gemini_batch.submit.staging import Staging, check_reachable_by_other_workers, staging_uri
from airflow_gemini_batch.submit.submission import (
    ON_FAILED_JOB,
    CreateRetry,
    PlanSubmission,
    inline_requests,
    submit_plan,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from airflow.sdk import Context
    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_EMBEDDING_MODEL = "gemini-embedding-001"
MAX_INLINE_BYTES = 20 * 1024 * 1024  # the API's limit for inline batch requests


def default_model(task: str) -> str:
    return DEFAULT_EMBEDDING_MODEL if task == "embed" else DEFAULT_MODEL


@dataclass
class SubmitSettings:
    """What a submit run is made of: the submit operator's arguments of the same names (see its docstring),
    except the connection and the waiting ones. Values are used as given (rendered templates included);
    :meth:`validated` checks them once, when the operator is built."""

    sql: str | None = None
    source_conn_id: str | None = None
    parameters: Any = None
    source_table: str | None = None
    source_columns: Sequence[str] | None = None
    bigquery_temp_dataset: str | None = None
    requests: Any = None
    input_path: str | None = None
    task: str = "generate"
    model: str | None = None
    key_column: str = "id"
    prompt_column: str | None = None
    prompt_template: str | None = None
    request_builder: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    request_sql: str | None = None  # Vertex AI BigQuery runs only: the request JSON as a BigQuery expression
    system_instruction: str | dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    response_schema: Any = None
    tools: list[Any] | None = None
    safety_settings: list[dict[str, Any]] | None = None
    cached_content: str | None = None
    shared_context: Any = None
    cache_ttl_seconds: float | None = None
    embedding_task_type: str | None = None
    output_dimensionality: int | None = None
    on_invalid_row: str = "fail"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_bytes_per_job: int = DEFAULT_MAX_BYTES_PER_JOB
    max_requests_per_job: int = DEFAULT_MAX_REQUESTS_PER_JOB
    max_tokens_per_job: int | None = None
    max_jobs: int = DEFAULT_MAX_JOBS
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    max_enqueued_tokens: int | None = None
    inline_threshold_bytes: int = 0
    staging_path: str | None = None
    fetch_batch_size: int = DEFAULT_BATCH_SIZE
    on_changed_input: str = "fail"
    force_resubmit: bool = False
    on_failed_job: str = "resubmit"
    create_retry_attempts: int = 6
    create_retry_base_seconds: float = 2.0
    keep_uploaded_files: bool = False
    max_cost_usd: float | None = None
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS
    prices: dict[str, dict[str, float]] | None = None
    poll_interval: float = 60.0  # also between reads while waiting for quota headroom
    incremental: bool = False
    destination_conn_id: str | None = None
    destination_table: str | None = None
    destination_path: str | None = None
    destination_key_column: str = "key"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, values: Mapping[str, Any] | object) -> SubmitSettings:
        """The settings named like :meth:`names` in a mapping, or in an object's attributes (an operator)."""
        if isinstance(values, dict):
            return cls(**{name: values[name] for name in cls.names() if name in values})
        return cls(**{name: getattr(values, name) for name in cls.names()})

    def validated(self) -> SubmitSettings:
        """Check the arguments that need no rows (:class:`ValueError`) and fill the task's default model."""
        inputs = [
            n
            for n, v in (
                ("sql", self.sql),
                ("source_table", self.source_table),
                ("requests", self.requests),
                ("input_path", self.input_path),
            )
            if v
        ]
        if len(inputs) != 1:
            raise ValueError(
                f"Give exactly one of sql, source_table, requests, input_path (got {inputs or 'none'})."
            )
        if self.sql and not self.source_conn_id:
            raise ValueError("sql needs source_conn_id (a common-sql or google_cloud_platform connection).")
        if self.source_table and not self.source_conn_id:
            raise ValueError("source_table needs source_conn_id (a google_cloud_platform connection).")
        if self.source_columns and not self.source_table:
            raise ValueError("source_columns selects columns of source_table; a query selects its own.")
        if self.on_invalid_row not in ("fail", "skip"):
            raise ValueError(f"on_invalid_row must be 'fail' or 'skip', got {self.on_invalid_row!r}.")
        if self.on_changed_input not in ("fail", "resubmit"):
            raise ValueError(f"on_changed_input must be 'fail' or 'resubmit', got {self.on_changed_input!r}.")
        if self.on_failed_job not in ON_FAILED_JOB:
            raise ValueError(f"on_failed_job must be 'resubmit' or 'fail', got {self.on_failed_job!r}.")
        if not 0 <= self.inline_threshold_bytes <= MAX_INLINE_BYTES:
            raise ValueError(f"inline_threshold_bytes must be between 0 and {MAX_INLINE_BYTES} (20 MB).")
        if self.max_concurrent_jobs < 1:
            raise ValueError(f"max_concurrent_jobs must be at least 1, got {self.max_concurrent_jobs!r}.")
        if self.max_enqueued_tokens is not None and self.max_enqueued_tokens < 1:
            raise ValueError(
                f"max_enqueued_tokens must be at least 1 (or None: unlimited), got {self.max_enqueued_tokens!r}."
            )
        if self.task not in ("generate", "embed"):
            raise ValueError(f"task must be 'generate' or 'embed', got {self.task!r}.")
        if self.shared_context and (self.task == "embed" or self.cached_content):
            raise ValueError(
                "shared_context makes a cache for this run: it works with task='generate' and without "
                "cached_content (give one of shared_context and cached_content)."
            )
        if self.cached_content and (self.system_instruction or self.tools):
            raise ValueError(
                "cached_content cannot be combined with system_instruction or tools: the service refuses "
                "requests that set them next to a cache. Put them in the cache, or use shared_context, "
                "which caches them for you."
            )
        if self.max_cost_usd is not None and float(self.max_cost_usd) < 0:
            raise ValueError(f"max_cost_usd must be a non-negative amount in USD, got {self.max_cost_usd!r}.")
        if int(self.expected_output_tokens) < 0:
            raise ValueError(f"expected_output_tokens must be >= 0, got {self.expected_output_tokens!r}.")
        if self.incremental:
            self.reuse_destination().check()
        self.model = self.model or default_model(self.task)
        return self

    def reuse_destination(self) -> ReuseDestination:
        """The load's destination, as the incremental check names it (``inputs.incremental``)."""
        return ReuseDestination(**{name: getattr(self, name) for name in DESTINATION_PARAMETERS})


class SubmitRun:
    """One execution of the submit stage: identity → staging → plan → ledger → key lists → jobs → manifest.

    :param hook: the hook every API call goes through (only :meth:`submit` uses it).
    :param settings: validated settings (:meth:`SubmitSettings.validated`).
    :param log: where progress goes (the operator's task log).
    :param round_number: the row-retry round (1: a plain submission, as the submit operator's).
    :param key_filter: a key list (URI): only the source rows with these keys are submitted (a retry round).
    """

    def __init__(
        self,
        hook: GeminiBatchHook,
        settings: SubmitSettings,
        log: Logger | logging.Logger | None = None,
        *,
        round_number: int = 1,
        key_filter: str | None = None,
    ) -> None:
        self.hook = hook
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.round_number = round_number
        self.key_filter = key_filter
        #: jobs this execution created (not re-attached ones): what ``on_kill`` may cancel.
        self.created_jobs: list[str] = []
        #: the run's context cache, once ensured (``shared_context``)
        self.cache: RunCache | None = None
        self._cache_placeholder: str | None = None
        #: what fingerprints name as the cache: stable across runs (incremental reuse), unlike the placeholder
        self._cache_fingerprint_name: str | None = None
        self._ledger: SubmissionLedger | None = None
        self._shard_count = 0
        #: jobs of this task instance (every try, every row round): their answers are never reused by it
        self._own_jobs: list[str] = []

    @property
    def model(self) -> str:
        return self.settings.model or default_model(self.settings.task)

    def execute(self, context: Context) -> Manifest:
        """Every admission round (see :meth:`admit`), waiting on this worker between them; the manifest."""
        outcome = self.admit(context)
        while isinstance(outcome, AdmissionPending):
            outcome = self.admit(context, outcome.wait(self.hook, self.settings.poll_interval, self.log))
        return outcome

    def admit(self, context: Context, admission: AdmissionState | None = None) -> Manifest | AdmissionPending:
        """One round: run every stage in order (see the module docstring for why this order); the manifest
        once every shard has its job, else what to wait for before the next round.

        :param admission: the rounds so far (None: this is the first round of this execution).
        """
        admission = admission or AdmissionState()
        identity = RunIdentity.from_context(context)
        shared = self.shared_context()
        if shared is not None:
            shared.check_size()  # before anything is read, created or uploaded
            self._cache_placeholder = placeholder_name(identity.hash, shared)
            self._cache_fingerprint_name = f"shared-context:{shared.digest}"
        staging = self.staging(identity, executor=getattr(context.get("task"), "executor", None))
        if self.settings.incremental:
            self._own_jobs = recorded_job_names(context.get("task_state_store"))
        try:
            plan = self.build(staging)
            if not plan.shards and plan.reused_count:
                # Every row is answered already: no job, no upload, no ledger record (a clear of a finished
                # run lands here too, and must not look like a changed input). The wait and the load have no
                # jobs.
                self.log.info(
                    "Incremental: all %s rows already have their answer in %s: nothing to submit.",
                    f"{plan.reused_count:,}",
                    self.settings.destination_table,
                )
                return self.manifest(identity, staging, plan, PlanSubmission([], 0, 0), None)
            if not plan.shards:
                self.log.warning("The input has no valid rows: nothing to submit.")
            estimate = self.estimate(plan)
            ledger = self._ledger = SubmissionLedger(context.get("task_state_store"), self.round_number)
            self._shard_count = len(plan.shards)
            scan = self.needs_orphan_scan(ledger, staging)
            generation = self.begin(
                ledger, identity, plan, force_token=getattr(context["ti"], "max_tries", None)
            )
            try:
                if shared is not None and plan.shards:
                    self.prepare_cache(ledger, identity, plan, shared)
                keys_uris, skipped_uri = self.publish(staging, plan)
                submitted = self.submit(
                    ledger,
                    identity,
                    plan,
                    generation,
                    keys_uris,
                    scan=scan,
                    staging=staging,
                    known_states=admission.known_states,
                )
                by_index = {shard.index: shard for shard in plan.shards}
                for info in submitted.shards:  # an admission round may list only the shards it reached
                    shard = by_index[info["index"]]
                    name = shard.fingerprints_path.name
                    info["fingerprints_path"] = staging.publish(
                        shard.fingerprints_path, f"{staging.uri}/{name}"
                    )
            except BaseException as e:
                if self.cache is not None and _final(e, context) and not ledger.has_jobs(len(plan.shards)):
                    delete_cache(self.hook, self.cache.name, "the submit failed for good", self.log)
                raise
        finally:
            staging.remove_local_files()  # a retry rebuilds its shards; uploaded ones are reused by name
        pending = self.pending(plan, submitted, admission)
        if pending is not None:
            return pending
        manifest = self.manifest(identity, staging, plan, submitted, skipped_uri, estimate)
        manifest["admission"] = admission.summary(self.admission_limits())
        return manifest

    def pending(
        self, plan: ShardPlan, submitted: PlanSubmission, admission: AdmissionState
    ) -> AdmissionPending | None:
        """Record this round in ``admission``; what the next one waits for, or None when none is needed."""
        reason = "rate_limited" if submitted.rate_limited else ("quota" if submitted.waiting else "done")
        entry = admission.record(
            created=submitted.created,
            attached=submitted.attached,
            waiting=len(submitted.waiting),
            reason=reason,
        )
        limits = self.admission_limits()
        self.log.info(
            "Admission round %d: %d shard(s) submitted in all (%d created in this round), %d waiting; %d "
            "job(s) of this run not finished (max_concurrent_jobs=%d, max_enqueued_tokens=%s)%s",
            entry["round"],
            len(submitted.shards),
            submitted.created,
            len(submitted.waiting),
            len(submitted.active),
            limits.max_concurrent_jobs,
            limits.max_enqueued_tokens,
            "; create answered 429 RESOURCE_EXHAUSTED after every retry" if submitted.rate_limited else "",
        )
        if not submitted.waiting:
            if len(admission.rounds) > 1:
                self.log.info(
                    "All %d shard(s) admitted in %d round(s) (%d rate-limited).",
                    len(plan.shards),
                    len(admission.rounds),
                    admission.rate_limited,
                )
            return None
        tokens = {s.index: s.estimated_tokens for s in plan.shards}
        resume_at = None
        if submitted.rate_limited:
            resume_at = time.time() + rate_limit_pause(admission, self.settings.poll_interval)
        return AdmissionPending(
            limits=limits,
            state=admission,
            job_names=[name for name, _ in submitted.active],
            job_tokens=[t for _, t in submitted.active],
            waiting_tokens=[tokens[i] for i in submitted.waiting],
            resume_at=resume_at,
        )

    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(self.settings.max_concurrent_jobs, self.settings.max_enqueued_tokens)

    def needs_orphan_scan(self, ledger: SubmissionLedger, staging: Staging) -> bool:
        """Whether a job of this task instance may exist unrecorded (one 48 h ``batches.list`` scan finds it).

        Not after ``force_resubmit`` (new names), nor when earlier tries left records (they are authoritative),
        nor when the durable records prove no create was ever attempted: a task state store without records
        and a staging folder without the create marker (the marker survives a re-created DAG run, whose
        task state is gone). Without a task state store nothing proves it, so the scan runs.
        """
        if self.settings.force_resubmit or ledger.has_records():
            return False
        if ledger.durable and not staging.creates_attempted():
            self.log.info("No create was ever attempted for this task instance: no orphan scan")
            return False
        return True

    # ---- inputs: source, request spec, limits, shards (no API call) ---------------------------------------

    def staging(self, identity: RunIdentity, executor: str | None = None) -> Staging:
        """The run's files: ``staging_path``, ``[gemini_batch] staging_path`` or the per-identity default,
        without a previous try's leftovers; refused before any call when other workers could not reach it."""
        uri = staging_uri(self.settings.staging_path, identity.hash)
        check_reachable_by_other_workers(uri, executor)
        if self.round_number > 1:
            uri = f"{uri.rstrip('/')}/round-{self.round_number}"
        staging = Staging(uri, self.name_stem(identity))
        staging.clear_stale()
        return staging

    def shared_context(self) -> SharedContext | None:
        """What this run caches (``shared_context``, with the system instruction and tools), or None."""
        s = self.settings
        if not s.shared_context:
            return None
        return SharedContext.of(
            s.shared_context,
            model=self.model,
            system_instruction=s.system_instruction,
            tools=s.tools,
            ttl_seconds=s.cache_ttl_seconds,
        )

    def name_stem(self, identity: RunIdentity) -> str:
        """What the display names (and a remote staging's local folder) start from: the identity hash, plus
        ``-a<n>`` in a retry round."""
        return identity.hash if self.round_number <= 1 else f"{identity.hash}-a{self.round_number}"

    def request_spec(self) -> RequestSpec:
        s = self.settings
        cached = bool(s.shared_context)  # then the system instruction and tools live in the cache
        return RequestSpec(
            task=s.task,
            key_column=s.key_column,
            prompt_column=s.prompt_column,
            prompt_template=s.prompt_template,
            request_builder=s.request_builder,
            system_instruction=None if cached else s.system_instruction,
            generation_config=s.generation_config,
            response_schema=s.response_schema,
            tools=None if cached else s.tools,
            safety_settings=s.safety_settings,
            cached_content=self._cache_placeholder if cached else s.cached_content,
            cache_slot=cached,
            fingerprint_cached_content=self._cache_fingerprint_name,
            embedding_task_type=s.embedding_task_type,
            output_dimensionality=s.output_dimensionality,
            # A request larger than a shard could never be placed; the shard budget caps the request limit.
            max_request_bytes=min(s.max_request_bytes, self.limits().byte_budget),
        )

    def limits(self) -> ShardLimits:
        """The shard limits; a shard never exceeds ``max_enqueued_tokens``, so each one fits the quota alone."""
        s = self.settings
        budgets = [t for t in (s.max_tokens_per_job, s.max_enqueued_tokens) if t]
        return ShardLimits(
            max_bytes=s.max_bytes_per_job,
            max_requests=s.max_requests_per_job,
            max_tokens=min(budgets) if budgets else None,
            max_jobs=s.max_jobs,
        )

    def source(self) -> RowSource:
        s = self.settings
        if s.source_table or (s.sql and is_bigquery_connection(s.source_conn_id)):
            return BigQueryRowSource(
                s.source_conn_id,  # type: ignore[arg-type]
                sql=s.sql,
                table=s.source_table,
                columns=s.source_columns,
                parameters=s.parameters,
                temp_dataset=s.bigquery_temp_dataset,
                batch_size=s.fetch_batch_size,
            )
        if s.sql:
            return SqlRowSource(s.source_conn_id, s.sql, s.parameters, s.fetch_batch_size)  # type: ignore[arg-type]
        if s.input_path:
            return JsonlRowSource(str(s.input_path), s.fetch_batch_size)
        return ListRowSource(s.requests, s.fetch_batch_size)

    def build(self, staging: Staging) -> ShardPlan:
        """Read, validate and shard the whole input into ``staging`` (no API call). Public for benchmarks."""
        spec = self.request_spec()
        source = self.source()
        if isinstance(source, ListRowSource) and source.kind == "str":
            # A list of prompt strings is keyed by position, whatever key_column says for SQL inputs.
            spec.key_column = "key"
        if self.key_filter:
            key_column = PREBUILT_COLUMNS[0] if source.prebuilt else spec.key_column
            source = KeyFilteredSource(source, self.key_filter, key_column)
        self.log.info("Reading %s into shards under %s", source.describe(), staging.local_dir)
        reuse = self.reuse_check()
        with staging.local_skipped_path.open("wb") as skipped_file, reuse or nullcontext():
            invalid = InvalidRows(
                self.settings.on_invalid_row == "skip", skipped_file, spec.max_request_bytes
            )
            plan = build_shards(
                source.batches(),
                lambda: RequestEncoder(
                    spec, source.columns, invalid, prebuilt=source.prebuilt, model=self.model
                ),
                staging,
                self.limits(),
                invalid,
                task=self.settings.task,
                model=self.model,
                reuse=reuse,
            )
        if plan.skipped_count:
            self.log.warning(
                "Skipped %d invalid row(s) (on_invalid_row='skip'); listed in %s.\n%s",
                plan.skipped_count,
                staging.skipped_uri,
                invalid.message(),
            )
        if reuse is not None:
            self.log.info(
                "Incremental: %s row(s) reused (answered in %s for the same request), %s to send; "
                "re-sending the reused ones would cost $%s at the batch price",
                f"{plan.reused_count:,}", self.settings.destination_table, f"{plan.request_count:,}",
                self.reused_cost_usd(plan),
            )  # fmt: skip
        return plan

    # ---- estimate and budget (before anything is recorded or uploaded) -----------------------------------

    def estimate(self, plan: ShardPlan) -> RunEstimate:
        """The run's cost at the batch price (:mod:`airflow_gemini_batch.cost.estimate`), logged; refused with
        :class:`~airflow_gemini_batch.exceptions.GeminiBatchBudgetError` over ``max_cost_usd``."""
        s = self.settings
        model = self.model
        shared = self.shared_context() if plan.shards else None
        estimate, _ = estimate_run(
            [(shard.path, shard.request_count, shard.bytes) for shard in plan.shards],
            model=model,
            embeddings=s.task == "embed",
            counter=(lambda contents: self.hook.count_tokens(model, contents)) if plan.shards else None,
            expected_output_tokens=int(s.expected_output_tokens),
            overrides=price_overrides(s.prices),
            max_cost_usd=float(s.max_cost_usd) if s.max_cost_usd is not None else None,
            # A shared_context is cached: every request adds it to its prompt at the cache price.
            cached_tokens=(shared.estimated_tokens() or 0) if shared is not None else 0,
            cache_hours=shared.ttl_seconds / 3600 if shared is not None else 0.0,
        )
        budget = (
            f"; budget max_cost_usd=${estimate.max_cost_usd:.4f}" if estimate.max_cost_usd is not None else ""
        )
        self.log.info("Estimated cost: %s%s", estimate.describe(), budget)
        check_budget(estimate)
        return estimate

    def reuse_check(self) -> ReuseCheck | None:
        """The incremental check against the load's destination, or None for a full run."""
        if not self.settings.incremental:
            return None
        destination = self.settings.reuse_destination()
        if is_bigquery_connection(destination.destination_conn_id):
            return BigQueryReuseCheck(destination, exclude_jobs=self._own_jobs)
        return ReuseCheck(destination, exclude_jobs=self._own_jobs)

    def reused_cost_usd(self, plan: ShardPlan) -> float | None:
        """What re-sending the reused rows would have cost at the batch price (their stored tokens)."""
        if not plan.reused_count:
            return 0.0
        cost = compute_cost(
            self.model,
            plan.reused_tokens,
            embeddings=self.settings.task == "embed",
            overrides=price_overrides(self.settings.prices),
        )
        return cost["batch"]

    # ---- ledger, key lists, jobs ----------------------------------------------------------------------------

    def begin(
        self, ledger: SubmissionLedger, identity: RunIdentity, plan: ShardPlan, *, force_token: Any
    ) -> int:
        """Record this run's header; the generation to submit, or :class:`GeminiBatchChangedInputError`."""
        return ledger.begin(
            identity=identity,
            fingerprint=plan.fingerprint,
            shard_count=len(plan.shards),
            on_changed_input=self.settings.on_changed_input,
            force_resubmit=self.settings.force_resubmit,
            force_token=force_token,
        )

    def prepare_cache(
        self, ledger: SubmissionLedger, identity: RunIdentity, plan: ShardPlan, shared: SharedContext
    ) -> RunCache:
        """Create (or re-use) the run's cache and write its name into every shard file, before any upload."""
        cache = self.cache = ensure_cache(self.hook, ledger, shared, identity.hash)
        if cache.replaced:
            forgotten = ledger.forget_uploads(len(plan.shards))
            if forgotten:
                self.log.warning(
                    "Uploading shard(s) %s again: their uploaded files name the old cache", forgotten
                )
        assert self._cache_placeholder is not None
        filled = sum(fill_cache_slots(s.path, self._cache_placeholder, cache.name) for s in plan.shards)
        self.log.info("Every request (%s) references context cache %s", f"{filled:,}", cache.name)
        return cache

    def publish(self, staging: Staging, plan: ShardPlan) -> tuple[list[str], str | None]:
        """Key lists (and skipped keys) to ``staging_path``; only after :meth:`begin` accepted the input."""
        keys_uris = [staging.publish(s.keys_path, f"{staging.uri}/{s.keys_path.name}") for s in plan.shards]
        skipped_uri = (
            staging.publish(staging.local_skipped_path, staging.skipped_uri) if plan.skipped_count else None
        )
        return keys_uris, skipped_uri

    def inline_requests(self, plan: ShardPlan) -> list[dict[str, Any]] | None:
        """A single generate shard up to ``inline_threshold_bytes`` goes inline instead of as a file."""
        single = plan.shards[0] if len(plan.shards) == 1 else None
        if (
            single
            and self.settings.task == "generate"
            and single.bytes <= self.settings.inline_threshold_bytes
        ):
            return inline_requests(single.path)
        return None

    def submit(
        self,
        ledger: SubmissionLedger,
        identity: RunIdentity,
        plan: ShardPlan,
        generation: int,
        keys_uris: list[str],
        *,
        scan: bool,
        staging: Staging,
        known_states: Mapping[str, str] | None = None,
    ) -> PlanSubmission:
        """Upload and create (or re-attach to) one job per shard that fits under the quotas; the first stage
        that calls the API. The create marker is written first; each shard's local file is deleted as soon as
        its job exists."""
        s = self.settings
        inline = self.inline_requests(plan)
        if plan.shards:
            staging.record_create_attempt()
        submitted = submit_plan(
            self.hook,
            ledger,
            plan,
            identity_hash=self.name_stem(identity),
            generation=generation,
            keys_uris=keys_uris,
            model=self.model,
            embeddings=s.task == "embed",
            inline=inline,
            retry=CreateRetry(s.create_retry_attempts, s.create_retry_base_seconds),
            scan=scan,
            on_created=self.created_jobs.append,
            on_settled=staging.remove_shard,
            on_failed_job=s.on_failed_job,
            limits=self.admission_limits(),
            known_states=known_states,
        )
        shards = submitted.shards
        self.log.info(
            "Submitted %d shard(s): %d job(s) created now, %d re-attached; %s bytes uploaded; %s requests",
            len(shards),
            submitted.created,
            submitted.attached,
            f"{submitted.uploaded_bytes:,}",
            f"{plan.request_count:,}",
        )
        return submitted

    def manifest(
        self,
        identity: RunIdentity,
        staging: Staging,
        plan: ShardPlan,
        submitted: PlanSubmission,
        skipped_uri: str | None,
        estimate: RunEstimate | None = None,
    ) -> Manifest:
        manifest = Manifest(
            kind=MANIFEST_KIND,
            version=1,
            gemini_conn_id=self.hook.gemini_conn_id,
            task=self.settings.task,
            model=self.model,
            identity=identity.text,
            fingerprint=plan.fingerprint,
            response_schema=self.request_spec().response_schema,
            staging_path=staging.uri,
            dag_id=identity.dag_id,
            run_id=identity.run_id,
            task_id=identity.task_id,
            map_index=identity.map_index,
            shards=submitted.shards,
            request_count=plan.request_count,
            skipped_count=plan.skipped_count,
            skipped_keys_path=skipped_uri,
            keep_uploaded_files=bool(self.settings.keep_uploaded_files),
            estimate=estimate.to_dict() if estimate is not None else None,
            incremental=self.settings.incremental,
            reused=plan.reused_count,
            reused_cost_usd=self.reused_cost_usd(plan),
        )
        if self.cache is not None:
            manifest["context_cache"] = self.cache.as_manifest()
        if self.round_number > 1:
            manifest["round"] = self.round_number
        return manifest

    def cancel_created_jobs(self) -> None:
        """Cancel the jobs this execution created (on kill); re-attached jobs belong to earlier tries. Then
        delete the run's cache if no job still needs it (none recorded besides the ones just cancelled)."""
        for name in self.created_jobs:
            try:
                self.hook.cancel_job(name)
                self.log.info("Cancelled job %s on kill", name)
            except Exception as e:
                self.log.warning("Could not cancel job %s on kill: %s", name, type(e).__name__)
        self.release_cache_on_kill(jobs_cancelled=True)

    def release_cache_on_kill(self, jobs_cancelled: bool) -> None:
        """On kill: delete the cache unless a job that keeps running may reference it (a recorded job not
        cancelled just now, or a create whose job is not recorded)."""
        if self.cache is None or self._ledger is None:
            return
        records = [self._ledger.shard(i) for i in range(self._shard_count)]
        if any(r.get("intent") and not r.get("job_name") for r in records):
            self.log.info("Keeping context cache %s: a job may have been created for it", self.cache.name)
            return
        running = {r["job_name"] for r in records if r.get("job_name")}
        if jobs_cancelled:
            running -= set(self.created_jobs)
        if running:
            self.log.info(
                "Keeping context cache %s: job(s) %s still use it", self.cache.name, sorted(running)
            )
            return
        delete_cache(self.hook, self.cache.name, "the task was killed", self.log)


def _final(error: BaseException, context: Context) -> bool:
    """Whether this failure ends the task for good (not retried): the cache then has no later try to serve."""
    if isinstance(error, AirflowFailException) or not isinstance(error, Exception):
        return True
    ti, task = context.get("ti"), context.get("task")
    retries = getattr(task, "retries", 0) or 0
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    if try_number is None or max_tries is None:
        return not retries
    return not (retries and try_number <= max_tries)
