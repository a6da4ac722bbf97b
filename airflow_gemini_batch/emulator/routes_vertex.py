"""Vertex AI batch prediction handlers: create, get, list, cancel, delete of ``batchPredictionJobs``.

Wire contract (what google-genai 2.x and 3.x send with ``vertexai=True``; checked against both):

* Paths, under any version prefix (the SDK uses ``v1beta1``; ``v1`` works the same):
  ``POST|GET /{v}/projects/{p}/locations/{l}/batchPredictionJobs`` (create / list: ``pageSize``,
  ``pageToken``, ``filter`` of the form ``display_name="…"`` or empty),
  ``GET|DELETE /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}``,
  ``POST /{v}/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel``.
  A job is found only under the project and location it was created in.
* Create body (``batches.create(model=…, src="bq://…" | "gs://…", config={"dest": …, "display_name": …})``):
  ``{"model": "publishers/google/models/<id>", "displayName", "inputConfig": {"instancesFormat":
  "bigquery", "bigquerySource": {"inputUri": "bq://p.d.t"}} | {"instancesFormat": "jsonl", "gcsSource":
  {"uris": [...]}}, "outputConfig": {"predictionsFormat": "bigquery", "bigqueryDestination": {"outputUri"}}
  | {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix"}}}``. The reply is the job
  (``vertex_jobs.VertexJob.resource``): ``JOB_STATE_*``, ``completionStats``, ``outputInfo``, ``error``.
  ``outputInfo`` is ``{"bigqueryOutputDataset": "bq://p.d", "bigqueryOutputTable": "<table id>"}`` or
  ``{"gcsOutputDirectory": "gs://…/prediction-<model>-<time>"}`` (``predictions.jsonl`` inside). The SDK's
  ``BatchJob.output_info`` keeps only ``bigquery_output_table`` / ``gcs_output_directory``: the predictions
  table is ``<dataset of job.dest.bigquery_uri>.<output_info.bigquery_output_table>`` (with a full table
  as ``dest``, that table; it must not exist yet, else the job FAILS).
  Cancel replies ``{}``; delete replies a done Operation. Cancel of a finished job and delete of an
  unfinished one are refused with 400, as on Vertex.
* Auth: every call needs ``Authorization: Bearer <any non-empty token>`` (else 401 UNAUTHENTICATED). Point
  the SDK at the emulator with a static token, which it never refreshes::

      from google.oauth2.credentials import Credentials
      client = genai.Client(vertexai=True, project="test-project", location="us-central1",
                            credentials=Credentials(token="emulator"),
                            http_options=types.HttpOptions(base_url=emulator_url))

  ``google.auth.credentials.AnonymousCredentials()`` does NOT work: the SDK refreshes credentials that have
  no token, and anonymous ones raise on refresh (both SDK majors).
* The emulator reads and writes BigQuery / GCS through the endpoints it was started with
  (``--bigquery-endpoint http://127.0.0.1:P`` / ``--gcs-endpoint http://127.0.0.1:Q``, or
  ``create_app(bigquery_endpoint=…, storage_endpoint=…)``); a create naming bq:// or gs:// without one is
  a 400 saying so. See ``vertex_worker`` for the predictions table / JSONL shape.
* Controls: the same ``EmulatorControl`` calls as the Developer API — ``set_job_behaviour(match,
  final_state="FAILED"|"EXPIRED"|"CANCELLED", fail_keys=[…], fail_fraction=…, fail_status=…, key_column=…,
  report_state=…)``, ``hold_state("PENDING"|"RUNNING"|"SUCCEEDED", reads=…)`` (reads are ``get`` calls of
  the job), ``release``, ``inject_fault("batchPredictionJobs.create"|".get"|".list"|".cancel"|".delete",
  status, after=…)``, ``calls()``, ``jobs()`` / ``job(name)`` (``state`` is ``JOB_STATE_*``),
  ``request_counts()`` (keyed by the row key).
* Jobs share the quota book with the Developer API's batches (``max_concurrent_jobs``); a BigQuery job's
  tokens are not estimated (0) because its rows are read only when it runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.emulator.common import ApiError, json_response, pick, rfc3339
from airflow_gemini_batch.emulator.jobs import TERMINAL
from airflow_gemini_batch.emulator.vertex_jobs import KIND, VertexJob, new_vertex_job_id, parse_bq_uri

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from airflow_gemini_batch.emulator.faults import Fault
    from airflow_gemini_batch.emulator.state import Emulator

_OP_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1beta1.DeleteOperationMetadata"


def _input(body: dict[str, Any]) -> tuple[str, list[str]]:
    """``("bigquery" | "gcs", uris)`` of a create's ``inputConfig``."""
    config = pick(body, "inputConfig", "input_config") or {}
    bq = (pick(config, "bigquerySource", "bigquery_source") or {}).get("inputUri")
    gcs = (pick(config, "gcsSource", "gcs_source") or {}).get("uris")
    if bq:
        parse_bq_uri(str(bq), "inputConfig.bigquerySource.inputUri")
        return "bigquery", [str(bq)]
    if gcs:
        uris = [gcs] if isinstance(gcs, str) else gcs
        if not isinstance(uris, list) or not all(isinstance(u, str) and u.startswith("gs://") for u in uris):
            raise ApiError(400, "inputConfig.gcsSource.uris must be a list of gs:// URIs.")
        return "gcs", list(uris)
    raise ApiError(400, "inputConfig must set bigquerySource.inputUri or gcsSource.uris.")


async def create(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    body: dict[str, Any] = params["json"] or {}
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a BatchPredictionJob object.")
    model = str(pick(body, "model") or "")
    display_name = str(pick(body, "displayName", "display_name") or "")
    if not model:
        raise ApiError(400, "BatchPredictionJob.model is required.")
    if not display_name:
        raise ApiError(400, "BatchPredictionJob.display_name is required.")
    input_kind, uris = _input(body)
    output_config = pick(body, "outputConfig", "output_config") or {}
    now = time.time()
    output_table, gcs_directory = VertexJob.output_locations(output_config, model, now)
    worker = emu.vertex
    if (input_kind == "bigquery" or output_table) and worker.bigquery_endpoint is None:
        raise ApiError(
            400, "The emulator was started without --bigquery-endpoint: it cannot read or write bq://."
        )
    if (input_kind == "gcs" or gcs_directory) and worker.storage_endpoint is None:
        raise ApiError(400, "The emulator was started without --gcs-endpoint: it cannot read or write gs://.")
    # Why here, with no await before the add: a rejected create must use up no hold or behaviour rule.
    emu.engine.check_quota(model, 0, emu.quota_limits())
    hold = emu.knobs.hold_for(display_name)
    job = VertexJob(
        id=new_vertex_job_id(),
        display_name=display_name,
        model=model,
        kind=KIND,
        input_kind=input_kind,
        input_file=None,
        inline_requests=None,
        request_count=0,
        pending_seconds=emu.knobs.get("pending_seconds"),
        running_seconds=emu.knobs.get("running_seconds"),
        output_delay_seconds=emu.knobs.get("output_delay_seconds"),
        behaviour=emu.knobs.behaviour_for(display_name),
        hold_state=None if hold is None else hold.state,
        hold_reads=None if hold is None else hold.reads,
        create_time=now,
        project=params["project"],
        location=params["location"],
        input_config=dict(pick(body, "inputConfig", "input_config") or {}),
        output_config=dict(output_config),
        input_uris=uris,
        output_table=output_table,
        gcs_output_directory=gcs_directory,
    )
    emu.engine.add(job)
    return json_response(job.resource(time.time()))


def _job(emu: Emulator, params: dict[str, Any]) -> VertexJob:
    job = emu.engine.get(str(params["id"]))
    if (
        not isinstance(job, VertexJob)
        or job.project != params["project"]
        or job.location != params["location"]
    ):
        name = (
            f"projects/{params['project']}/locations/{params['location']}/batchPredictionJobs/{params['id']}"
        )
        raise ApiError(404, f"The BatchPredictionJob {name} does not exist.")
    return job


async def get(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    job = _job(emu, params)
    now = time.time()
    # As batches.get: the read is counted after its reply is built (the last held read still shows the hold).
    body = job.resource(now, raw_state=job.reported_state(consume=True))
    emu.engine.read(job, now)
    return json_response(body)


def _display_name_filter(raw: str) -> str | None:
    """``display_name="x"`` → ``x``; empty → None; anything else is a 400 (the emulator filters no more)."""
    text = raw.strip()
    if not text:
        return None
    field, sep, value = text.partition("=")
    value = value.strip()
    if (
        field.strip() not in ("display_name", "displayName")
        or not sep
        or len(value) < 2
        or value[0] != value[-1]
        or value[0] not in "\"'"
    ):
        raise ApiError(400, f'Unsupported filter {raw!r}: the emulator filters only on display_name="…".')
    return value[1:-1]


async def list_jobs(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    wanted = _display_name_filter(request.query_params.get("filter") or "")

    def where(job: Any) -> bool:
        return (
            isinstance(job, VertexJob)
            and job.project == params["project"]
            and job.location == params["location"]
            and (wanted is None or job.display_name == wanted)
        )

    page, token = emu.engine.list(
        emu.page_size(request, default=100),
        request.query_params.get("pageToken"),
        lag_seconds=emu.knobs.get("list_lag_seconds"),
        kinds=(KIND,),
        where=where,
    )
    now = time.time()
    jobs = [job.resource(now, raw_state=job.reported_state()) for job in page if isinstance(job, VertexJob)]
    body: dict[str, Any] = {"batchPredictionJobs": jobs} if jobs else {}
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def cancel(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    job = _job(emu, params)
    state = job.state_at(time.time())[0]
    if state in TERMINAL:
        raise ApiError(400, f"Cannot cancel {job.name}: it is in state JOB_STATE_{state}.")
    emu.engine.cancel(job)
    return json_response({})


async def delete(emu: Emulator, request: Request, params: dict[str, Any], fault: Fault | None) -> Response:
    job = _job(emu, params)
    now = time.time()
    state = job.state_at(now)[0]
    if state not in TERMINAL:
        raise ApiError(400, f"Cannot delete {job.name}: it is in state JOB_STATE_{state}; cancel it first.")
    emu.engine.delete(job)
    stamp = rfc3339(now)
    return json_response(
        {
            "name": f"projects/{job.project}/locations/{job.location}/operations/{job.id}",
            "metadata": {
                "@type": _OP_TYPE,
                "genericMetadata": {"createTime": stamp, "updateTime": stamp},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
    )
