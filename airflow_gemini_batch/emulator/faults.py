"""Runtime-settable knobs: lifecycle timing, injected HTTP faults, per-job behaviours, call counters.

Invariants:

* Everything here is guarded by one lock: handlers run on the server's event loop, job workers on threads.
* A fault is consumed exactly once per matching call (``count`` calls in total), in the order injected.
* A job behaviour applies to jobs created *after* it was set; the newest matching rule wins, and a rule with
  a ``count`` is used up after that many jobs (``None`` = forever).
* ``report_state`` / ``report_state_reads`` make matching jobs show a raw ``metadata.state`` on the wire
  for their first N ``batches.get`` reads (see ``jobs.Job.reported_state``), to test unknown-state handling.
* A hold rule (``add_hold``) applies, like a behaviour, to jobs created after it: the newest matching rule
  with uses left wins. It makes a job really stay in PENDING, RUNNING or SUCCEEDED-without-output (not only
  on the wire, unlike ``report_state``) until it has
  been read ``reads`` times in that state, or until released; so a test that needs a job in a state gets it
  by counting reads, never by a wall-clock margin that a busy machine overruns.
* ``max_concurrent_jobs`` / ``max_enqueued_tokens`` (config keys, ``0`` = unlimited) are the quotas
  ``quota`` enforces on create.
* Row failures (``fail_keys``, ``fail_fraction``) answer those requests with an error line of
  ``fail_status`` (default 500 INTERNAL; 503 UNAVAILABLE, 429, 400 INVALID_ARGUMENT ...). The fraction picks
  keys by a hash of the key (:func:`fails_by_fraction`), so a test knows which keys fail and a resent key
  fails again unless the rule is used up (``count``) or scoped to the first round's display names (``match``).
* ``reset()`` restores the constructor defaults (the CLI flags), not zero, so a demo server keeps its pacing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS: tuple[str, ...] = (
    "files.upload_start",
    "files.upload_chunk",
    "files.get",
    "files.list",
    "files.delete",
    "files.download",
    "batches.create",
    "batches.get",
    "batches.list",
    "batches.cancel",
    "batches.delete",
    "caches.create",
    "caches.get",
    "caches.list",
    "caches.update",
    "caches.delete",
    "models.countTokens",
    # Vertex AI batch prediction (routes_vertex)
    "batchPredictionJobs.create",
    "batchPredictionJobs.get",
    "batchPredictionJobs.list",
    "batchPredictionJobs.cancel",
    "batchPredictionJobs.delete",
)
FINAL_STATES = ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED")
#: SUCCEEDED: done, but the output is not visible yet (the real service may report SUCCEEDED first).
HOLD_STATES = ("PENDING", "RUNNING", "SUCCEEDED")
CORRUPTIONS = ("truncate", "malformed", "drop_key", "unknown_key", "duplicate_key")
CONFIG_KEYS = (
    "pending_seconds",
    "running_seconds",
    "output_delay_seconds",
    "reply_delay_seconds",
    "list_lag_seconds",
    "max_concurrent_jobs",
    "max_enqueued_tokens",
)


#: The google.rpc status name of each HTTP code a row failure may carry.
ROW_FAILURE_STATUS = {
    400: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def fails_by_fraction(key: object, fraction: float) -> bool:
    """Whether ``fail_fraction`` picks this key: sha256 of its text, so the same keys in every process."""
    if fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:4], "big") % 10_000
    return bucket < round(fraction * 10_000)


def row_failure(status: int) -> dict[str, object]:
    """The error of an injected row failure as the service writes it in a responses line: a google.rpc
    Status (``code``, ``message``; the status name only in the message, as it has no field of its own)."""
    name = ROW_FAILURE_STATUS.get(status, "UNKNOWN")
    return {"code": status, "message": f"{name}: injected row failure (emulator)"}


@dataclass
class Fault:
    endpoint: str
    status: int | None
    count: int
    reset_after_bytes: int | None = None
    #: The call takes effect, then the error is the reply (a create whose confirmation was lost).
    after: bool = False


@dataclass
class JobBehaviour:
    """What happens to a job: the defaults describe a normal, successful job."""

    match: str = "*"
    final_state: str = "SUCCEEDED"
    stay_pending: bool = False
    corrupt_output: str | None = None
    fail_keys: list[str] = field(default_factory=list)
    #: Share of the job's keys (picked by :func:`fails_by_fraction`) that fail like ``fail_keys``.
    fail_fraction: float = 0.0
    #: HTTP code of those rows' errors (``ROW_FAILURE_STATUS`` names it).
    fail_status: int = 500
    count: int | None = None
    # Raw ``metadata.state`` for the first ``report_state_reads`` batches.get reads (None = every read).
    report_state: str | None = None
    report_state_reads: int | None = 3
    #: Vertex jobs: the pass-through column (BigQuery) or ``request.labels`` entry (JSONL) whose value is a
    #: row's key for ``fail_keys`` / ``fail_fraction`` (None: the first pass-through column / label ``key``).
    key_column: str | None = None

    def matches(self, display_name: str) -> bool:
        return self.match == "*" or self.match in display_name

    def as_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "final_state": self.final_state,
            "stay_pending": self.stay_pending,
            "corrupt_output": self.corrupt_output,
            "fail_keys": list(self.fail_keys),
            "fail_fraction": self.fail_fraction,
            "fail_status": self.fail_status,
            "count": self.count,
            "report_state": self.report_state,
            "report_state_reads": self.report_state_reads,
            "key_column": self.key_column,
        }


class ValidationError(ValueError):
    """Bad control-API input (reported as HTTP 400)."""


@dataclass
class HoldRule:
    """Hold jobs created from now on in ``state`` until ``reads`` ``batches.get`` reads (None: until released).

    ``match``: a display-name prefix (None: every job); ``count``: how many jobs the rule holds (None: all);
    ``age_seconds``: the held job's ``createTime`` lies that far in the past, as if it had waited that long
    (stuck-job tests without a clock).
    """

    state: str
    reads: int | None = None
    match: str | None = None
    count: int | None = None
    age_seconds: float = 0.0

    def matches(self, display_name: str) -> bool:
        return (self.match is None or display_name.startswith(self.match)) and (
            self.count is None or self.count > 0
        )


def _positive_or_none(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValidationError(f"{key} must be an integer >= 1, or null")
    return value


class Knobs:
    def __init__(self, **defaults: float) -> None:
        self._lock = threading.Lock()
        self._defaults = {k: float(defaults.get(k, 0.0) or 0.0) for k in CONFIG_KEYS}
        self.config: dict[str, float] = dict(self._defaults)
        self._faults: list[Fault] = []
        self._behaviours: list[JobBehaviour] = []
        self._holds: list[HoldRule] = []
        self._calls: Counter[str] = Counter()

    def reset(self) -> None:
        with self._lock:
            self.config = dict(self._defaults)
            self._faults.clear()
            self._behaviours.clear()
            self._holds.clear()
            self._calls.clear()

    # ---- config ----

    def configure(self, body: dict[str, Any]) -> dict[str, float]:
        unknown = set(body) - set(CONFIG_KEYS)
        if unknown:
            raise ValidationError(f"unknown config keys: {sorted(unknown)}; allowed: {list(CONFIG_KEYS)}")
        with self._lock:
            for key, value in body.items():
                if value is None or float(value) < 0:
                    raise ValidationError(f"{key} must be a number >= 0")
                self.config[key] = float(value)
            return dict(self.config)

    def get(self, key: str) -> float:
        with self._lock:
            return self.config[key]

    # ---- faults ----

    def add_fault(self, body: dict[str, Any]) -> Fault:
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise ValidationError(f"endpoint must be one of {list(ENDPOINTS)}")
        status = body.get("status")
        reset_after = body.get("reset_after_bytes")
        if reset_after is not None and endpoint != "files.download":
            raise ValidationError("reset_after_bytes only applies to files.download")
        if status is None and reset_after is None:
            raise ValidationError("give status (an HTTP error code) or reset_after_bytes")
        if status is not None and not 400 <= int(status) <= 599:
            raise ValidationError("status must be an HTTP error code (400-599)")
        count = int(body.get("count", 1))
        after = bool(body.get("after", False))
        if after and status is None:
            raise ValidationError("after needs status (the error that replaces the reply)")
        fault = Fault(
            endpoint,
            None if status is None else int(status),
            count,
            None if reset_after is None else int(reset_after),
            after,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def record_call(self, endpoint: str) -> Fault | None:
        """Count one call of ``endpoint`` and consume the first pending fault for it, if any."""
        with self._lock:
            self._calls[endpoint] += 1
            for fault in self._faults:
                if fault.endpoint == endpoint and fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return Fault(fault.endpoint, fault.status, 1, fault.reset_after_bytes, fault.after)
        return None

    def calls(self) -> dict[str, int]:
        with self._lock:
            return {name: self._calls.get(name, 0) for name in ENDPOINTS}

    # ---- job behaviours ----

    def add_behaviour(self, body: dict[str, Any]) -> JobBehaviour:
        allowed = {
            "match",
            "final_state",
            "stay_pending",
            "corrupt_output",
            "fail_keys",
            "fail_fraction",
            "fail_status",
            "count",
            "report_state",
            "report_state_reads",
            "key_column",
        }
        unknown = set(body) - allowed
        if unknown:
            raise ValidationError(f"unknown job_behaviour keys: {sorted(unknown)}")
        report_state = body.get("report_state")
        if report_state is not None and (not isinstance(report_state, str) or not report_state):
            raise ValidationError("report_state must be a non-empty string (sent verbatim as metadata.state)")
        reads = body.get("report_state_reads", 3)
        if reads is not None and (isinstance(reads, bool) or not isinstance(reads, int) or reads < 0):
            raise ValidationError("report_state_reads must be an integer >= 0, or null for every read")
        fraction = body.get("fail_fraction") or 0.0
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValidationError("fail_fraction must be a number within [0, 1]")
        fail_status = body.get("fail_status") or 500
        if isinstance(fail_status, bool) or not isinstance(fail_status, int) or not 400 <= fail_status <= 599:
            raise ValidationError("fail_status must be an HTTP error code (400-599)")
        behaviour = JobBehaviour(
            match=str(body.get("match") or "*"),
            final_state=str(body.get("final_state") or "SUCCEEDED")
            .upper()
            .removeprefix("BATCH_STATE_")
            .removeprefix("JOB_STATE_"),
            stay_pending=bool(body.get("stay_pending", False)),
            corrupt_output=body.get("corrupt_output"),
            fail_keys=[str(k) for k in body.get("fail_keys") or []],
            fail_fraction=float(fraction),
            fail_status=fail_status,
            count=None if body.get("count") is None else int(body["count"]),
            report_state=report_state,
            report_state_reads=reads,
            key_column=None if body.get("key_column") is None else str(body["key_column"]),
        )
        if behaviour.final_state not in FINAL_STATES:
            raise ValidationError(f"final_state must be one of {list(FINAL_STATES)}")
        if behaviour.corrupt_output is not None and behaviour.corrupt_output not in CORRUPTIONS:
            raise ValidationError(f"corrupt_output must be null or one of {list(CORRUPTIONS)}")
        with self._lock:
            self._behaviours.append(behaviour)
        return behaviour

    def behaviour_for(self, display_name: str) -> JobBehaviour:
        """The newest matching rule (consuming one use of it), else the default behaviour."""
        with self._lock:
            for rule in reversed(self._behaviours):
                if rule.matches(display_name) and (rule.count is None or rule.count > 0):
                    if rule.count is not None:
                        rule.count -= 1
                    return JobBehaviour(**{**rule.as_dict(), "count": None})
        return JobBehaviour()

    # ---- holds ----

    def add_hold(self, body: dict[str, Any]) -> HoldRule:
        unknown = set(body) - {"state", "reads", "match", "count", "age_seconds"}
        if unknown:
            raise ValidationError(f"unknown hold keys: {sorted(unknown)}")
        state = (
            str(body.get("state") or "PENDING")
            .upper()
            .removeprefix("BATCH_STATE_")
            .removeprefix("JOB_STATE_")
        )
        if state not in HOLD_STATES:
            raise ValidationError(f"state must be one of {list(HOLD_STATES)}")
        match = body.get("match")
        if match is not None and (not isinstance(match, str) or not match):
            raise ValidationError("match must be a non-empty display-name prefix, or null for every job")
        age = body.get("age_seconds") or 0.0
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 48 * 3600:
            raise ValidationError("age_seconds must be a number of seconds >= 0 and under 48 h")
        rule = HoldRule(
            state, _positive_or_none(body, "reads"), match, _positive_or_none(body, "count"), float(age)
        )
        with self._lock:
            self._holds.append(rule)
        return rule

    def hold_for(self, display_name: str) -> HoldRule | None:
        """The newest matching hold rule (consuming one use of it), else None."""
        with self._lock:
            for rule in reversed(self._holds):
                if rule.matches(display_name):
                    if rule.count is not None:
                        rule.count -= 1
                    return HoldRule(rule.state, rule.reads, rule.match, age_seconds=rule.age_seconds)
        return None

    def clear_holds(self) -> None:
        with self._lock:
            self._holds.clear()
