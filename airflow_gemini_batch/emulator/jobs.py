"""Batch job model: state derived from timestamps, and rendering as a google.longrunning Operation.

Invariants:

* State is a pure function of (clock, job timestamps, cancel flag, worker progress), computed on every read,
  so there is no state machine to drift:
  ``PENDING`` until ``create + pending_seconds`` (forever with ``stay_pending``), then ``RUNNING`` until
  ``start + running_seconds`` *and* the worker has finished, then the behaviour's final state
  (``SUCCEEDED`` by default; ``FAILED`` with the worker's ``error_message`` when it could not read the
  input). ``cancel`` freezes the job at ``CANCELLED``.
* A held job (``hold_state``, set at creation by a hold rule) really is in that state, whatever the clock
  says: PENDING (its start is infinitely far), RUNNING (its end is), or SUCCEEDED with its output not visible
  yet (its output delay is), until the hold is released by its last counted read or through the control API.
  ``release`` moves that boundary to the release time at the earliest, so the lifecycle then goes on as
  configured, as if it had been that slow. Only ``batches.get`` reads that report the held state count
  (``reads`` counts every ``batches.get``).
* Timing knobs are snapshotted at creation: reconfiguring affects only later jobs.
* Output (``metadata.output`` + top-level ``response``) appears only on ``SUCCEEDED``, and only
  ``output_delay_seconds`` after the end time (the real service is known to report SUCCEEDED first).
* ``batchStats`` counts are int64 strings, zero counts omitted, ``pendingRequestCount`` only while pending.
* FAILED / EXPIRED / CANCELLED operations carry a top-level ``error`` (google.rpc codes 13 / 4 / 1).
* Raw state knob (behaviour ``report_state``): the first ``report_state_reads`` ``batches.get`` reads
  (``None`` = every read) report exactly that string as ``metadata.state``; ``batches.list`` shows it too
  while reads remain, without using one up. Only ``metadata.state`` changes: ``done``, output, ``error``
  and ``batchStats`` follow the true lifecycle, which runs on unaffected (the knob changes the wire, not the
  job). Afterwards the job reports its true state again.
* ``to_dict`` / ``from_dict`` are the persisted form (everything but the worker's thread handles).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_gemini_batch.emulator.common import int64, rfc3339
from airflow_gemini_batch.emulator.faults import JobBehaviour
from airflow_gemini_batch.emulator.store import next_seq

TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1main."
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
_ERRORS = {
    "FAILED": {"code": 13, "message": "Batch failed: internal error while processing the batch (emulated)."},
    "EXPIRED": {"code": 4, "message": "Batch expired: it was pending or running for more than 48 hours."},
    "CANCELLED": {"code": 1, "message": "Batch was cancelled."},
}


@dataclass
class Job:
    id: str
    display_name: str
    model: str
    kind: str  # "generate" | "embed"
    input_kind: str  # "file" | "inline"
    input_file: str | None
    inline_requests: list[dict[str, Any]] | None
    request_count: int
    pending_seconds: float
    running_seconds: float
    output_delay_seconds: float
    behaviour: JobBehaviour
    create_time: float = field(default_factory=time.time)
    seq: int = field(default_factory=next_seq)
    cancel_requested: bool = False
    cancelled_at: float | None = None
    deleted: bool = False
    worker_started: bool = False
    finished_at: float | None = None
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    output_file: str | None = None
    inline_output: list[dict[str, Any]] | None = None
    report_reads_used: int = 0
    #: "PENDING" | "RUNNING" | "SUCCEEDED" (output not visible) while held there (see the module docstring).
    hold_state: str | None = None
    #: Reads in the held state left before the hold lets go (None: until released through the control API).
    hold_reads: int | None = None
    #: ``batches.get`` reads of this job so far.
    reads: int = 0
    #: The input's estimated tokens (request bytes / 4), what the enqueued-token quota counts (``quota``).
    estimated_tokens: int = 0
    #: Set by a worker that could not process the job (its input unreadable): the job ends FAILED with it.
    error_message: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def start_time(self) -> float:
        if self.hold_state == "PENDING":
            return math.inf
        return self.create_time + self.pending_seconds

    @property
    def run_end(self) -> float:
        if self.hold_state in ("PENDING", "RUNNING"):
            return math.inf
        return self.start_time + self.running_seconds

    def count_read(self, now: float) -> bool:
        """One ``batches.get`` read (made at ``now``); True when it counted against the hold."""
        self.reads += 1
        if self.hold_reads is None or self.hold_state != self.state_at(now)[0]:
            return False
        self.hold_reads -= 1
        return True

    def release(self, now: float) -> bool:
        """End the hold at ``now``; False if the job was not held."""
        if self.hold_state is None:
            return False
        if self.hold_state == "PENDING":
            self.pending_seconds = max(self.pending_seconds, now - self.create_time)
        elif self.hold_state == "RUNNING":
            self.running_seconds = max(self.running_seconds, now - self.create_time - self.pending_seconds)
        else:
            state, _, end = self.state_at(now)
            if state == "SUCCEEDED" and end is not None:
                self.output_delay_seconds = max(self.output_delay_seconds, now - end)
        self.hold_state = self.hold_reads = None
        return True

    @property
    def needs_worker(self) -> bool:
        return self.behaviour.final_state == "SUCCEEDED" and not self.behaviour.stay_pending

    def reported_state(self, consume: bool = False) -> str | None:
        """The raw ``metadata.state`` override, while the behaviour's ``report_state`` reads last."""
        raw, reads = self.behaviour.report_state, self.behaviour.report_state_reads
        if raw is None or (reads is not None and self.report_reads_used >= reads):
            return None
        if consume:
            self.report_reads_used += 1
        return raw

    def state_at(self, now: float) -> tuple[str, float, float | None]:
        """``(state, update_time, end_time)``."""
        if self.cancelled_at is not None:
            return "CANCELLED", self.cancelled_at, self.cancelled_at
        if self.behaviour.stay_pending or now < self.start_time:
            return "PENDING", self.create_time, None
        if self.behaviour.final_state != "SUCCEEDED":
            if now < self.run_end:
                return "RUNNING", self.start_time, None
            return self.behaviour.final_state, self.run_end, self.run_end
        if now < self.run_end or self.finished_at is None:
            return "RUNNING", self.start_time, None
        end = max(self.run_end, self.finished_at)
        return ("FAILED" if self.error_message is not None else "SUCCEEDED"), end, end

    def batch_stats(self, state: str) -> dict[str, str]:
        counts: dict[str, int] = {"requestCount": self.request_count}
        if state == "PENDING":
            counts["pendingRequestCount"] = self.request_count
        elif state in ("RUNNING", "SUCCEEDED", "CANCELLED"):
            counts["successfulRequestCount"] = self.succeeded
            counts["failedRequestCount"] = self.failed
            if state == "RUNNING":
                counts["pendingRequestCount"] = self.request_count - self.processed
        return {key: int64(value) for key, value in counts.items() if value > 0}

    def output(self) -> dict[str, Any] | None:
        if self.output_file is not None:
            return {"responsesFile": self.output_file}
        if self.inline_output is not None:
            return {"inlinedResponses": {"inlinedResponses": self.inline_output}}
        return None

    def operation(self, now: float, raw_state: str | None = None) -> dict[str, Any]:
        """The Operation on the wire; ``raw_state`` (see ``reported_state``) replaces ``metadata.state``."""
        state, update_time, end_time = self.state_at(now)
        batch_type = "EmbedContentBatch" if self.kind == "embed" else "GenerateContentBatch"
        meta: dict[str, Any] = {
            "@type": TYPE_PREFIX + batch_type,
            "model": self.model,
            "displayName": self.display_name,
        }
        if self.input_file is not None:
            meta["inputConfig"] = {"fileName": self.input_file}
        meta["createTime"] = rfc3339(self.create_time)
        if end_time is not None:
            meta["endTime"] = rfc3339(end_time)
        meta["updateTime"] = rfc3339(update_time)
        meta["batchStats"] = self.batch_stats(state)
        meta["state"] = raw_state if raw_state is not None else f"BATCH_STATE_{state}"
        meta["name"] = self.name
        op: dict[str, Any] = {"name": self.name, "metadata": meta, "done": state in TERMINAL}
        output = self.output()
        visible = self.hold_state != "SUCCEEDED" and now >= (end_time or 0) + self.output_delay_seconds
        if state == "SUCCEEDED" and output is not None and visible:
            meta["output"] = output
            op["response"] = {"@type": TYPE_PREFIX + batch_type + "Output", **output}
        if state in _ERRORS:
            op["error"] = self.error(state)
        return op

    def error(self, state: str) -> dict[str, Any]:
        """The google.rpc Status of a job that ended ``state`` (FAILED / EXPIRED / CANCELLED)."""
        if state == "FAILED" and self.error_message is not None:
            return {"code": 13, "message": self.error_message}
        return dict(_ERRORS[state])

    def control_view(self, now: float) -> dict[str, Any]:
        state, _, _ = self.state_at(now)
        return {
            "name": self.name,
            "display_name": self.display_name,
            "model": self.model,
            "state": f"BATCH_STATE_{state}",
            "request_count": self.request_count,
            "estimated_tokens": self.estimated_tokens,
            "kind": self.kind,
            "input": self.input_kind,
            "input_file": self.input_file,
            "output_file": self.output_file,
            "create_time": rfc3339(self.create_time),
            "cancel_requested": self.cancel_requested,
            "deleted": self.deleted,
            "behaviour": self.behaviour.as_dict(),
            "report_state_reads_used": self.report_reads_used,
            "hold": None if self.hold_state is None else {"state": self.hold_state, "reads": self.hold_reads},
            "reads": self.reads,
        }

    # ---- persistence ----

    def to_dict(self) -> dict[str, Any]:
        body = {
            key: getattr(self, key)
            for key in self.__dataclass_fields__
            if key not in ("stop", "worker_started", "behaviour")
        }
        return body | {"behaviour": self.behaviour.as_dict()}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Job:
        known = {key for key in cls.__dataclass_fields__ if key not in ("stop", "worker_started")}
        fields = {key: value for key, value in body.items() if key in known}
        return cls(**fields | {"behaviour": JobBehaviour(**body.get("behaviour") or {})})
