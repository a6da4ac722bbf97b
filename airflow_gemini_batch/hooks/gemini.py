"""GeminiBatchHook: the one place that turns an Airflow connection into google-genai calls.

Invariants:

* google-genai is the only client of the API (sync ``genai.Client`` and its ``.aio`` twin). The single
  exception is reading a batch's Operation JSON through the SDK's own transport (``_api_client.request``),
  because the SDK's ``BatchJob`` drops ``batchStats`` and the Operation ``error``; we need both for progress
  and for error messages. That is still the SDK's HTTP code, headers and auth.
* The API key comes from the connection's password only. It is handed to the SDK and never logged, returned,
  put in an exception message or in trigger kwargs.
* Idempotent calls (get, list, cancel, delete, upload start) use the SDK's retry options for transient codes.
  ``create`` is *not* retried here: a 5xx on create may have created a paid job, so the caller (the submit
  operator) decides, after looking for the job by its display name.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from airflow.sdk import BaseHook
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import Connection
    from google.genai.client import AsyncClient

TRANSIENT_HTTP_CODES = (408, 429, 500, 502, 503, 504)
_JOB_NAME = re.compile(r"^batches/[^/]+$")

#: Normalised job states (the wire says ``BATCH_STATE_X``, the SDK ``JOB_STATE_X``; we say ``X``).
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
PENDING = "PENDING"
RUNNING = "RUNNING"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})


def normalize_state(raw: str | None) -> str:
    """``BATCH_STATE_RUNNING`` / ``JOB_STATE_RUNNING`` / ``RUNNING`` → ``RUNNING``; None → ``UNSPECIFIED``."""
    if not raw:
        return "UNSPECIFIED"
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def describe_error(error: BaseException) -> str:
    """A one-line, secret-free description of an SDK or transport error (code, status, the API's message)."""
    code = getattr(error, "code", None)
    if code is not None:
        status = getattr(error, "status", None) or ""
        message = getattr(error, "message", None) or ""
        return f"HTTP {code} {status}: {message}".strip()
    return f"{type(error).__name__}: {error}"


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: 408/429/5xx from the API, and connection-level failures of any transport.

    The SDK raises its own ``APIError`` for HTTP errors, but lets transport exceptions (httpx, httpx2 on
    google-genai 3, aiohttp for async) through unwrapped: see :func:`is_transport_error`.
    """
    code = getattr(error, "code", None)
    if isinstance(error, genai_errors.APIError):
        return isinstance(code, int) and (code in (408, 429) or code >= 500)
    return is_transport_error(error)


# The transports google-genai may use (2.x: httpx, aiohttp when installed; 3.x: httpx2, aiohttp), and the base
# classes of their connection-level failures. Matched by name along the class's MRO, so no transport needs
# importing here and a programming error of theirs (InvalidURL, a decoding error) is not taken for one.
_TRANSPORT_MODULES = frozenset({"httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"})
_TRANSPORT_FAILURES = frozenset(
    {"TransportError", "NetworkError", "TimeoutException", "ClientConnectionError", "ClientPayloadError"}
)
# Failures before any byte of a request left: the request certainly did not reach the service.
_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "ClientConnectorError"})


def _transport_classes(error: BaseException) -> list[str]:
    return [c.__name__ for c in type(error).__mro__ if c.__module__.split(".")[0] in _TRANSPORT_MODULES]


def is_transport_error(error: BaseException) -> bool:
    """True for a connection-level failure (refused, reset, cut, timed out) of any transport the SDK may use;
    the SDK wraps none of them into ``APIError``."""
    if isinstance(error, genai_errors.APIError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    return not _TRANSPORT_FAILURES.isdisjoint(_transport_classes(error))


def request_not_sent(error: BaseException) -> bool:
    """True when the request certainly never reached the service (the connection was never made)."""
    return isinstance(error, ConnectionRefusedError) or not _NOT_SENT.isdisjoint(_transport_classes(error))


def check_job_name(name: str) -> str:
    """The Developer API only accepts ``batches/<id>``; fail early with the name in the message."""
    if not _JOB_NAME.match(name or ""):
        raise ValueError(f"Invalid Gemini batch job name {name!r}: expected 'batches/<id>'.")
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
    has_inline_responses: bool = False
    error: dict[str, Any] | None = field(default=None)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def output_ready(self) -> bool:
        """SUCCEEDED is not enough: the responses file (or inline list) can appear after the state flips."""
        return self.state == SUCCEEDED and (self.responses_file is not None or self.has_inline_responses)

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
            has_inline_responses=inline is not None,
            error={"code": error.get("code"), "message": error.get("message")} if error else None,
        )


class GeminiBatchHook(BaseHook):
    """Files and Batches calls of the Gemini Developer API, built from a ``gemini_batch`` connection.

    Connection fields: password = API key (required); host = base URL (optional; how DAGs point at the
    emulator); extra ``api_version`` (e.g. ``v1beta``) and ``timeout_seconds``.

    :param gemini_conn_id: the Airflow connection id.
    :param retry_attempts: attempts (first call included) for idempotent calls on transient errors.
    """

    conn_name_attr = "gemini_conn_id"
    default_conn_name = "gemini_batch_default"
    conn_type = "gemini_batch"
    hook_name = "Gemini Batch"

    def __init__(
        self, gemini_conn_id: str = default_conn_name, retry_attempts: int = 5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.gemini_conn_id = gemini_conn_id
        self.retry_attempts = retry_attempts

    # ---- clients -------------------------------------------------------------------------------------------

    def _client_kwargs(self, conn: Connection, extra: dict[str, Any]) -> dict[str, Any]:
        if not conn.password:
            raise ValueError(
                f"Connection {self.gemini_conn_id!r} has no API key: put the Gemini API key in its password field."
            )
        http_options: dict[str, Any] = {
            "retry_options": types.HttpRetryOptions(
                attempts=self.retry_attempts, http_status_codes=list(TRANSIENT_HTTP_CODES)
            )
        }
        if conn.host:
            host = conn.host if "://" in conn.host else f"https://{conn.host}"
            if conn.port:
                host = f"{host.rstrip('/')}:{conn.port}"
            http_options["base_url"] = host
        if extra.get("api_version"):
            http_options["api_version"] = extra["api_version"]
        if extra.get("timeout_seconds"):
            http_options["timeout"] = int(float(extra["timeout_seconds"]) * 1000)
        return {"api_key": conn.password, "http_options": types.HttpOptions(**http_options)}

    def get_conn(self) -> genai.Client:
        """The sync client, built once per hook instance (one HTTP connection pool)."""
        return self._client

    @cached_property
    def _client(self) -> genai.Client:
        conn = self.get_connection(self.gemini_conn_id)
        return genai.Client(**self._client_kwargs(conn, conn.extra_dejson))

    async def aget_client(self) -> AsyncClient:
        """A new async client (``client.aio``); use it for every call of one trigger run, then ``aclose()``.

        Reads the connection with the async API: sync connection access on the triggerer's event loop can
        dead-lock in Airflow 3.3.
        """
        conn = await self.aget_connection(self.gemini_conn_id)
        extra = conn.extra_dejson if not hasattr(conn, "aextra_dejson") else await conn.aextra_dejson()
        return genai.Client(**self._client_kwargs(conn, extra)).aio

    # ---- files ---------------------------------------------------------------------------------------------

    def upload_jsonl(self, path: str | Path, display_name: str, mime_type: str = "jsonl") -> str:
        """Upload a JSONL file (the SDK streams it in 8 MiB chunks); return the file name ``files/<id>``."""
        uploaded = self.get_conn().files.upload(
            file=str(path), config=types.UploadFileConfig(display_name=display_name, mime_type=mime_type)
        )
        if not uploaded.name:
            raise RuntimeError(f"Upload of {path} returned no file name")
        return uploaded.name

    def download_file(
        self, file_name: str, destination: str | Path, attempts: int = 5, backoff_seconds: float = 1.0
    ) -> Path:
        """Stream a generated file (a batch's responses) to ``destination`` without holding it in memory.

        The SDK does not retry downloads, and a connection cut mid-body surfaces as a raw transport error
        (httpx / httpx2 / aiohttp), so transient failures are retried here, each time from the start into a
        temporary file that is renamed only when complete: a partial download never looks like a whole one.
        """
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        for attempt in range(1, attempts + 1):
            try:
                self.get_conn().files.download(file=file_name, destination=str(partial))
                break
            except Exception as error:
                if attempt == attempts or not is_transient(error):
                    partial.unlink(missing_ok=True)
                    raise
                delay = backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
                self.log.warning(
                    "Download of %s failed (%s); retry %d/%d in %.1f s",
                    file_name,
                    describe_error(error),
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
        partial.replace(destination)
        return destination

    def delete_file(self, file_name: str) -> None:
        self.get_conn().files.delete(name=file_name)

    # ---- batches -------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        file_name: str | None = None,
        inline_requests: list[dict[str, Any]] | None = None,
        embeddings: bool = False,
    ) -> JobStatus:
        """Create one batch job, from an uploaded file or inline requests. Not retried (see module doc).

        :param inline_requests: for content batches, ``InlinedRequest`` dicts (``contents``, ``config``,
            ``metadata={"key": ...}``); for embeddings, an ``EmbedContentBatch`` dict.
        """
        if (file_name is None) == (inline_requests is None):
            raise ValueError("Give exactly one of file_name and inline_requests")
        client = self.get_conn()
        no_retry = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
        if embeddings:
            src: Any = {"file_name": file_name} if file_name else {"inlined_requests": inline_requests}
            job = client.batches.create_embeddings(
                model=model,
                src=src,
                config=types.CreateEmbeddingsBatchJobConfig(display_name=display_name, http_options=no_retry),
            )
        else:
            job = client.batches.create(
                model=model,
                src=file_name if file_name else inline_requests,  # type: ignore[arg-type]
                config=types.CreateBatchJobConfig(display_name=display_name, http_options=no_retry),
            )
        return JobStatus(
            name=job.name or "",
            state=normalize_state(job.state.value if job.state else None),
            display_name=job.display_name,
            model=job.model,
        )

    def get_job_operation(self, name: str) -> dict[str, Any]:
        """The raw Operation JSON of a job, read through the SDK's own transport (keeps ``batchStats``)."""
        check_job_name(name)
        response = self.get_conn()._api_client.request("get", name, {})
        return orjson.loads(response.body or "{}")

    def get_job(self, name: str) -> JobStatus:
        return JobStatus.from_operation(self.get_job_operation(name))

    @staticmethod
    async def aget_job(client: AsyncClient, name: str) -> JobStatus:
        """Async twin of :meth:`get_job`, on a caller-owned async client (one client per trigger run)."""
        check_job_name(name)
        response = await client._api_client.async_request("get", name, {})
        return JobStatus.from_operation(orjson.loads(response.body or "{}"))

    def list_jobs(self, page_size: int = 100) -> Iterator[JobStatus]:
        """All jobs visible to the key, newest first as the service returns them (paged by the SDK)."""
        for job in self.get_conn().batches.list(config=types.ListBatchJobsConfig(page_size=page_size)):
            yield JobStatus(
                name=job.name or "",
                state=normalize_state(job.state.value if job.state else None),
                display_name=job.display_name,
                model=job.model,
                create_time=job.create_time.isoformat() if job.create_time else None,
            )

    def find_job_by_display_name(self, display_name: str, page_size: int = 100) -> JobStatus | None:
        """The newest job whose display name matches exactly (how an orphaned create is found)."""
        return next((j for j in self.list_jobs(page_size) if j.display_name == display_name), None)

    def cancel_job(self, name: str) -> None:
        self.get_conn().batches.cancel(name=check_job_name(name))

    @staticmethod
    async def acancel_job(client: AsyncClient, name: str) -> None:
        await client.batches.cancel(name=check_job_name(name))

    def delete_job(self, name: str) -> None:
        self.get_conn().batches.delete(name=check_job_name(name))

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (list one job). The message never contains the key."""
        try:
            next(iter(self.get_conn().batches.list(config=types.ListBatchJobsConfig(page_size=1))), None)
        except Exception as e:
            return False, describe_error(e)
        return True, "Connection to the Gemini Batch API works."
