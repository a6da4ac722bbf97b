"""GeminiBatchHook: the one place that turns an Airflow connection into google-genai calls.

Invariants:

* google-genai is the only client of the API (sync ``genai.Client`` and its ``.aio`` twin). The single
  exception is reading a batch's Operation JSON through the SDK's own (private) transport, because the SDK's
  ``BatchJob`` drops ``batchStats`` and the Operation ``error``; that use sits in one function,
  :func:`~airflow_gemini_batch.hooks.raw_operation.get_operation`, shared by ``get_job`` and ``aget_job``.
* The API key comes from the connection's password only. It is handed to the SDK and never logged, returned,
  put in an exception message or in trigger kwargs.
* Idempotent calls (get, list, cancel, delete, upload start) use the SDK's retry options for transient codes;
  downloads, which the SDK does not retry, use the provider's one policy (:mod:`airflow_gemini_batch.retry`).
  ``create`` is *not* retried here: a 5xx on create may have created a paid job, so the caller
  (:mod:`airflow_gemini_batch.submit.submission`) decides, after looking for the job by its display name.
  Cache creates are not retried either, for the same reason
  (:mod:`airflow_gemini_batch.submit.context_cache` looks the cache up by display name on the next try).
* A cache that is already gone is not an error for ``delete_cache`` / ``adelete_cache``: deleting is cleanup,
  and the service answers 403/404 for a cache that expired or was deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from google import genai
from google.genai import types

from airflow_gemini_batch.hooks.job_status import (
    JobStatus,
    check_job_name,
    is_vertex_job_name,
    normalize_state,
)
from airflow_gemini_batch.hooks.raw_operation import get_operation
from airflow_gemini_batch.hooks.transport_errors import (
    TRANSIENT_HTTP_CODES,
    describe_error,
    http_code,
    is_transient,
)
from airflow_gemini_batch.hooks.upload_chunks import ReusedBufferReader
from airflow_gemini_batch.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from airflow.sdk import Connection
    from google.genai.client import AsyncClient

#: What the service answers for a cached content that expired, was deleted or never existed.
CACHE_GONE_CODES = (403, 404)


@dataclass(frozen=True)
class CacheStatus:
    """A cached content as the hook reports it: names, size, creation and expiry (epoch seconds), no contents."""

    name: str
    display_name: str | None
    model: str | None
    expire_time: float | None
    token_count: int | None
    #: when the service made it: where its storage billing starts (a renewed cache keeps its create time)
    create_time: float | None = None

    @classmethod
    def of(cls, cache: types.CachedContent) -> CacheStatus:
        usage = cache.usage_metadata
        return cls(
            name=cache.name or "",
            display_name=cache.display_name,
            model=cache.model,
            expire_time=cache.expire_time.timestamp() if cache.expire_time else None,
            token_count=usage.total_token_count if usage else None,
            create_time=cache.create_time.timestamp() if cache.create_time else None,
        )


#: How far back an orphan lookup reads ``batches.list``: the service expires every job 48 h after its
#: creation, so an older job has ended and no create of a live run can be that old.
LIST_WINDOW_SECONDS = 48 * 3600.0


def within_window(jobs: Iterable[JobStatus], window_seconds: float | None) -> Iterator[JobStatus]:
    """``jobs`` (newest first) up to the first one created more than ``window_seconds`` ago; a job without a
    create time is kept. Stopping there is what spares reading the account's whole job history."""
    if window_seconds is None:
        yield from jobs
        return
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=window_seconds)
    for job in jobs:
        created = datetime.fromisoformat(job.create_time) if job.create_time else None
        if created is not None and created.replace(tzinfo=created.tzinfo or timezone.utc) < cutoff:
            return
        yield job


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
        """Upload a JSONL file through the SDK's resumable upload; return the file name ``files/<id>``.

        The SDK sends the file in 8 MiB chunks; it reads them from a
        :class:`~airflow_gemini_batch.hooks.upload_chunks.ReusedBufferReader`, so the worker holds one chunk
        buffer whatever the file size (given the path, google-genai 2.x keeps every sent chunk until a garbage
        collection).
        """
        config = types.UploadFileConfig(display_name=display_name, mime_type=mime_type)
        with open(path, "rb") as raw:
            uploaded = self.get_conn().files.upload(file=ReusedBufferReader(raw), config=config)
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

        :param attempts: downloads in all, the first one included (:class:`~airflow_gemini_batch.retry.RetryPolicy`).
        :param backoff_seconds: the policy's base wait, doubled after each further failure.
        """
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        policy = RetryPolicy(attempts=attempts, base_seconds=backoff_seconds)
        try:
            policy.call(
                lambda: self.get_conn().files.download(file=file_name, destination=str(partial)),
                retry_on=is_transient,
                what=f"Download of {file_name}",
                log=self.log,
            )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(destination)
        return destination

    def delete_file(self, file_name: str) -> None:
        self.get_conn().files.delete(name=file_name)

    # ---- models --------------------------------------------------------------------------------------------

    def count_tokens(self, model: str, contents: list[dict[str, Any]]) -> int:
        """Tokens of ``contents`` (REST Content dicts) as the model counts them: one free, rate-limited call,
        retried by the SDK on transient codes. The Developer API takes contents only (the SDK refuses a
        system instruction or tools there), so callers pass a system instruction as one more content."""
        response = self.get_conn().models.count_tokens(
            model=model, contents=[types.Content.model_validate(c) for c in contents]
        )
        return int(response.total_tokens or 0)

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
        """The raw Operation JSON of a job (keeps ``batchStats``; see :mod:`~.raw_operation`)."""
        return get_operation(self.get_conn(), name)

    def get_job(self, name: str) -> JobStatus:
        return JobStatus.from_operation(self.get_job_operation(name))

    @staticmethod
    async def aget_job(client: AsyncClient, name: str) -> JobStatus:
        """Async twin of :meth:`get_job`, on a caller-owned async client (one client per trigger run).

        A Vertex AI job name is read through the SDK's ``batches.get``, which keeps ``completionStats`` there
        (:class:`~airflow_gemini_batch.hooks.vertex.GeminiVertexBatchHook`'s client is the caller's then)."""
        if is_vertex_job_name(name):
            return JobStatus.from_vertex_job((await client.batches.get(name=name)).model_dump(mode="json"))
        return JobStatus.from_operation(await get_operation(client, name))

    def list_jobs(self, page_size: int = 100, window_seconds: float | None = None) -> Iterator[JobStatus]:
        """Jobs visible to the key, newest first as the service returns them (paged by the SDK).

        :param window_seconds: stop at the first job created longer ago than that (no further page is read).
        """
        pages = self.get_conn().batches.list(config=types.ListBatchJobsConfig(page_size=page_size))
        jobs = (
            JobStatus(
                name=job.name or "",
                state=normalize_state(job.state.value if job.state else None),
                display_name=job.display_name,
                model=job.model,
                create_time=job.create_time.isoformat() if job.create_time else None,
            )
            for job in pages
        )
        yield from within_window(jobs, window_seconds)

    def find_job_by_display_name(
        self, display_name: str, page_size: int = 100, window_seconds: float | None = LIST_WINDOW_SECONDS
    ) -> JobStatus | None:
        """The newest job created in the last 48 h whose display name matches exactly (an orphaned create)."""
        jobs = self.list_jobs(page_size, window_seconds)
        return next((j for j in jobs if j.display_name == display_name), None)

    def cancel_job(self, name: str) -> None:
        self.get_conn().batches.cancel(name=check_job_name(name))

    @staticmethod
    async def acancel_job(client: AsyncClient, name: str) -> None:
        await client.batches.cancel(name=check_job_name(name))

    def delete_job(self, name: str) -> None:
        self.get_conn().batches.delete(name=check_job_name(name))

    # ---- cached contents (context caching) -------------------------------------------------------------

    def create_cache(
        self,
        *,
        model: str,
        display_name: str,
        contents: list[dict[str, Any]],
        ttl_seconds: float,
        system_instruction: dict[str, Any] | None = None,
        tools: list[Any] | None = None,
    ) -> CacheStatus:
        """Create one cached content. Not retried (a create is paid storage; see the module docstring)."""
        no_retry = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
        config = types.CreateCachedContentConfig(
            contents=contents,
            system_instruction=system_instruction,
            tools=tools,
            ttl=f"{int(ttl_seconds)}s",
            display_name=display_name,
            http_options=no_retry,
        )
        return CacheStatus.of(self.get_conn().caches.create(model=model, config=config))

    def get_cache(self, name: str) -> CacheStatus | None:
        """The live cache called ``name``, or None when it expired, was deleted or never existed."""
        try:
            return CacheStatus.of(self.get_conn().caches.get(name=name))
        except Exception as e:
            if http_code(e) in CACHE_GONE_CODES:
                return None
            raise

    def find_cache_by_display_name(self, display_name: str) -> CacheStatus | None:
        """The newest live cache with this display name (a create whose name was never recorded)."""
        pages = self.get_conn().caches.list(config=types.ListCachedContentsConfig(page_size=100))
        return next((CacheStatus.of(c) for c in pages if c.display_name == display_name), None)

    def extend_cache(self, name: str, ttl_seconds: float) -> CacheStatus | None:
        """Set the cache to expire ``ttl_seconds`` from now; None when it is already gone."""
        config = types.UpdateCachedContentConfig(ttl=f"{int(ttl_seconds)}s")
        try:
            return CacheStatus.of(self.get_conn().caches.update(name=name, config=config))
        except Exception as e:
            if http_code(e) in CACHE_GONE_CODES:
                return None
            raise

    @staticmethod
    async def aextend_cache(client: AsyncClient, name: str, ttl_seconds: float) -> CacheStatus | None:
        """Async twin of :meth:`extend_cache`, on a caller-owned async client (the trigger's)."""
        config = types.UpdateCachedContentConfig(ttl=f"{int(ttl_seconds)}s")
        try:
            return CacheStatus.of(await client.caches.update(name=name, config=config))
        except Exception as e:
            if http_code(e) in CACHE_GONE_CODES:
                return None
            raise

    def delete_cache(self, name: str) -> bool:
        """Delete the cache; False when it was already gone."""
        try:
            self.get_conn().caches.delete(name=name)
        except Exception as e:
            if http_code(e) in CACHE_GONE_CODES:
                return False
            raise
        return True

    @staticmethod
    async def adelete_cache(client: AsyncClient, name: str) -> bool:
        """Async twin of :meth:`delete_cache`."""
        try:
            await client.caches.delete(name=name)
        except Exception as e:
            if http_code(e) in CACHE_GONE_CODES:
                return False
            raise
        return True

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (list one job). The message never contains the key."""
        try:
            next(iter(self.get_conn().batches.list(config=types.ListBatchJobsConfig(page_size=1))), None)
        except Exception as e:
            return False, describe_error(e)
        return True, "Connection to the Gemini Batch API works."
