"""Row-retry rounds: submit → wait → load → submit the retryable remainder → wait → load …, as one task.

:class:`RowRounds` is what :class:`~airflow_gemini_batch.operators.batch.GeminiBatchOperator` runs; each
round is the existing stages composed, nothing new in between:

* **submit** (:meth:`RowRounds.submit`): a :class:`~airflow_gemini_batch.submit.run.SubmitRun` for round n —
  round 1 over the whole source, round n ≥ 2 over the same source filtered to round n-1's remainder keys
  (:mod:`airflow_gemini_batch.submit.round_input`), with its own ledger records, staging folder and display
  names (``-a<n>``). So each round is idempotent the way a submission is: a resumption on another worker, a
  retry or a clear re-attaches to the round's recorded jobs and never pays twice.
* **wait**: the operator's, the sensor's way (poll once, defer to the trigger while not done).
* **load** (:meth:`RowRounds.load`): a :class:`~airflow_gemini_batch.results.load_run.LoadRun` with
  ``attempts = n``, its sink wrapped by a :class:`~airflow_gemini_batch.results.remainder.RemainderRecorder`
  that lists the retryable keys in the round's staging folder (``remainder.jsonl``). Round n's rows
  overwrite only the keys it resent (upsert on key): a row that succeeded is never sent or written again.
* **decide** (:meth:`RowRounds.wants_another`): another round while there is a remainder and fewer than
  ``max_row_retries`` retry rounds ran; otherwise the remainder's rows stay as loaded (``attempts =
  max_row_retries + 1`` for the exhausted ones).

Counts add up per round and in total (:meth:`RowRounds.total`): each round's keys are its ``counts``
(``succeeded + failed + invalid_output + missing``, plus ``reused``: with ``incremental=True`` the keys round 1
left out because the destination already holds their answer); the keys it resent move to the next round, the
rest are *settled*; the task's counts are the sum of every round's settled keys and equal the first round's
keys (reported as ``reconciled``). A key the source no longer has when a round re-reads it is counted as
``unsent`` and keeps its loaded row.

State between the phases is small and lives where Airflow keeps it: the round's manifest (it names its
round) and the records of the rounds loaded so far in XCom (pushed before each deferral), every paid job in the task state store (the ledger). A new try (a retry or a clear) starts at
round 1 again and replays: every round re-attaches to its recorded jobs (no create), is loaded again (same
rows, same remainder) and leads to the same next round, until a round is not finished or the last one is.

Admission under the quotas is one more phase between *submit* and *wait*: :meth:`RowRounds.submit` is one
admission round of round n (:meth:`SubmitRun.admit <airflow_gemini_batch.submit.run.SubmitRun.admit>`) and
returns :class:`~airflow_gemini_batch.submit.admission.AdmissionPending` while shards of round n wait for
headroom; the operator pushes a small "admitting round n" record and defers to the headroom trigger
(``method_name="execute_admitted"``), which calls :meth:`RowRounds.submit` for the same round again with the
trigger's state — the retry path: it re-attaches to the jobs already created and creates the next ones.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.manifest import RESULTS_SUMMARY_KIND
from airflow_gemini_batch.results.load_run import LoadRun
from airflow_gemini_batch.results.remainder import RemainderRecorder
from airflow_gemini_batch.results.rows import EXAMPLES, OUTCOMES, REUSED, SUCCEEDED, TOKEN_FIELDS
from airflow_gemini_batch.submit.admission import AdmissionPending
from airflow_gemini_batch.submit.run import SubmitRun

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.manifest import Manifest
    from airflow_gemini_batch.results.load_run import LoadSettings
    from airflow_gemini_batch.sinks import Sink
    from airflow_gemini_batch.submit.admission import AdmissionState
    from airflow_gemini_batch.submit.run import SubmitSettings

REMAINDER_FILE = "remainder.jsonl"


def remainder_uri(manifest: Manifest | dict[str, Any]) -> str:
    """Where a round's load lists the keys the next round sends again: beside its key lists."""
    return f"{str(manifest['staging_path']).rstrip('/')}/{REMAINDER_FILE}"


def _admission(manifest: Manifest | dict[str, Any]) -> dict[str, int]:
    """A round's admission in its record: how many admission rounds it took, how many waits for headroom
    (deferrals, or waits on the worker) between them, how many of them a 429 ended."""
    admission = manifest.get("admission") or {}
    rounds = len(admission.get("rounds") or []) or 1
    return {"rounds": rounds, "deferrals": rounds - 1, "rate_limited": int(admission.get("rate_limited", 0))}


class RoundLoad(LoadRun):
    """A round's load: a :class:`LoadRun` whose sink also lists the retryable keys (see the module docstring)."""

    def __init__(self, manifest: Any, settings: LoadSettings, log: Any, gemini_conn_id: str | None, n: int):
        super().__init__(manifest, settings, log, gemini_conn_id=gemini_conn_id, attempts=n)
        self.recorder: RemainderRecorder | None = None

    def sink(self) -> Sink:
        self.recorder = RemainderRecorder(super().sink(), remainder_uri(self.manifest))
        return self.recorder


class RowRounds:
    """The rounds of one task instance (see the module docstring).

    :param hook: the hook every submission and load goes through.
    :param submit: validated submit settings (the same for every round).
    :param load: validated load settings (the same destination for every round).
    :param max_row_retries: how many retry rounds may follow the first.
    :param log: the operator's task log.
    """

    def __init__(
        self,
        hook: GeminiBatchHook,
        submit: SubmitSettings,
        load: LoadSettings,
        max_row_retries: int,
        log: Logger | logging.Logger | None = None,
    ) -> None:
        self.hook = hook
        self.submit_settings = submit
        self.load_settings = load
        self.max_row_retries = max_row_retries
        self.log = log or logging.getLogger(__name__)
        #: the current round's submission (what ``on_kill`` may cancel).
        self.current: SubmitRun | None = None

    def submit(
        self,
        context: Context,
        n: int,
        previous: Manifest | dict[str, Any] | None,
        admission: AdmissionState | None = None,
    ) -> Manifest | AdmissionPending:
        """One admission round of round ``n`` (:meth:`SubmitRun.admit`): its manifest once every shard has a
        job, else :class:`AdmissionPending` (the operator defers, then calls this again with the trigger's
        state). Round n ≥ 2 sends ``previous``'s remainder keys."""
        key_filter = remainder_uri(previous) if n > 1 and previous is not None else None
        self.current = SubmitRun(
            self.hook, self.submit_settings, self.log, round_number=n, key_filter=key_filter
        )
        manifest = self.current.admit(context, admission)
        if isinstance(manifest, AdmissionPending):
            return manifest
        if key_filter is not None:
            manifest["key_filter"] = key_filter
        self.log.info(
            "Round %d: %d request(s) in %d job(s)%s",
            n,
            manifest.get("request_count", 0),
            len(manifest.get("shards") or []),
            f", the retryable remainder of round {n - 1}" if n > 1 else "",
        )
        return manifest

    def resubmit(self, context: Context, manifest: Manifest | dict[str, Any]) -> Manifest:
        """The round of ``manifest`` submitted again (the retry path: its recorded jobs re-attach, a shard
        whose job ended CANCELLED gets its next generation): what a stuck job's cancel is followed by. Its
        admission waits on the worker if it must (rare: the cancelled job has just freed its quota)."""
        n = int(manifest.get("round", 1))
        key_filter = manifest.get("key_filter")
        self.current = SubmitRun(
            self.hook, self.submit_settings, self.log, round_number=n, key_filter=key_filter
        )
        resubmitted = self.current.execute(context)
        if key_filter is not None:
            resubmitted["key_filter"] = key_filter
        return resubmitted

    def load(self, manifest: Manifest | dict[str, Any], n: int, sent: int | None = None) -> dict[str, Any]:
        """Load round ``n`` (``attempts = n``) and return its record: counts, what moves on, tokens, cost.

        :param sent: how many keys the previous round passed on (to count the ones the source lost).
        """
        run = RoundLoad(manifest, self.load_settings, self.log, self.hook.gemini_conn_id, n)
        summary = run.execute()
        recorder = run.recorder
        assert recorder is not None
        last = n > self.max_row_retries
        resent = dict.fromkeys(OUTCOMES, 0) if last else dict(recorder.counts)
        reused = int(summary.get("reused") or 0)
        record = {
            "round": n,
            "jobs": [j["job_name"] for j in summary["jobs"]],
            "request_count": summary["request_count"],
            "counts": summary["counts"],
            "resent": sum(resent.values()),
            "reused": reused,
            "settled": {**{o: summary["counts"][o] - resent[o] for o in OUTCOMES}, REUSED: reused},
            "unsent": max(0, (sent or 0) - summary["request_count"] - reused) if n > 1 else 0,
            "exhausted": recorder.key_count if last else 0,
            "first_failed_keys": summary["first_failed_keys"] if last else recorder.final_failure_examples,
            "tokens": summary["tokens"],
            "cost": summary["cost"],
            "destination": summary["destination"],
            "rows_loaded": summary["rows_loaded"],
            "admission": _admission(manifest),
            "reused_cost_usd": summary.get("reused_cost_usd"),
            "summary_jobs": summary["jobs"],
        }
        self.log.info(
            "Round %d loaded: %s; %d key(s) to send again%s",
            n,
            summary["counts"],
            record["resent"],
            f", {record['exhausted']} retryable key(s) left failed: max_row_retries={self.max_row_retries}"
            if record["exhausted"]
            else "",
        )
        return record

    def wants_another(self, record: dict[str, Any]) -> bool:
        return record["resent"] > 0 and record["round"] <= self.max_row_retries

    def total(self, records: list[dict[str, Any]], cost_of: LoadRun) -> dict[str, Any]:
        """The task's summary over every round (a results summary, plus ``rounds``): see the module docstring."""
        counts = {o: sum(r["settled"].get(o, 0) for r in records) for o in (*OUTCOMES, REUSED)}
        unsent = sum(r["unsent"] for r in records)
        first = records[0]["request_count"] + records[0].get("reused", 0) if records else 0
        keys_total = sum(counts.values()) + unsent
        if keys_total != first:
            self.log.warning(
                "Round counts do not add up: %d settled + unsent, %d sent in round 1", keys_total, first
            )
        tokens = {t: sum(r["tokens"][t] for r in records) for t in TOKEN_FIELDS}
        not_ok = keys_total - counts[SUCCEEDED] - counts[REUSED]
        failed_fraction = not_ok / keys_total if keys_total else 0.0
        max_failed = self.load_settings.max_failed_fraction
        first_failed = [k for r in records for k in r["first_failed_keys"]][:EXAMPLES]
        return {
            "kind": RESULTS_SUMMARY_KIND,
            "version": 1,
            "status": "ok" if failed_fraction <= max_failed else "too_many_failures",
            "task": self.submit_settings.task,
            "model": self.submit_settings.model,
            "request_count": keys_total,
            "counts": counts,
            "failed_fraction": round(failed_fraction, 6),
            "max_failed_fraction": max_failed,
            "first_failed_keys": first_failed,
            "jobs": [j for r in records for j in r["summary_jobs"]],
            "tokens": tokens,
            "cost": cost_of.cost(tokens),
            "destination": records[-1]["destination"] if records else {},
            "rows_loaded": sum(r["rows_loaded"] for r in records),
            "max_row_retries": self.max_row_retries,
            "reconciled": keys_total == first,
            "reused": counts[REUSED],
            "reused_cost_usd": records[0].get("reused_cost_usd") if records else None,
            "rounds": [
                {k: v for k, v in r.items() if k not in ("summary_jobs", "destination")} for r in records
            ],
        }
