"""Admission under the quotas: a run needing more jobs or tokens than fit now is submitted in rounds.

The service refuses a create (429 RESOURCE_EXHAUSTED) past 100 unfinished batch jobs per project, or past
the enqueued-token quota of a model (per tier: 3 M tokens for 2.5 Flash at Tier 1). Instead of refusing such
a run, or failing on the 429, the submit stage creates what fits, then waits — in the triggerer when the
operator is deferrable, so no worker slot is held — until jobs of the run reach a terminal state, and
submits the next shards, across as many rounds as needed.

Invariants:

* The limits count *this run's own* unfinished jobs (the ones it created or re-attached): other runs'
  jobs in the same project are invisible until the service says so with a 429, which is handled the same
  way — after the in-process backoff of :func:`~airflow_gemini_batch.submit.submission.create_once` the
  round ends, and the next one starts after ``poll_interval`` (doubling per rate-limited round in a row, up to
  :data:`MAX_RATE_LIMIT_FACTOR` times), or sooner when one of the run's jobs ends.
* A round is a whole submit execution on the retry path: the input is read and sharded again (the same
  rows give the same shards and fingerprint), the ledger's header is unchanged, every recorded shard is
  re-attached and only shards without a job are created. A resumed round may run on another worker, where
  the local shard files of the round before are gone; nothing but the ledger (``task_state_store``) and the
  source is needed, and the ledger's intents and display-name lookup keep one job per shard whatever
  dies when (invariant 3). The trigger between rounds only reads job states: it never creates anything, so a
  triggerer restart (the trigger rebuilt from ``serialize()``) cannot make a job.
* Shards are admitted in index order: once one waits, every later one waits too, so a long run is not
  overtaken by its own small shards.
* A round starts when a tenth of ``max_concurrent_jobs`` is free (or every shard left fits, or every job
  of the run has ended): each round re-reads the input, so a run of 1 000 shards under a limit of 100 takes
  about ten reads of its source per hundred jobs rather than one per finished job.
* A single shard never exceeds ``max_enqueued_tokens`` (the shard token budget is capped at it), so every
  shard fits once the run's other jobs have ended: admission always makes progress.
* What happened is kept in :class:`AdmissionState` (rounds, creates, rate-limited deferrals): a few numbers
  per round, carried in the trigger's kwargs and event, and written into the manifest's ``admission``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.job_status import TERMINAL_STATES

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.retry import AnyLogger

DEFAULT_MAX_CONCURRENT_JOBS = 100  # the service's limit of unfinished batch jobs per project
#: After a rate-limited round the next starts after ``poll_interval``, doubling per such round, up to this.
MAX_RATE_LIMIT_FACTOR = 16
#: The job state a shard's job gets in the ledger when the service no longer knows it (see submission).
NOT_FOUND = "NOT_FOUND"
ADMIT_EVENT = "admit"


def holds_quota(state: str | None) -> bool:
    """Whether a job in ``state`` counts against the quotas (not terminal; unknown states count)."""
    return state not in TERMINAL_STATES and state != NOT_FOUND


@dataclass(frozen=True)
class AdmissionLimits:
    """How much of the run may be unfinished at once.

    :param max_concurrent_jobs: unfinished jobs of the run at once (the service's limit is 100 per project).
    :param max_enqueued_tokens: estimated tokens of the run's unfinished jobs (None: unlimited); the
        service's quota is per model and tier, see the README.
    """

    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    max_enqueued_tokens: int | None = None

    def fits(self, active_tokens: Sequence[int], waiting_tokens: Sequence[int]) -> int:
        """How many of ``waiting_tokens`` (shards in order) fit beside jobs holding ``active_tokens``."""
        count, used, admitted = len(active_tokens), sum(active_tokens), 0
        for tokens in waiting_tokens:
            if count >= self.max_concurrent_jobs:
                break
            if self.max_enqueued_tokens is not None and used + tokens > self.max_enqueued_tokens:
                break
            count, used, admitted = count + 1, used + tokens, admitted + 1
        return admitted

    def round_size(self, waiting_tokens: Sequence[int]) -> int:
        """How many shards must fit before a new round is worth its re-read of the input (module docstring)."""
        batch = max(1, self.max_concurrent_jobs // 10)
        return max(1, min(batch, self.fits([], waiting_tokens)))


class AdmissionGate:
    """One round's bookkeeping: the run's jobs that hold quota, and whether the next shard may be created."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.active_tokens: list[int] = []
        self.closed = False

    def note(self, state: str | None, tokens: int) -> None:
        """A re-attached job of the run: it holds quota unless it has ended."""
        if holds_quota(state):
            self.active_tokens.append(tokens)

    def admit(self, tokens: int) -> bool:
        """Reserve room for one more job of ``tokens``; once one shard is refused, every later one is."""
        if self.closed or not self.limits.fits(self.active_tokens, [tokens]):
            self.closed = True
            return False
        self.active_tokens.append(tokens)
        return True


@dataclass
class AdmissionState:
    """What admission did so far, across deferrals; JSON in trigger kwargs, events and the manifest.

    :param rounds: one dict per round: ``round``, ``created`` (jobs created in it), ``attached`` (jobs of
        earlier rounds or tries), ``waiting`` (shards left), ``reason`` (``done``, ``quota`` or
        ``rate_limited``).
    :param rate_limited: rounds ended by a 429 that outlasted the create retries.
    :param known_states: job name → state, read by the trigger that ended the last wait (not read again).
    """

    rounds: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: int = 0
    known_states: dict[str, str] = field(default_factory=dict)

    @property
    def rate_limited_in_a_row(self) -> int:
        n = 0
        for r in reversed(self.rounds):
            if r.get("reason") != "rate_limited":
                break
            n += 1
        return n

    def record(self, *, created: int, attached: int, waiting: int, reason: str) -> dict[str, Any]:
        entry = {
            "round": len(self.rounds) + 1,
            "created": created,
            "attached": attached,
            "waiting": waiting,
            "reason": reason,
        }
        self.rounds.append(entry)
        if reason == "rate_limited":
            self.rate_limited += 1
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": [dict(r) for r in self.rounds], "rate_limited": self.rate_limited}

    def summary(self, limits: AdmissionLimits) -> dict[str, Any]:
        """The manifest's ``admission``: the limits, every round, and the deferrals between them."""
        return {
            **self.to_dict(),
            "max_concurrent_jobs": limits.max_concurrent_jobs,
            "max_enqueued_tokens": limits.max_enqueued_tokens,
            "deferrals": max(0, len(self.rounds) - 1),
        }

    @classmethod
    def from_dict(
        cls, body: Mapping[str, Any], known_states: Mapping[str, str] | None = None
    ) -> AdmissionState:
        rounds = body.get("rounds")
        if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
            raise GeminiBatchTriggerEventError("Admission state field 'rounds' must be a list of dicts.")
        return cls(
            rounds=[dict(r) for r in rounds],
            rate_limited=int(body.get("rate_limited", 0)),
            known_states=dict(known_states or {}),
        )

    @classmethod
    def from_event(cls, event: Any) -> AdmissionState:
        """The state to resume from, out of an admission trigger's event; an error event raises."""
        if not isinstance(event, dict) or not isinstance(event.get("admission"), dict):
            raise GeminiBatchTriggerEventError(f"Admission trigger event is malformed: {event!r:.300}")
        if event.get("status") == "error":
            raise GeminiBatchError(str(event.get("message") or "The admission wait failed."))
        states = event.get("states") or {}
        if event.get("status") != ADMIT_EVENT or not isinstance(states, dict):
            raise GeminiBatchTriggerEventError(f"Admission trigger event is malformed: {event!r:.300}")
        return cls.from_dict(event["admission"], {str(k): str(v) for k, v in states.items()})


@dataclass
class AdmissionPending:
    """A round that left shards waiting: which of the run's jobs to watch, and when to try again.

    :param job_names: the run's unfinished jobs (what frees headroom when it ends).
    :param job_tokens: their estimated tokens, in the same order.
    :param waiting_tokens: the estimated tokens of the shards still waiting, in shard order.
    :param resume_at: epoch seconds after which the next round starts anyway (after a 429); None: only
        when headroom appears.
    """

    limits: AdmissionLimits
    state: AdmissionState
    job_names: list[str]
    job_tokens: list[int]
    waiting_tokens: list[int]
    resume_at: float | None = None

    def ready(self, states: Mapping[str, str], now: float) -> bool:
        """Whether the next round should start, given the watched jobs' latest ``states``."""
        active = [
            t for n, t in zip(self.job_names, self.job_tokens, strict=True) if holds_quota(states.get(n))
        ]
        if self.resume_at is not None:
            return now >= self.resume_at or len(active) < len(self.job_names)
        if not active:
            return True
        return self.limits.fits(active, self.waiting_tokens) >= self.limits.round_size(self.waiting_tokens)

    def wait(self, hook: GeminiBatchHook, poll_interval: float, log: AnyLogger) -> AdmissionState:
        """The worker's wait for headroom (a non-deferrable operator): the trigger's loop, with sync reads."""
        log.info(
            "Waiting on the worker for quota headroom (deferrable=False): %d shard(s) waiting, %d job(s) "
            "of this run not finished.",
            len(self.waiting_tokens),
            len(self.job_names),
        )
        states: dict[str, str] = {}
        while True:
            for name in self.job_names:
                if holds_quota(states.get(name)):
                    try:
                        states[name] = hook.get_job(name).state
                    except Exception as e:  # a read error only delays the next round
                        log.warning(
                            "Reading %s while waiting for headroom failed: %s", name, type(e).__name__
                        )
            if self.ready(states, time.time()):
                self.state.known_states = states
                return self.state
            time.sleep(poll_interval)


def rate_limit_pause(state: AdmissionState, poll_interval: float) -> float:
    """Seconds before the round after a rate-limited one: ``poll_interval``, doubling per such round in a row."""
    factor = min(MAX_RATE_LIMIT_FACTOR, 2 ** max(0, state.rate_limited_in_a_row - 1))
    return poll_interval * factor


def admit_event(
    pending: AdmissionPending, states: Mapping[str, str], message: str, status: str = ADMIT_EVENT
) -> dict[str, Any]:
    """The admission trigger's one event: the rounds so far and the states it read (names and counts only)."""
    return {
        "status": status,
        "message": message,
        "admission": pending.state.to_dict(),
        "states": {n: states[n] for n in pending.job_names if n in states},
    }
