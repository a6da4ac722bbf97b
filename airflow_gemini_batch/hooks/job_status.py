"""What one read of a batch job says: the normalised state and the counts the SDK's ``BatchJob`` drops.

Invariant: there is one definition of the job states and of which are terminal (:data:`TERMINAL_STATES`);
every stage (wait verdict, trigger, load, UI) asks :class:`JobStatus` rather than comparing strings itself.
The wire says ``BATCH_STATE_X`` (Developer API) or ``JOB_STATE_X`` (the SDK, Vertex AI); we say ``X``.
Vertex AI's finer states map onto the same six (:data:`VERTEX_STATES`), so the wait, the trigger and the UI
need no second vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_JOB_NAME = re.compile(r"^batches/[^/]+$")
_VERTEX_JOB_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/batchPredictionJobs/[^/]+$")

#: Normalised job states (the wire says ``BATCH_STATE_X``, the SDK ``JOB_STATE_X``; we say ``X``).
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
PENDING = "PENDING"
RUNNING = "RUNNING"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})

#: Vertex AI's states that are not one of ours, and what they mean here. QUEUED / PAUSED: not started (a job
#: can queue up to 72 h); CANCELLING / UPDATING: still in flight; PARTIALLY_SUCCEEDED: done with an output
#: table, some rows carry an error in their ``status`` (the load classifies them row by row).
VERTEX_STATES = {
    "QUEUED": PENDING,
    "PAUSED": PENDING,
    "CANCELLING": RUNNING,
    "UPDATING": RUNNING,
    "PARTIALLY_SUCCEEDED": SUCCEEDED,
}


def normalize_state(raw: str | None) -> str:
    """``BATCH_STATE_RUNNING`` / ``JOB_STATE_RUNNING`` / ``RUNNING`` → ``RUNNING``; None → ``UNSPECIFIED``."""
    if not raw:
        return "UNSPECIFIED"
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


#: How long a job may stay unfinished: the Developer API expires a job 48 h after its creation (pending or
#: running, with no results); Vertex AI lets a batch prediction job queue for up to 72 h.
DEVELOPER_API_EXPIRY_HOURS = 48.0
VERTEX_EXPIRY_HOURS = 72.0


def expiry_hours(job_name: str) -> float:
    """The hours after its creation at which the service ends ``job_name`` if it has not finished."""
    return VERTEX_EXPIRY_HOURS if is_vertex_job_name(job_name) else DEVELOPER_API_EXPIRY_HOURS


def is_vertex_job_name(name: str) -> bool:
    """``projects/<p>/locations/<l>/batchPredictionJobs/<id>``: a Vertex AI job (else a Developer API one)."""
    return bool(_VERTEX_JOB_NAME.match(name or ""))


def check_job_name(name: str) -> str:
    """``batches/<id>`` (Developer API) or a Vertex AI job name; fail early with the name in the message."""
    if not (_JOB_NAME.match(name or "") or _VERTEX_JOB_NAME.match(name or "")):
        raise ValueError(
            f"Invalid Gemini batch job name {name!r}: expected 'batches/<id>' or "
            "'projects/<project>/locations/<location>/batchPredictionJobs/<id>'."
        )
    return name


@dataclass
class JobStatus:
    """What one read of a batch job tells us, including what the SDK's ``BatchJob`` drops.

    Small and JSON-able (``to_dict``), so it can go into trigger events and XCom. Inline responses, which can
    be up to 20 MB, are deliberately not kept here: the results stage reads them itself.
    """

    name: str
    state: str
    display_name: str | None = None
    model: str | None = None
    create_time: str | None = None
    update_time: str | None = None
    end_time: str | None = None
    request_count: int = 0
    succeeded_count: int = 0
    failed_count: int = 0
    pending_count: int = 0
    responses_file: str | None = None
    input_file: str | None = None  # the uploaded file the job reads (``metadata.inputConfig.fileName``)
    has_inline_responses: bool = False
    error: dict[str, Any] | None = field(default=None)
    #: Vertex AI: where the job wrote its predictions (``bq://project.dataset.table`` or a ``gs://`` folder),
    #: known only from the job once it has run
    output_uri: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def output_ready(self) -> bool:
        """SUCCEEDED is not enough: the responses file (or inline list) can appear after the state flips."""
        return self.state == SUCCEEDED and (
            self.responses_file is not None or self.has_inline_responses or self.output_uri is not None
        )

    @property
    def settled(self) -> bool:
        """Nothing left to read: terminal, and when SUCCEEDED, its output visible too."""
        return self.done and (self.state != SUCCEEDED or self.output_ready)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_operation(cls, op: dict[str, Any]) -> JobStatus:
        """Build from the raw Operation JSON (``{"name", "metadata": {...}, "done", "error"}``)."""
        meta = op.get("metadata") or {}
        stats = meta.get("batchStats") or {}
        output = meta.get("output") or (op.get("response") or {})
        inline = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        error = op.get("error") or meta.get("error")
        return cls(
            name=op.get("name") or meta.get("name") or "",
            state=normalize_state(meta.get("state")),
            display_name=meta.get("displayName"),
            model=meta.get("model"),
            create_time=meta.get("createTime"),
            update_time=meta.get("updateTime"),
            end_time=meta.get("endTime"),
            request_count=int(stats.get("requestCount") or 0),
            succeeded_count=int(stats.get("successfulRequestCount") or 0),
            failed_count=int(stats.get("failedRequestCount") or 0),
            pending_count=int(stats.get("pendingRequestCount") or 0),
            responses_file=output.get("responsesFile"),
            input_file=(meta.get("inputConfig") or {}).get("fileName")
            or (meta.get("inputConfig") or {}).get("file_name"),
            has_inline_responses=inline is not None,
            error={"code": error.get("code"), "message": error.get("message")} if error else None,
        )

    @classmethod
    def from_vertex_job(cls, job: dict[str, Any]) -> JobStatus:
        """Build from a Vertex AI ``BatchJob`` as the SDK returns it (``job.model_dump(mode="json")``).

        Progress is ``completionStats`` (successful / failed / incomplete rows); the output location is
        ``outputInfo``. The SDK keeps both on Vertex, so no raw read is needed there.
        """
        state = normalize_state(job.get("state"))
        stats = job.get("completion_stats") or {}
        info = job.get("output_info") or {}
        error = job.get("error")
        output_uri = info.get("gcs_output_directory")
        bq_table = info.get("bigquery_output_table")
        if bq_table:
            # the service names the table alone (``predictions_<time>``) or in full; a full ``bq://`` table given
            # as the destination is where it writes
            dest = (job.get("dest") or {}).get("bigquery_uri") or ""
            full = str(bq_table).removeprefix("bq://")
            output_uri = (
                dest if dest.count(".") == 2 else f"bq://{full}" if full.count(".") == 2 else dest or None
            )
        succeeded, failed = int(stats.get("successful_count") or 0), int(stats.get("failed_count") or 0)
        pending = int(stats.get("incomplete_count") or 0)
        src = job.get("src") or {}
        return cls(
            name=job.get("name") or "",
            state=VERTEX_STATES.get(state, state),
            display_name=job.get("display_name"),
            model=job.get("model"),
            create_time=job.get("create_time"),
            update_time=job.get("update_time"),
            end_time=job.get("end_time"),
            request_count=succeeded + failed + pending,
            succeeded_count=succeeded,
            failed_count=failed,
            pending_count=pending,
            input_file=src.get("bigquery_uri") or ((src.get("gcs_uri") or [None])[0]),
            output_uri=output_uri,
            error={"code": error.get("code"), "message": error.get("message")} if error else None,
        )
