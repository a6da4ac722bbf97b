"""Vertex AI batch prediction jobs: the ``BatchPredictionJob`` resource on the wire, over the shared lifecycle.

A :class:`VertexJob` is a :class:`~.jobs.Job` (kind ``"vertex"``): the same timestamps, holds, behaviours,
cancel flag, counts and persistence, so every control of the Developer-API side (``set_job_behaviour``,
``hold_state``, ``release``, quotas, persistence across restarts) works on it unchanged. Only the rendering
and the input / output locations are its own.

Invariants:

* ``name`` is ``projects/{project}/locations/{location}/batchPredictionJobs/{id}`` with a numeric id (as
  Vertex's), in the project and location of the create's path.
* ``state`` is ``JOB_STATE_*`` (a behaviour's ``report_state`` is sent verbatim instead, as on the other
  side); FAILED / EXPIRED / CANCELLED carry ``error`` (google.rpc codes 13 / 4 / 1, or the worker's message
  when it could not read the input or write the output).
* ``completionStats`` (``successfulCount``, ``failedCount``, ``incompleteCount``; int64 strings, zero counts
  omitted as proto3 JSON does) appears once the job left PENDING.
* ``outputInfo`` appears only when the job SUCCEEDED and its output is visible (a hold in SUCCEEDED keeps it
  back, like the other side's ``output_delay_seconds``): ``bigqueryOutputDataset`` (``bq://project.dataset``)
  and ``bigqueryOutputTable`` (the table's id, as the proto says), or ``gcsOutputDirectory`` — a directory
  under the destination prefix named after the job's create time, which a client cannot predict.
* ``inputConfig`` / ``outputConfig`` are echoed as the create sent them.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from airflow_gemini_batch.emulator.common import ApiError, int64, rfc3339
from airflow_gemini_batch.emulator.jobs import Job

KIND = "vertex"
_BQ_URI = re.compile(r"^bq://(?P<project>[^./]+)(?:\.(?P<dataset>[^./]+)(?:\.(?P<table>[^./]+))?)?$")


def new_vertex_job_id() -> str:
    """A 19-digit numeric id, like Vertex's."""
    return str(10**18 + secrets.randbelow(9 * 10**18))


def parse_bq_uri(uri: str, what: str) -> tuple[str, str | None, str | None]:
    """``bq://project[.dataset[.table]]`` → its parts; anything else is a 400 naming ``what``."""
    match = _BQ_URI.match(uri.strip())
    if match is None:
        raise ApiError(400, f"{what} {uri!r} is not a BigQuery URI: use bq://project.dataset.table.")
    return match["project"], match["dataset"], match["table"]


def _stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y_%m_%dT%H_%M_%S_%fZ")


@dataclass
class VertexJob(Job):
    project: str = ""
    location: str = ""
    #: The create's ``inputConfig`` / ``outputConfig``, echoed on every read.
    input_config: dict[str, Any] = field(default_factory=dict)
    output_config: dict[str, Any] = field(default_factory=dict)
    #: ``bq://…`` input table, or the ``gs://…`` JSONL URIs (``*`` wildcards allowed).
    input_uris: list[str] = field(default_factory=list)
    #: Where the output goes: ``bq://project.dataset.table`` or the ``gs://…`` directory (decided at create).
    output_table: str | None = None
    gcs_output_directory: str | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{self.id}"

    @staticmethod
    def output_locations(
        output_config: dict[str, Any], model: str, create_time: float
    ) -> tuple[str | None, str | None]:
        """``(bq output table URI, gs output directory)`` for a destination, as Vertex names them: a table
        reference is used as is; a dataset gets ``predictions_<time>``; a project gets a new dataset
        ``prediction_<model>_<time>`` with table ``predictions``; a GCS prefix gets
        ``prediction-<model>-<time>/``."""
        stamp = _stamp(create_time)
        short_model = re.sub(r"[^A-Za-z0-9_]", "_", model.rsplit("/", 1)[-1])
        bq = (output_config.get("bigqueryDestination") or {}).get("outputUri")
        gcs = (output_config.get("gcsDestination") or {}).get("outputUriPrefix")
        if bq:
            project, dataset, table = parse_bq_uri(str(bq), "outputConfig.bigqueryDestination.outputUri")
            if dataset is None:
                return f"bq://{project}.prediction_{short_model}_{stamp}.predictions", None
            return f"bq://{project}.{dataset}.{table or f'predictions_{stamp}'}", None
        if gcs:
            prefix = str(gcs)
            if not prefix.startswith("gs://") or len(prefix) <= len("gs://"):
                raise ApiError(
                    400, f"outputConfig.gcsDestination.outputUriPrefix {prefix!r} is not a gs:// URI."
                )
            directory = f"{prefix.rstrip('/')}/prediction-{short_model.replace('_', '-')}-{stamp}"
            return None, directory
        raise ApiError(
            400, "outputConfig must set bigqueryDestination.outputUri or gcsDestination.outputUriPrefix."
        )

    def error(self, state: str) -> dict[str, Any]:
        if state == "EXPIRED":  # Vertex's own limit, not the Developer API's 48 h
            return {"code": 4, "message": "Batch prediction job expired: it did not finish within 72 hours."}
        return super().error(state)

    def completion_stats(self, state: str) -> dict[str, str] | None:
        if state == "PENDING":
            return None
        counts = {
            "successfulCount": self.succeeded,
            "failedCount": self.failed,
            "incompleteCount": max(self.request_count - self.processed, 0),
        }
        return {key: int64(value) for key, value in counts.items() if value > 0}

    def output_info(self) -> dict[str, str]:
        if self.output_table is not None:
            project, dataset, table = parse_bq_uri(self.output_table, "output table")
            return {"bigqueryOutputDataset": f"bq://{project}.{dataset}", "bigqueryOutputTable": str(table)}
        return {"gcsOutputDirectory": str(self.gcs_output_directory)}

    def resource(self, now: float, raw_state: str | None = None) -> dict[str, Any]:
        """The ``BatchPredictionJob`` on the wire; ``raw_state`` (see ``reported_state``) replaces ``state``."""
        state, update_time, end_time = self.state_at(now)
        body: dict[str, Any] = {
            "name": self.name,
            "displayName": self.display_name,
            "model": self.model,
            "inputConfig": self.input_config,
            "outputConfig": self.output_config,
            "state": raw_state if raw_state is not None else f"JOB_STATE_{state}",
            "createTime": rfc3339(self.create_time),
        }
        started_by = self.cancelled_at if self.cancelled_at is not None else now
        if not self.behaviour.stay_pending and self.start_time <= started_by:
            body["startTime"] = rfc3339(self.start_time)
        if end_time is not None:
            body["endTime"] = rfc3339(end_time)
        body["updateTime"] = rfc3339(update_time)
        stats = self.completion_stats(state)
        if stats is not None:
            body["completionStats"] = stats
        visible = self.hold_state != "SUCCEEDED" and now >= (end_time or 0) + self.output_delay_seconds
        if state == "SUCCEEDED" and self.finished_at is not None and visible:
            body["outputInfo"] = self.output_info()
        if state in ("FAILED", "EXPIRED", "CANCELLED"):
            body["error"] = self.error(state)
        return body

    def control_view(self, now: float) -> dict[str, Any]:
        view = super().control_view(now)
        state = self.state_at(now)[0]
        return view | {
            "state": f"JOB_STATE_{state}",
            "input_uris": list(self.input_uris),
            "output_table": self.output_table,
            "gcs_output_directory": self.gcs_output_directory,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "error_message": self.error_message,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> VertexJob:
        job = super().from_dict(body)
        assert isinstance(job, VertexJob)
        return job
