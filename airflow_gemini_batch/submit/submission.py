"""Idempotent submission: at most one paid batch job per shard per task instance, whatever fails and whenever.

It is one module, past the usual size, because the rules that keep a paid create at most once per shard
(record, look up, retry or settle) only make sense read together.

Invariants (the identity, display names and records are :mod:`airflow_gemini_batch.submit.ledger`'s):

* A shard with a recorded job name re-attaches to it — unless that job ended FAILED, EXPIRED or CANCELLED
  and ``on_failed_job="resubmit"``: then that shard alone gets its next generation (``-r<n>``, recorded before
  its upload and create like every create; the other shards re-attach). A job that may still succeed, or has
  (PENDING, RUNNING, SUCCEEDED, anything unknown), is never replaced: invariant 3, paid at most once per
  generation, never again for a shard already answered.
* A shard with an intent but no job name (or a task instance without records) is looked up by its display
  name before anything is created for it; a shard whose durable record shows no intent is not looked up (no
  create was attempted). The lookup reads only the last 48 h of ``batches.list`` (the service expires every
  job 48 h after its creation, and lists newest first).
* Uploads are retried on transient errors (a repeated upload costs nothing; the SDK gives up on the first
  failed chunk). ``create`` is never blindly retried: 429 RESOURCE_EXHAUSTED and a connection never made are
  certain rejections and are retried with backoff; a 5xx or a connection lost after it was made is ambiguous
  (the job may exist), so the job is looked up by display name before the next attempt, no sooner than
  :attr:`CreateRetry.settle_seconds` after the error (a list may show a new job late).
* Both use the provider's one retry policy (:mod:`airflow_gemini_batch.retry`: bounded attempts, capped
  exponential backoff, full jitter), through tenacity.
* Without records (no task state store in the context, or records lost with a re-created DAG run) one
  ``batches.list`` scan finds any job that already carries one of this run's display names before anything
  is created: slower, still at most one job per shard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from google.genai import errors as genai_errors

from airflow_gemini_batch.exceptions import GeminiBatchQuotaError, GeminiBatchSubmitError
from airflow_gemini_batch.hooks.gemini import LIST_WINDOW_SECONDS
from airflow_gemini_batch.hooks.job_status import CANCELLED, EXPIRED, FAILED
from airflow_gemini_batch.hooks.transport_errors import describe_error, is_transient, request_not_sent
from airflow_gemini_batch.manifest import ShardInfo
from airflow_gemini_batch.retry import RetryPolicy
from airflow_gemini_batch.submit.admission import NOT_FOUND, AdmissionGate, holds_quota
from airflow_gemini_batch.submit.ledger import display_name, split_recovery

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import tenacity

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.hooks.job_status import JobStatus
    from airflow_gemini_batch.inputs.shards import Shard, ShardPlan
    from airflow_gemini_batch.submit.admission import AdmissionLimits
    from airflow_gemini_batch.submit.ledger import SubmissionLedger

log = logging.getLogger(__name__)


def find_existing_jobs(hook: GeminiBatchHook, display_names: set[str]) -> dict[str, JobStatus]:
    """One pass over the last 48 h of ``batches.list`` → per display name, the newest job of that shard.

    Run when the task instance has no records at all: the first try (normally finds nothing), a context
    without a task state store, or records lost with their DAG run (``dag.test()`` re-creates the run, which
    deletes its task state). One paged scan for all shards instead of one per shard, stopped at the first job
    older than the service's 48 h expiry (:data:`~airflow_gemini_batch.hooks.gemini.LIST_WINDOW_SECONDS`).
    A shard's recovered generations (``-r<n>``) count as that shard: the newest one is the shard's job.
    """
    found: dict[str, JobStatus] = {}
    for job in hook.list_jobs(window_seconds=LIST_WINDOW_SECONDS):
        base = split_recovery(job.display_name or "")[0]
        if base in display_names and base not in found:
            found[base] = job
            if len(found) == len(display_names):
                break
    return found


def _is_ambiguous(error: BaseException) -> bool:
    """A failure after which the job may or may not exist."""
    if isinstance(error, genai_errors.ServerError):
        return True
    if isinstance(error, genai_errors.APIError) or request_not_sent(error):
        return False
    # A transport failure (httpx, httpx2 on google-genai 3, aiohttp, a reset or timeout): the request may
    # have reached the service. ``is_transient`` recognises every transport by module.
    return is_transient(error)


def _error_text(error: BaseException) -> str:
    if isinstance(error, genai_errors.APIError):
        return f"{error.code} {error.status or ''}: {error.message or ''}".strip()
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class CreateRetry(RetryPolicy):
    """The submission's retry policy (the provider's one :class:`~airflow_gemini_batch.retry.RetryPolicy`,
    full jitter) for its uploads and creates, plus the settle time of an ambiguous create.

    Built from the operator's ``create_retry_attempts`` and ``create_retry_base_seconds``:
    ``CreateRetry(attempts, base_seconds)``.
    """

    @property
    def settle_seconds(self) -> float:
        """How long after an ambiguous create error a lookup waits before it trusts a miss: five backoff
        bases (10 s by default), at most ``max_seconds``. ``batches.list`` may show a new job only after a
        while; looking too soon would miss a job the service made and create a second one. (The real list's
        lag is not documented; the wait is cheap next to a batch job's hours, and ambiguous errors are rare.)"""
        return min(5 * self.base_seconds, self.max_seconds)


def _is_certain_rejection(error: BaseException) -> bool:
    """429 RESOURCE_EXHAUSTED, or a connection never made: the job was certainly not created."""
    return getattr(error, "code", None) == 429 or request_not_sent(error)


def create_once(
    hook: GeminiBatchHook,
    *,
    display_name: str,
    model: str,
    embeddings: bool,
    file_name: str | None,
    inline_requests: list[dict[str, Any]] | None,
    retry: CreateRetry,
) -> JobStatus:
    """Create one job with bounded retries that can never create a second one (see module docstring).

    Each attempt after an ambiguous error first looks the job up by its display name; the wait before that
    attempt is at least :attr:`CreateRetry.settle_seconds`. A lookup's own error is raised as it is.
    """
    failures: list[BaseException] = []  # the create errors worth another attempt, in order

    def attempt() -> JobStatus:
        if failures and _is_ambiguous(failures[-1]):
            found = hook.find_job_by_display_name(display_name)
            if found is not None:
                log.info("Job %s (%s) exists after an ambiguous create error", found.name, display_name)
                return found
        try:
            return hook.create_job(
                model=model,
                display_name=display_name,
                file_name=file_name,
                inline_requests=inline_requests,
                embeddings=embeddings,
            )
        except Exception as e:
            if not _is_certain_rejection(e) and not _is_ambiguous(e):
                raise GeminiBatchSubmitError(
                    f"Creating batch job {display_name} failed: {_error_text(e)}. Jobs created before it "
                    "stay recorded; fix the cause and retry the task to submit the rest."
                ) from e
            failures.append(e)
            raise

    def wait(state: tenacity.RetryCallState) -> float:
        pause = retry.delay(state.attempt_number)
        return max(pause, retry.settle_seconds) if _is_ambiguous(failures[-1]) else pause

    retrying = retry.retrying(
        retry_on=lambda e: bool(failures) and e is failures[-1],
        what=f"Create {display_name}",
        log=log,
        wait=wait,
    )
    try:
        return retrying(attempt)
    except Exception as e:
        if not failures or e is not failures[-1]:
            raise  # a permanent create error (already typed) or a lookup's own error
    last = failures[-1]
    if _is_ambiguous(last):
        time.sleep(retry.settle_seconds)
        found = hook.find_job_by_display_name(display_name)
        if found is not None:
            return found
    error_class = GeminiBatchSubmitError
    if getattr(last, "code", None) == 429 and not any(_is_ambiguous(f) for f in failures):
        error_class = GeminiBatchQuotaError  # every attempt was refused: certainly no job was made
    raise error_class(
        f"Creating batch job {display_name} failed {retry.attempts} times; last error: {_error_text(last)}. "
        "Jobs created before it stay recorded, so a retry of the task submits only the rest. If this is 429 "
        "RESOURCE_EXHAUSTED, the enqueued-token or concurrent-job quota is full: wait for running jobs, "
        "lower max_tokens_per_job, or raise create_retry_attempts / create_retry_base_seconds."
    ) from last


def upload_with_retry(hook: GeminiBatchHook, path: Any, display_name: str, retry: CreateRetry) -> str:
    """Upload one shard file, retrying transient failures (429, 5xx, connection resets) with backoff.

    The SDK gives up on the first failed upload *chunk* (the server's reply ends the resumable session), so
    a single 503 mid-upload would otherwise fail the whole submit. Repeating an upload is safe, unlike
    ``create``: a failed attempt leaves at most an unused file, which costs nothing and expires in 48 h.
    """
    retrying = retry.retrying(retry_on=is_transient, what=f"Upload for {display_name}", log=log)
    try:
        return retrying(hook.upload_jsonl, path, display_name=display_name)
    except Exception as e:
        tries = retrying.statistics.get("attempt_number", 1)
        raise GeminiBatchSubmitError(
            f"Uploading the shard file for {display_name} failed"
            f"{f' after {tries} attempts' if tries > 1 else ''}: {describe_error(e)[:300]}. "
            "Nothing was created for this shard; jobs created before it stay recorded, so a retry "
            "of the task submits only the rest."
        ) from e


#: Job states after which a shard gets its next generation (invariant 3): the job can no longer answer.
RECOVERABLE_STATES = frozenset({FAILED, EXPIRED, CANCELLED})
ON_FAILED_JOB = ("resubmit", "fail")


@dataclass
class ShardSubmission:
    """The outcome for one shard: its job, its uploaded file, whether this execution created the job, its
    recovery generation and the jobs of its earlier generations (oldest first)."""

    job_name: str
    file_name: str | None
    created_now: bool
    display_name: str
    recovery: int = 0
    previous_jobs: list[str] | None = None
    previous_files: dict[str, str] | None = None  # earlier job → its uploaded file
    state: str | None = None  # the job's state when this execution read it (None: not read)
    stuck_resubmits: int = 0  # times a job of this shard was cancelled for being stuck PENDING


def _attached(rec: dict[str, Any], state: str | None) -> ShardSubmission:
    return ShardSubmission(
        rec["job_name"],
        rec.get("file_name"),
        created_now=False,
        display_name=rec["display_name"],
        recovery=int(rec.get("recovery", 0)),
        previous_jobs=list(rec.get("previous_jobs", [])),
        previous_files=dict(rec.get("previous_files", {})),
        state=state,
        stuck_resubmits=int(rec.get("stuck_resubmits", 0)),
    )


def _file_of(rec: dict[str, Any]) -> dict[str, str]:
    return {rec["job_name"]: rec["file_name"]} if rec.get("file_name") else {}


def _next_generation(
    ledger: SubmissionLedger, index: int, rec: dict[str, Any], first_name: str, state: str
) -> dict[str, Any]:
    """Record the shard's next generation (new display name, no file, no intent) before anything is sent."""
    recovery = int(rec.get("recovery", 0)) + 1
    head, tail = first_name[:-6], first_name[-6:]  # the index ``-00003`` stays last
    nxt = {
        "fingerprint": rec["fingerprint"],
        "generation": rec["generation"],
        "display_name": f"{head}-r{recovery}{tail}",
        "recovery": recovery,
        "previous_jobs": [*rec.get("previous_jobs", []), rec["job_name"]],
        # The load deletes these once their jobs are finished (kept for now: another path may reuse one).
        "previous_files": {**rec.get("previous_files", {}), **_file_of(rec)},
        "stuck_resubmits": int(rec.get("stuck_resubmits", 0)),
    }
    log.warning(
        "Shard %d: job %s ended %s; submitting the shard alone again as %s (on_failed_job='resubmit')",
        index,
        rec["job_name"],
        state,
        nxt["display_name"],
    )
    ledger.record_recovery(index, nxt)
    return nxt


def _ended_state(hook: GeminiBatchHook, job_name: str) -> str:
    """The recorded job's state; a job the service no longer knows (404) is left to the wait to report."""
    try:
        return hook.get_job(job_name).state
    except genai_errors.ClientError as e:
        if e.code == 404:
            log.warning("Recorded job %s is not found (404); re-attaching, the wait will report it", job_name)
            return NOT_FOUND
        raise


def submit_shard(
    hook: GeminiBatchHook,
    ledger: SubmissionLedger,
    *,
    index: int,
    display_name: str,
    fingerprint: str,
    generation: int,
    model: str,
    embeddings: bool,
    shard_path: Any,
    inline_requests: list[dict[str, Any]] | None,
    retry: CreateRetry,
    on_created: Any = None,
    known_jobs: dict[str, JobStatus] | None = None,
    on_failed_job: str = "resubmit",
    known_states: Mapping[str, str] | None = None,
    gate: Callable[[int], bool] | None = None,
    estimated_tokens: int = 0,
) -> ShardSubmission | None:
    """Re-attach to the shard's recorded job, or find its orphan, or upload (once) and create it (once); a
    recorded job that ended FAILED, EXPIRED or CANCELLED is followed by the shard's next generation when
    ``on_failed_job="resubmit"`` (re-uploaded from the local shard file, which the run has just rebuilt).

    :param display_name: the shard's first display name (recovery 0); its generations add ``-r<n>``.
    :param known_jobs: first display name → the shard's newest job from one ``find_existing_jobs`` scan, when
        this task instance has no records (first try, no state store, or records lost); None when the records
        are authoritative.
    :param known_states: job name → state read moments ago (by the admission trigger): not read again.
    :param gate: asked with the shard's ``estimated_tokens`` before anything is uploaded or created for it
        (:mod:`~airflow_gemini_batch.submit.admission`); False → None is returned and nothing is sent.
    """
    base = {"fingerprint": fingerprint, "generation": generation}
    rec = ledger.shard(index)
    same_shard = split_recovery(rec.get("display_name", ""))[0] == display_name
    if not same_shard or any(rec.get(k) != v for k, v in base.items()):
        rec = {}  # a record of another input or generation: not ours to re-attach to
    rec = {**base, "display_name": display_name, **rec}
    state: str | None = None
    if not rec.get("job_name") and (known_jobs is not None or rec.get("intent") or not ledger.durable):
        if rec.get("intent"):  # the intent names the generation whose create may have happened
            found = hook.find_job_by_display_name(rec["display_name"])
        else:  # no records: the shard's newest generation, whichever it is
            known = known_jobs if known_jobs is not None else find_existing_jobs(hook, {display_name})
            found = known.get(display_name)
        if found is not None:
            log.warning(
                "Shard %d: found job %s by display name %s (created, but its name was never recorded); "
                "re-attaching instead of creating another",
                index,
                found.name,
                found.display_name,
            )
            recovery = split_recovery(found.display_name or display_name)[1]
            if recovery != int(rec.get("recovery", 0)):
                rec = {**base, "display_name": found.display_name, "recovery": recovery}
            ledger.record_job(index, rec, found.name)
            state = found.state
    if rec.get("job_name"):
        if state is None and known_states:
            state = known_states.get(rec["job_name"])
        if on_failed_job == "resubmit" and state is None:
            state = _ended_state(hook, rec["job_name"])
        if state not in RECOVERABLE_STATES or on_failed_job != "resubmit":
            log.info(
                "Shard %d: re-attaching to recorded job %s (%s)", index, rec["job_name"], rec["display_name"]
            )
            return _attached(rec, state)
        rec = _next_generation(ledger, index, rec, display_name, state)
    if gate is not None and not gate(estimated_tokens):
        return None  # no headroom under the quotas now: nothing uploaded, nothing created
    name = rec["display_name"]
    file_name = None
    if inline_requests is None:
        file_name = rec.get("file_name")
        if file_name:
            log.info("Shard %d: reusing uploaded file %s", index, file_name)
        else:
            file_name = upload_with_retry(hook, shard_path, name, retry)
            ledger.record_upload(index, rec, file_name)
            log.info("Shard %d: uploaded %s as %s", index, shard_path, file_name)
    ledger.record_intent(index, rec)
    try:
        job = create_once(
            hook,
            display_name=name,
            model=model,
            embeddings=embeddings,
            file_name=file_name,
            inline_requests=inline_requests,
            retry=retry,
        )
    except GeminiBatchQuotaError:
        ledger.clear_intent(index, rec)  # every attempt was refused: no job to look for next time
        raise
    if on_created is not None:
        on_created(job.name)
    ledger.record_job(index, rec, job.name)
    log.info("Shard %d: created job %s (%s)", index, job.name, name)
    return ShardSubmission(
        job.name,
        file_name,
        created_now=True,
        display_name=name,
        recovery=int(rec.get("recovery", 0)),
        previous_jobs=list(rec.get("previous_jobs", [])),
        previous_files=dict(rec.get("previous_files", {})),
        state="PENDING",
        stuck_resubmits=int(rec.get("stuck_resubmits", 0)),
    )


@dataclass
class PlanSubmission:
    """Every shard of a plan with its job (or waiting for headroom), and what this execution did."""

    shards: list[ShardInfo]
    created: int
    uploaded_bytes: int
    #: shard indexes not submitted in this round (no headroom under the quotas, or 429 after the retries)
    waiting: list[int] = field(default_factory=list)
    #: (job name, estimated tokens) of the run's jobs that hold quota now
    active: list[tuple[str, int]] = field(default_factory=list)
    rate_limited: bool = False

    @property
    def attached(self) -> int:
        return len(self.shards) - self.created


def submit_plan(
    hook: GeminiBatchHook,
    ledger: SubmissionLedger,
    plan: ShardPlan,
    *,
    identity_hash: str,
    generation: int,
    keys_uris: list[str],
    model: str,
    embeddings: bool,
    inline: list[dict[str, Any]] | None,
    retry: CreateRetry,
    scan: bool,
    on_created: Any = None,
    on_failed_job: str = "resubmit",
    on_settled: Callable[[int], None] | None = None,
    limits: AdmissionLimits | None = None,
    known_states: Mapping[str, str] | None = None,
) -> PlanSubmission:
    """Submit the shards of ``plan`` in order (:func:`submit_shard`): one job each, created or re-attached.

    With ``limits``, in two passes: every shard's recorded job is re-attached first (those not finished hold
    quota), then shards without a job are created in index order while they fit
    (:mod:`~airflow_gemini_batch.submit.admission`); the rest wait, as do all after a 429 that outlasted
    the create retries.

    :param scan: no records to trust (first try, no store, records lost): one ``batches.list`` scan first.
    :param inline: the single shard's requests when it goes inline instead of as an uploaded file.
    :param on_settled: called with a shard's index once it has its job (its local file is no longer needed).
    :param known_states: job name → state the admission trigger has just read.
    """
    names = [display_name(identity_hash, plan.fingerprint, s.index, generation) for s in plan.shards]
    known = find_existing_jobs(hook, set(names)) if scan and names else None
    if known:
        log.warning("Found %d job(s) of this task instance without records; re-attaching", len(known))
    gate = AdmissionGate(limits) if limits is not None else None

    def submit(shard: Shard, name: str, shard_gate: Any, known_jobs: Any) -> ShardSubmission | None:
        return submit_shard(
            hook,
            ledger,
            index=shard.index,
            display_name=name,
            fingerprint=plan.fingerprint,
            generation=generation,
            model=model,
            embeddings=embeddings,
            shard_path=shard.path,
            inline_requests=inline,
            retry=retry,
            on_created=on_created,
            known_jobs=known_jobs,
            on_failed_job=on_failed_job,
            known_states=known_states,
            gate=shard_gate,
            estimated_tokens=shard.estimated_tokens,
        )

    results: dict[int, ShardSubmission] = {}
    unsubmitted: list[tuple[Shard, str]] = []
    first_pass_gate = (lambda tokens: False) if gate is not None else None  # re-attach only
    for shard, name in zip(plan.shards, names, strict=True):
        result = submit(shard, name, first_pass_gate, known)
        if result is None:
            unsubmitted.append((shard, name))
            continue
        if gate is not None:
            if result.state is None:
                result.state = _ended_state(hook, result.job_name)
            gate.note(result.state, shard.estimated_tokens)
        results[shard.index] = result
    rate_limited = False
    for shard, name in unsubmitted:
        try:
            # The records are authoritative now (the first pass recorded every job the scan found).
            result = submit(shard, name, gate.admit if gate else None, None if ledger.durable else known)
        except GeminiBatchQuotaError as e:
            log.warning("Shard %d: %s The shards left wait for the next admission round.", shard.index, e)
            rate_limited = True
            break
        if result is None:
            break
        results[shard.index] = result

    shards: list[ShardInfo] = []
    uploaded_bytes = created = 0
    active: list[tuple[str, int]] = []
    for shard, keys_uri in zip(plan.shards, keys_uris, strict=True):
        result = results.get(shard.index)
        if result is None:
            continue
        if on_settled is not None:
            on_settled(shard.index)
        if result.created_now:
            created += 1
            uploaded_bytes += 0 if inline is not None else shard.bytes
        if holds_quota(result.state):
            active.append((result.job_name, shard.estimated_tokens))
        info = ShardInfo(
            index=shard.index,
            display_name=result.display_name,
            job_name=result.job_name,
            file_name=result.file_name,
            inline=inline is not None,
            request_count=shard.request_count,
            bytes=shard.bytes,
            estimated_tokens=shard.estimated_tokens,
            keys_path=keys_uri,
        )
        if result.recovery:
            info["recovery"] = result.recovery
            info["previous_jobs"] = result.previous_jobs or []
            if result.previous_files:
                info["previous_files"] = result.previous_files
        if result.stuck_resubmits:
            info["stuck_resubmits"] = result.stuck_resubmits
        shards.append(info)
    waiting = [s.index for s in plan.shards if s.index not in results]
    return PlanSubmission(shards, created, uploaded_bytes, waiting, active, rate_limited)


def inline_requests(shard_path: Path) -> list[dict[str, Any]]:
    """A small shard's lines as SDK ``InlinedRequest`` dicts (the key goes into ``metadata``).

    The REST request's job-wide fields move into ``config`` (GenerateContentConfig takes the generation
    config's fields flat, plus system instruction, tools, safety settings, cached content).
    """
    out = []
    with shard_path.open("rb") as f:
        for line in f:
            item = orjson.loads(line)
            request = dict(item["request"])
            config = request.pop("generationConfig", {}) or {}
            for name in ("systemInstruction", "tools", "safetySettings", "cachedContent", "toolConfig"):
                if name in request:
                    config[name] = request.pop(name)
            out.append(
                {"contents": request.pop("contents"), "metadata": {"key": item["key"]}, "config": config}
            )
    return out
