"""GeminiVertexBatchHook: the same batch calls, on Vertex AI (batch prediction jobs) through google-genai.

Invariants:

* The connection is an ordinary ``google_cloud_platform`` one: credentials and project come from the
  provider's ``GoogleBaseHook.get_credentials_and_project_id()`` (key file, keyfile JSON, ADC, impersonation),
  never an API key. Extras read here: ``vertex_location`` (default ``us-central1``; the hook's ``location``
  wins), ``vertex_base_url`` and ``vertex_api_version`` (how tests point the SDK at the emulator),
  ``timeout_seconds``. The credentials are handed to the SDK and never logged or put in trigger kwargs.
* Anonymous credentials (``is_anonymous``) only go with a ``vertex_base_url`` (an emulator): the SDK refreshes
  a token before each call, which anonymous credentials cannot do, so they become a fixed placeholder token
  that only an emulator accepts. Against the real service an anonymous connection is refused up front.
* It is a :class:`~airflow_gemini_batch.hooks.gemini.GeminiBatchHook`: the wait, trigger, sensor, UI and
  recovery code call the same methods; job reads map Vertex's ``JOB_STATE_*``, ``completionStats`` and
  ``outputInfo`` onto :class:`~airflow_gemini_batch.hooks.job_status.JobStatus`. What Vertex does not have is
  refused with the reason: the Files API (inputs are ``bq://`` tables or ``gs://`` JSONL), inline requests,
  embeddings batches, context caches created for a batch.
* ``create`` is not retried here either (a 5xx may have made a paid job; the caller looks it up first).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from google import genai
from google.genai import types

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook, within_window
from airflow_gemini_batch.hooks.job_status import JobStatus
from airflow_gemini_batch.hooks.transport_errors import TRANSIENT_HTTP_CODES

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
    from google.genai.client import AsyncClient

DEFAULT_LOCATION = "us-central1"
#: Vertex jobs may queue up to 72 h before they run; an orphan lookup reads this far back in the job list.
VERTEX_LIST_WINDOW_SECONDS = 96 * 3600.0
#: What the SDK sends as the bearer token for an anonymous (emulator) connection.
EMULATOR_TOKEN = "anonymous-emulator"


class VertexUnsupportedError(ValueError):
    """A Developer-API-only feature asked of the Vertex AI backend (named, with the alternative)."""


def _unsupported(what: str, fix: str) -> VertexUnsupportedError:
    return VertexUnsupportedError(f"{what} is not available on Vertex AI (Gemini Developer API only). {fix}")


class GeminiVertexBatchHook(GeminiBatchHook):
    """Batch prediction jobs on Vertex AI, built from a ``google_cloud_platform`` connection.

    :param gemini_conn_id: the ``google_cloud_platform`` connection id.
    :param retry_attempts: attempts (first call included) for idempotent calls on transient errors.
    :param location: the Vertex AI region (default: the connection's ``vertex_location``, else us-central1).
    """

    default_conn_name = "google_cloud_default"
    hook_name = "Gemini Batch on Vertex AI"
    backend = "vertex"

    def __init__(
        self,
        gemini_conn_id: str = default_conn_name,
        retry_attempts: int = 5,
        location: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, retry_attempts=retry_attempts, **kwargs)
        self.location = location

    # ---- clients -------------------------------------------------------------------------------------------

    @cached_property
    def google_hook(self) -> GoogleBaseHook:
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

        return GoogleBaseHook(gcp_conn_id=self.gemini_conn_id)

    def vertex_kwargs(self) -> dict[str, Any]:
        """``genai.Client`` arguments: project, location, credentials, HTTP options (reads the connection)."""
        google = self.google_hook
        credentials, project = google.get_credentials_and_project_id()
        project = google.project_id or project
        if not project:
            raise ValueError(
                f"Connection {self.gemini_conn_id!r} names no project: set its 'project' extra (Vertex AI jobs "
                "live in a project)."
            )
        base_url = google._get_field("vertex_base_url")
        if google._get_field("is_anonymous"):
            if not base_url:
                raise ValueError(
                    f"Connection {self.gemini_conn_id!r} is anonymous: Vertex AI needs credentials (a key file, "
                    "ADC or impersonation). Anonymous connections only work with a 'vertex_base_url' emulator."
                )
            from google.oauth2.credentials import Credentials

            credentials = Credentials(token=EMULATOR_TOKEN)
        http_options: dict[str, Any] = {
            "retry_options": types.HttpRetryOptions(
                attempts=self.retry_attempts, http_status_codes=list(TRANSIENT_HTTP_CODES)
            )
        }
        if base_url:
            http_options["base_url"] = base_url
        if google._get_field("vertex_api_version"):
            http_options["api_version"] = google._get_field("vertex_api_version")
        if google._get_field("timeout_seconds"):
            http_options["timeout"] = int(float(google._get_field("timeout_seconds")) * 1000)
        return {
            "vertexai": True,
            "project": project,
            "location": self.location or google._get_field("vertex_location") or DEFAULT_LOCATION,
            "credentials": credentials,
            "http_options": types.HttpOptions(**http_options),
        }

    @property
    def project(self) -> str:
        return str(self.vertex_kwargs()["project"])

    @cached_property
    def _client(self) -> genai.Client:
        return genai.Client(**self.vertex_kwargs())

    async def aget_client(self) -> AsyncClient:
        """A new async client; the connection and credentials are read off the event loop (a thread)."""
        from asgiref.sync import sync_to_async

        kwargs = await sync_to_async(self.vertex_kwargs)()
        return genai.Client(**kwargs).aio

    # ---- what Vertex does not have -------------------------------------------------------------------------

    def upload_jsonl(self, path: str | Path, display_name: str, mime_type: str = "jsonl") -> str:
        raise _unsupported("The Files API", "Vertex AI reads its input from a bq:// table or gs:// JSONL.")

    def download_file(
        self, file_name: str, destination: str | Path, attempts: int = 5, backoff_seconds: float = 1.0
    ) -> Path:
        raise _unsupported("The Files API", "Vertex AI writes its predictions to BigQuery or gs://.")

    def delete_file(self, file_name: str) -> None:
        raise _unsupported("The Files API", "Vertex AI jobs have no uploaded files to delete.")

    # ---- batches -------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        file_name: str | None = None,
        inline_requests: list[dict[str, Any]] | None = None,
        embeddings: bool = False,
        src: str | None = None,
        dest: str | None = None,
    ) -> JobStatus:
        """Create one batch prediction job reading ``src`` (``bq://…`` / ``gs://…``) into ``dest``. Not retried.

        :param dest: ``bq://project.dataset.table`` or a ``gs://`` prefix; where the predictions go.
        """
        if embeddings:
            raise _unsupported(
                "An embeddings batch", "Use a gemini_batch connection (the Developer API) for task='embed'."
            )
        if file_name is not None or inline_requests is not None or not src:
            raise _unsupported(
                "A batch from an uploaded file or inline requests",
                "Give a bq:// table or gs:// JSONL as the job's source.",
            )
        no_retry = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
        job = self.get_conn().batches.create(
            model=model,
            src=src,
            config=types.CreateBatchJobConfig(display_name=display_name, dest=dest, http_options=no_retry),
        )
        return JobStatus.from_vertex_job(job.model_dump(mode="json"))

    def get_job_operation(self, name: str) -> dict[str, Any]:
        """The job as the SDK reads it (Vertex has no Operation wrapper; the SDK keeps its stats there)."""
        return self.get_conn().batches.get(name=name).model_dump(mode="json")

    def get_job(self, name: str) -> JobStatus:
        return JobStatus.from_vertex_job(self.get_job_operation(name))

    def list_jobs(self, page_size: int = 100, window_seconds: float | None = None) -> Iterator[JobStatus]:
        pages = self.get_conn().batches.list(config=types.ListBatchJobsConfig(page_size=page_size))
        jobs = (JobStatus.from_vertex_job(job.model_dump(mode="json")) for job in pages)
        yield from within_window(jobs, window_seconds)

    def find_job_by_display_name(
        self,
        display_name: str,
        page_size: int = 100,
        window_seconds: float | None = VERTEX_LIST_WINDOW_SECONDS,
    ) -> JobStatus | None:
        """The newest job of the last 96 h with this display name (Vertex jobs queue up to 72 h)."""
        return super().find_job_by_display_name(display_name, page_size, window_seconds)

    def test_connection(self) -> tuple[bool, str]:
        ok, message = super().test_connection()
        return ok, "Connection to Vertex AI batch prediction works." if ok else message
