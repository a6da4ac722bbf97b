"""GeminiBatchOperator: the whole batch in one deferrable task — submit, wait, load, and row-retry rounds.

Thin by design: :class:`~airflow_gemini_batch.submit.rounds.RowRounds` owns the rounds and their order; the
submit, the wait and the load are the same code the three single-stage operators run. The operator only
moves between the phases: it waits the sensor's way (one read, then a deferral to the same trigger while jobs
are not done, so no worker slot is held), and carries the round's manifest (which names its round) and the
records of the rounds before it in XCom (see the rounds module for why that is all the state it needs).
Admission under the quotas defers the same way as the submit operator's: a round that cannot create all its
jobs yet pushes which round it is admitting and defers to
:class:`~airflow_gemini_batch.triggers.admission.GeminiBatchAdmissionTrigger`; ``execute_admitted`` resumes
that round (the previous round's manifest, still in XCom, names its remainder).
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator, conf

from airflow_gemini_batch.exceptions import GeminiBatchInputError, GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.lineage import (
    OpenLineageMixin,
    destination_alias_name,
    destination_place,
    load_lineage,
    submit_lineage,
)
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import MANIFEST_XCOM_KEY, RESULTS_SUMMARY_XCOM_KEY, job_names
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.results.load_run import LoadRun, LoadSettings
from airflow_gemini_batch.submit.admission import AdmissionPending, AdmissionState
from airflow_gemini_batch.submit.ledger import SubmissionLedger
from airflow_gemini_batch.submit.rounds import RowRounds
from airflow_gemini_batch.submit.run import SubmitSettings
from airflow_gemini_batch.submit.stuck import (
    DEFAULT_MAX_PENDING_SECONDS,
    DEFAULT_MAX_STUCK_RESUBMITS,
    cancel_stuck,
    check_stuck_settings,
    stuck_exempt,
)
from airflow_gemini_batch.triggers.admission import GeminiBatchAdmissionTrigger
from airflow_gemini_batch.wait.verdict import DEFAULT_TIMEOUT_SECONDS, DEFER_TIMEOUT_SLACK_SECONDS, WaitPolicy
from airflow_gemini_batch.wait.waiter import JobWaiter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_gemini_batch.manifest import Manifest
    from airflow_gemini_batch.storage import AnyPath

#: XCom key of the records of the rounds loaded so far (pushed before each deferral; small).
ROUNDS_XCOM_KEY = "gemini_batch_rounds"
#: XCom key of the round waiting for quota headroom (``{"round": n}``), pushed before an admission deferral.
ADMITTING_XCOM_KEY = "gemini_batch_admitting"
# Named alike by both stages: the source's key column names the destination's (and incremental's lookup).
_ONE_NAME = ("key_column",)


class GeminiBatchOperator(OpenLineageMixin, BaseOperator):
    """Submit rows as Gemini batch jobs, wait in the triggerer, load the answers, and resend retryable failures.

    Takes every argument of ``GeminiBatchSubmitOperator`` (the source, the requests, the limits, the
    idempotency options; not ``wait_for_completion``) and of ``GeminiBatchLoadResultsOperator`` (the
    destination; not ``manifest``), with the same names and meanings; ``key_column`` names the key column of
    the source and of the destination alike. Rows that come back ``missing`` or ``failed`` with a retryable
    error (HTTP 429, 500, 503, 504; RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE) are sent again in a follow-up
    batch, up to ``max_row_retries`` rounds; a row that succeeded, or failed for good (400 INVALID_ARGUMENT,
    a blocked prompt, invalid output), is never sent again. Every destination row carries ``attempts``.
    With ``incremental=True`` round 1 leaves out the rows whose answer the destination already holds for the
    same request fingerprint (counted as ``reused``; their rows stay as they are); later rounds send only the
    retryable remainder.

    The task succeeds when the final counts pass ``max_failed_fraction``; otherwise it fails with
    ``GeminiBatchResultsError`` after every round is loaded (rows whose retries ran out stay ``failed`` with
    ``attempts = max_row_retries + 1``). Returns the total summary (also under XCom key
    ``gemini_batch_results_summary``) with per-round ``rounds`` records; a table destination is required for
    retry rounds (``destination_path`` works with ``max_row_retries=0``).

    :param max_row_retries: follow-up rounds for retryable rows (default 2; 0: one batch, like the trio).
    :param deferrable: wait in the triggerer between the phases — for a round's jobs, and for quota headroom
        between admission rounds (``max_concurrent_jobs``, ``max_enqueued_tokens``, a 429 on create) — so no
        worker slot is held; otherwise on the worker (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between job reads while waiting (for the jobs, or for quota headroom).
    :param wait_timeout: seconds one round may wait before failing with ``GeminiBatchTimeoutError``.
    :param allow_partial: load a round whose jobs partly FAILED / EXPIRED / CANCELLED (their keys are loaded
        as failed); otherwise such a round fails the task, and a clear resubmits those shards alone.
    :param cancel_on_kill: on kill, cancel the round's jobs that are not finished.
    :param max_pending_seconds: a job still PENDING this long after its creation (default 12 h, well before
        the service's 48 h expiry and inside its 24 h target) is cancelled and its shard resubmitted alone
        as its next generation (counted in the task state before the cancel; the new job is created only
        once the old one reads CANCELLED); None: never. Needs a task state store and
        ``on_failed_job="resubmit"``; otherwise only the near-expiry warning applies.
    :param max_stuck_resubmits: how many times one shard may be resubmitted so (default 1); past it the job
        is left to run and the near-expiry warning applies.
    :param gemini_conn_id: the ``gemini_batch`` connection. (templated)
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = tuple(
        dict.fromkeys(
            [
                *GeminiBatchSubmitOperator.template_fields,
                *(f for f in GeminiBatchLoadResultsOperator.template_fields if f != "manifest"),
            ]
        )
    )
    template_fields_renderers = GeminiBatchSubmitOperator.template_fields_renderers
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#d2e3fc"
    # Set from the settings in __init__ (one attribute per field), declared here for the type checker.
    source_conn_id: str | None
    sql: str | None
    input_path: AnyPath | None
    destination_conn_id: str | None
    destination_table: str | None
    destination_path: AnyPath | None
    on_failed_job: str

    def __init__(
        self,
        *,
        max_row_retries: int = 2,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60.0,
        wait_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        allow_partial: bool = False,
        cancel_on_kill: bool = True,
        max_pending_seconds: float | None = DEFAULT_MAX_PENDING_SECONDS,
        max_stuck_resubmits: int = DEFAULT_MAX_STUCK_RESUBMITS,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        stage_names = set(SubmitSettings.names()) | set(LoadSettings.names())
        stage_args = {k: kwargs.pop(k) for k in list(kwargs) if k in stage_names}
        super().__init__(**kwargs)
        if "destination_key_column" in stage_args:
            raise GeminiBatchInputError(
                "GeminiBatchOperator names the source's and the destination's key column with one argument: "
                "give key_column, not destination_key_column."
            )
        # incremental=True looks up answers in this task's own destination, keyed by the same column.
        stage_args["destination_key_column"] = stage_args.get("key_column", SubmitSettings.key_column)
        submit = SubmitSettings.of(stage_args).validated()
        load = LoadSettings.of({**stage_args, "key_column": submit.key_column}).validated()
        if not isinstance(max_row_retries, int) or max_row_retries < 0:
            raise GeminiBatchInputError(f"max_row_retries must be an integer >= 0, not {max_row_retries!r}")
        if max_row_retries and load.destination_path is not None:
            raise GeminiBatchInputError(
                f"GeminiBatchOperator with destination_path={load.destination_path!r} and "
                f"max_row_retries={max_row_retries}: row-retry rounds need a table destination. Each load "
                "rewrites an object-store folder whole (one file set, one row per key), so a retry round's "
                "load would replace round 1's file with only the rows it resent; a table takes the resent "
                "rows as an upsert on the key. Fix: set max_row_retries=0 (one round, like the three "
                "operators), or load into a table (destination_conn_id + destination_table)."
            )
        for name in SubmitSettings.names():
            setattr(self, name, getattr(submit, name))
        for name in LoadSettings.names():
            if name not in _ONE_NAME:
                setattr(self, name, getattr(load, name))
        check_stuck_settings(max_pending_seconds, max_stuck_resubmits)
        self.max_row_retries = max_row_retries
        self.max_pending_seconds, self.max_stuck_resubmits = max_pending_seconds, max_stuck_resubmits
        self.deferrable, self.poll_interval, self.wait_timeout = deferrable, poll_interval, wait_timeout
        self.allow_partial, self.cancel_on_kill, self.gemini_conn_id = (
            allow_partial,
            cancel_on_kill,
            gemini_conn_id,
        )
        if not self.outlets:
            self.outlets = [AssetAlias(name=destination_alias_name(self.dag_id, self.task_id))]
        self._rounds: RowRounds | None = None
        self._waiter: JobWaiter | None = None
        self._manifest: Manifest | None = None
        self._summary: dict[str, Any] | None = None

    @cached_property
    def hook(self) -> GeminiBatchHook:
        return batch_hook(self.gemini_conn_id)

    def rounds(self) -> RowRounds:
        if self._rounds is None:
            self._rounds = RowRounds(
                self.hook, SubmitSettings.of(self), LoadSettings.of(self), self.max_row_retries, self.log
            )
        return self._rounds

    # ---- phases -------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        """Round 1 (a new try replays the rounds from here: each re-attaches to its recorded jobs)."""
        return self._run_from(context, 1, previous=None, records=[])

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """A round's wait ended in the triggerer: conclude it as the sensor does, load it, go on. The round is
        the one the manifest in XCom names (pushed before the deferral, so any worker finds it)."""
        ti = context["ti"]
        manifest = ti.xcom_pull(task_ids=ti.task_id, key=MANIFEST_XCOM_KEY, map_indexes=ti.map_index)
        records = ti.xcom_pull(task_ids=ti.task_id, key=ROUNDS_XCOM_KEY, map_indexes=ti.map_index)
        if not manifest:
            raise GeminiBatchTriggerEventError(
                f"The deferred task {ti.task_id} has no {MANIFEST_XCOM_KEY} XCom to resume from; clear it: "
                "every round re-attaches to its recorded jobs."
            )
        self._manifest = manifest
        decision = self._waiter_for(manifest, context).decide(event)
        if decision.stuck:
            manifest = self._wait(context, self._unstick(context, manifest, decision.stuck))
        else:
            decision.raise_for_outcome()
        return self._load_and_go_on(context, int(manifest.get("round", 1)), manifest, list(records or []))

    def execute_admitted(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Quota headroom appeared (the admission trigger fired): the next admission round of the round named
        by the ``gemini_batch_admitting`` XCom, on the retry path; round n ≥ 2 finds its input through round
        n-1's manifest, which is still this task's manifest XCom."""
        admission = AdmissionState.from_event(event)
        ti = context["ti"]
        admitting = ti.xcom_pull(task_ids=ti.task_id, key=ADMITTING_XCOM_KEY, map_indexes=ti.map_index)
        records = ti.xcom_pull(task_ids=ti.task_id, key=ROUNDS_XCOM_KEY, map_indexes=ti.map_index)
        n = int(admitting["round"]) if isinstance(admitting, dict) and "round" in admitting else 0
        previous = (
            ti.xcom_pull(task_ids=ti.task_id, key=MANIFEST_XCOM_KEY, map_indexes=ti.map_index)
            if n > 1
            else None
        )
        if n < 1 or (n > 1 and (not previous or int(previous.get("round", 1)) != n - 1)):
            raise GeminiBatchTriggerEventError(
                f"The deferred task {ti.task_id} has no {ADMITTING_XCOM_KEY} XCom (or no manifest of the round "
                "before) to resume admission from; clear it: every round re-attaches to its recorded jobs."
            )
        return self._run_from(context, n, previous, list(records or []), admission)

    def _run_from(
        self,
        context: Context,
        n: int,
        previous: Manifest | None,
        records: list[dict[str, Any]],
        admission: AdmissionState | None = None,
    ) -> dict[str, Any]:
        manifest = self._manifest = self._admit(context, n, previous, records, admission)
        ti = context["ti"]
        ti.xcom_push(key=MANIFEST_XCOM_KEY, value=manifest)  # before any deferral: the resumption reads it
        ti.xcom_push(key=ROUNDS_XCOM_KEY, value=records)
        if manifest.get("shards"):
            manifest = self._wait(context, manifest)
        return self._load_and_go_on(context, n, manifest, records)

    def _admit(
        self,
        context: Context,
        n: int,
        previous: Manifest | None,
        records: list[dict[str, Any]],
        admission: AdmissionState | None,
    ) -> Manifest:
        """Round ``n``'s manifest once every shard has its job; between admission rounds the task defers (no
        worker slot held) or, not deferrable, waits on the worker as the submit operator does."""
        outcome = self.rounds().submit(context, n, previous, admission)
        while isinstance(outcome, AdmissionPending):
            if self.deferrable:
                ti = context["ti"]
                ti.xcom_push(key=ROUNDS_XCOM_KEY, value=records)
                ti.xcom_push(key=ADMITTING_XCOM_KEY, value={"round": n})
                self.defer(
                    trigger=GeminiBatchAdmissionTrigger.of(
                        outcome, self.gemini_conn_id, self.poll_interval, self.cancel_on_kill
                    ),
                    method_name="execute_admitted",
                )
            state = outcome.wait(self.hook, self.poll_interval, self.log)
            outcome = self.rounds().submit(context, n, previous, state)
        return outcome

    def _wait(self, context: Context, manifest: Manifest) -> Manifest:
        """Wait for the round's jobs; the manifest waited for (a stuck job's shard changes it)."""
        while True:
            waiter = self._waiter_for(manifest, context, deadline=time.time() + self.wait_timeout)
            # Deferrable: one read first (finished jobs, a replay, cost no trip to the triggerer).
            decision = waiter.poll() if self.deferrable else waiter.until_decided(self.poll_interval)
            if not decision.stuck:
                break
            manifest = self._unstick(context, manifest, decision.stuck)
        if decision.done:
            decision.raise_for_outcome()
            return manifest
        self.defer(
            trigger=waiter.trigger(self.gemini_conn_id, self.poll_interval, self.cancel_on_kill),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.wait_timeout + DEFER_TIMEOUT_SLACK_SECONDS),
        )

    def _load_and_go_on(
        self, context: Context, n: int, manifest: Manifest, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        sent = records[-1]["resent"] if records else None
        record = self.rounds().load(manifest, n, sent)
        records.append(record)
        if self.rounds().wants_another(record):
            return self._run_from(context, n + 1, manifest, records)
        return self._finish(context, manifest, records)

    def _finish(self, context: Context, manifest: Manifest, records: list[dict[str, Any]]) -> dict[str, Any]:
        pricing = LoadRun(manifest, LoadSettings.of(self), self.log, gemini_conn_id=self.gemini_conn_id)
        summary = self._summary = self.rounds().total(records, pricing)
        self.log.info(
            "%d round(s): %s; %s",
            len(records),
            summary["counts"],
            ", ".join(
                f"round {r['round']}: {r['request_count']} sent, {r['resent']} resent" for r in records
            ),
        )
        ti = context["ti"]
        ti.xcom_push(key=ROUNDS_XCOM_KEY, value=summary["rounds"])
        ti.xcom_push(key=RESULTS_SUMMARY_XCOM_KEY, value=summary)
        self._publish_asset(context, summary)
        pricing.raise_for_failures(summary)
        return summary

    def _waiter_for(self, manifest: Manifest, context: Context, deadline: float | None = None) -> JobWaiter:
        # Stuck jobs are cancelled only where the count is durable and a cancelled shard is resubmitted.
        stuck_on = context.get("task_state_store") is not None and self.on_failed_job == "resubmit"
        policy = WaitPolicy(
            allow_partial=self.allow_partial,
            max_pending_seconds=self.max_pending_seconds if stuck_on else None,
            stuck_exempt=stuck_exempt(manifest, self.max_stuck_resubmits),
        )
        self._waiter = JobWaiter(self.hook, job_names(manifest), policy, self.log, deadline)
        return self._waiter

    @staticmethod
    def _ledger(context: Context, manifest: Manifest) -> SubmissionLedger:
        return SubmissionLedger(context.get("task_state_store"), int(manifest.get("round", 1)))

    def _unstick(self, context: Context, manifest: Manifest, stuck: list[str]) -> Manifest:
        """Count and cancel the stuck jobs, then submit the round again: their shards alone get new jobs."""
        ledger = self._ledger(context, manifest)
        cancel_stuck(self.hook, ledger, manifest, stuck, self.max_stuck_resubmits, self.log)
        manifest = self._manifest = self.rounds().resubmit(context, manifest)
        context["ti"].xcom_push(key=MANIFEST_XCOM_KEY, value=manifest)  # what a resumption waits for
        return manifest

    def _publish_asset(self, context: Context, summary: dict[str, Any]) -> None:
        """An asset event for the concrete destination, through the alias this task declared."""
        aliases = [o for o in self.outlets if isinstance(o, AssetAlias)]
        events = context.get("outlet_events")
        place = destination_place(self.destination_conn_id, self.destination_table, self.destination_path)
        if not aliases or events is None or place is None:
            return
        for alias in aliases:
            events[alias].add(place.asset(), extra={"counts": summary["counts"]})

    def lineage(self) -> tuple[list[Any], list[Any], Any]:
        inputs, _, _ = submit_lineage(
            source_conn_id=self.source_conn_id, sql=self.sql, input_path=self.input_path, manifest=None
        )
        _, outputs, facet = load_lineage(
            destination_conn_id=self.destination_conn_id,
            destination_table=self.destination_table,
            destination_path=self.destination_path,
            summary=self._summary,
        )
        return inputs, outputs, facet

    def on_kill(self) -> None:
        """Cancel the round's unfinished jobs (waiting) or the jobs this execution created (submitting)."""
        if not self.cancel_on_kill:
            return
        if self._waiter is not None:
            self._waiter.cancel_unfinished()
        elif self._rounds is not None and self._rounds.current is not None:
            self._rounds.current.cancel_created_jobs()
