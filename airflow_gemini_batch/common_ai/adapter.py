"""``GeminiBatchAdapter``: common-ai's ``BatchAdapter`` over our :class:`GeminiBatchHook`.

It is one module, past the usual size, because common-ai's ``BatchAdapter`` contract (submit, re-attach,
status, results, cancel) is one class and reads best whole.

common-ai's ``LLMBatchOperator`` owns the flow (identity key, fingerprint, two-phase state file, polling,
manifest); this adapter only speaks Gemini Batch Mode for it. Invariants:

* One batch = one uploaded JSONL file = one Gemini job, created through our idempotent
  :func:`~airflow_gemini_batch.submit.submission.create_once` (an ambiguous create error is resolved by a
  display-name lookup, never by a blind second create).
* The job's display name carries the identity key and the fingerprint (:func:`display_name`), so an orphaned
  create - the task died after the job existed, before common-ai recorded its name - is found by
  :meth:`~GeminiBatchHook.find_job_by_display_name` and re-attached to instead of paid for twice.
* The API key is handed to the SDK only. Nothing this adapter returns (batch id, uploaded file name, states,
  result items) contains it, so common-ai's state file, manifest and result rows never do either.
* Gemini's job states collapse onto common-ai's five (:func:`batch_state`): unknown or transitional states
  (QUEUED, CANCELLING, PAUSED, UPDATING, ...) are ``in_progress``, and SUCCEEDED is ``completed`` only once
  its responses file is visible (the service can report SUCCEEDED first). A job that ended EXPIRED or
  CANCELLED without a responses file has no answer for any request, so all of them are reported as
  expired / cancelled, not as missing.
* common-ai's dispatcher passes only the connection's password (API key) and host (base URL, which must then
  include the port); the connection's extras (``api_version``, ``timeout_seconds``) are not seen here.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.ai.batch.base import (
    BatchAdapter,
    BatchState,
    BatchStatus,
    ExtractedOutput,
    SubmitResult,
)
from airflow.providers.common.ai.exceptions import LLMBatchLimitExceededError, LLMBatchModelMismatchError
from airflow.sdk import Connection
from google.genai import errors as genai_errors

from airflow_gemini_batch.common_ai.request_lines import iter_request_lines
from airflow_gemini_batch.common_ai.result_items import iter_result_items
from airflow_gemini_batch.hooks import job_status
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.inputs.requests import DEFAULT_MAX_REQUEST_BYTES
from airflow_gemini_batch.submit.submission import CreateRetry, create_once, upload_with_retry

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.providers.common.ai.batch.base import BatchRequest, RawResultItem
    from airflow.providers.common.ai.batch.output_schema import OutputSpec

    from airflow_gemini_batch.hooks.job_status import JobStatus

log = logging.getLogger(__name__)

DISPLAY_NAME_PREFIX = "llm-batch-"
#: A job created this long before the intent record still counts as this attempt's (worker vs service clock).
CLOCK_SKEW = timedelta(minutes=5)

_STATES: dict[str, BatchStatus] = {
    job_status.FAILED: "failed",
    job_status.EXPIRED: "expired",
    job_status.CANCELLED: "cancelled",
}


def display_name(key16: str, input_fingerprint: str) -> str:
    """``llm-batch-<key16>-<fingerprint16>``: this task instance's batch for exactly this input."""
    return f"{DISPLAY_NAME_PREFIX}{key16}-{input_fingerprint[:16]}"


def key16_of(job: JobStatus) -> str:
    name = job.display_name or ""
    if not name.startswith(DISPLAY_NAME_PREFIX):
        raise ValueError(
            f"Batch {job.name} ({name!r}) was not submitted by @task.llm_batch's Gemini adapter."
        )
    return name.removeprefix(DISPLAY_NAME_PREFIX).split("-", 1)[0]


def batch_state(job: JobStatus) -> BatchState:
    """One read of a Gemini job in common-ai's vocabulary (see the module docstring)."""
    terminal = _STATES.get(job.state)
    if terminal is None:
        finished = (
            job.state in (job_status.SUCCEEDED, "PARTIALLY_SUCCEEDED") and job.responses_file is not None
        )
        status: BatchStatus = "completed" if finished else "in_progress"
    else:
        status = terminal
    counts: dict[str, int] | None = None
    if job.request_count:
        unanswered = job.request_count
        if job.responses_file is not None:
            unanswered = max(job.request_count - job.succeeded_count - job.failed_count, 0)
        counts = {
            "succeeded": job.succeeded_count,
            "errored": job.failed_count,
            "expired": unanswered if status == "expired" else 0,
            "cancelled": unanswered if status == "cancelled" else 0,
        }
    message = None
    if status != "in_progress" and job.error:
        detail = str(job.error.get("message") or job.error).rstrip(".")
        message = f"Gemini batch {job.name} ended {job.state}: {detail}."
    return BatchState(status=status, counts=counts, error_message=message)


class GeminiBatchNotFoundError(LookupError):
    """The service no longer knows a recorded job; ``status_code`` is what common-ai checks to resubmit."""

    status_code = 404


class _CredentialsHook(GeminiBatchHook):
    """Our hook over the credentials common-ai's dispatcher hands over, instead of a connection id."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(gemini_conn_id=connection.conn_id)
        self._connection = connection

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        return self._connection


class GeminiBatchAdapter(BatchAdapter):
    """Gemini Batch Mode (Developer API) for ``@task.llm_batch``, selected by a ``google:<model>`` model id.

    ``google`` is pydantic-ai's prefix for the Gemini API, so one ``pydanticai`` connection and one model id
    serve ``@task.llm`` and ``@task.llm_batch``; a ``gemini_batch`` connection works too.

    :param api_key: the connection's password.
    :param base_url: the connection's host (the emulator's URL in tests), port included.
    :param client: a ready :class:`GeminiBatchHook` to use instead (tests, a custom retry policy).
    """

    name: ClassVar[str] = "google"
    conn_types: ClassVar[frozenset[str]] = frozenset({"gemini_batch", "pydanticai"})
    #: Ours, not Gemini's: common-ai's merge keeps a set of every index; beyond this, shard with our operators.
    max_requests: ClassVar[int] = 100_000
    #: Gemini's input file limit.
    max_payload_bytes: ClassVar[int] = 2 * 1024**3
    allows_per_request_model: ClassVar[bool] = False

    def __init__(
        self, *, api_key: str | None = None, base_url: str | None = None, client: Any | None = None
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, client=None)
        self._owns_hook = not isinstance(client, GeminiBatchHook)
        if isinstance(client, GeminiBatchHook):
            self._hook: GeminiBatchHook = client
        else:
            if not api_key:
                raise ValueError(
                    "The llm_conn_id connection has no API key: put the Gemini API key in its password field."
                )
            conn = Connection(
                conn_id="llm_batch", conn_type="gemini_batch", host=base_url or None, password=api_key
            )
            self._hook = _CredentialsHook(conn)
        self.create_retry = CreateRetry()

    # ---- submit -------------------------------------------------------------------------------------------

    @staticmethod
    def _schema(spec: OutputSpec) -> dict[str, Any] | None:
        return spec.json_schema if spec.is_structured else None

    def build_output_directive(self, spec: OutputSpec) -> dict[str, Any]:
        if not spec.is_structured:
            return {}
        return {"responseMimeType": "application/json", "responseJsonSchema": spec.json_schema}

    def validate_requests(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        output_spec: OutputSpec,
        idempotency_key: str,
        system_prompt: str = "",
        max_tokens: int = 1024,
        request_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.check_custom_id_length(idempotency_key, len(requests))
        if len(requests) > self.max_requests:
            raise LLMBatchLimitExceededError(
                f"The Gemini adapter accepts at most {self.max_requests} requests per batch; got {len(requests)}. "
                "Split the input with .expand(), or use GeminiBatchSubmitOperator, which shards a table into "
                "as many jobs as it needs."
            )
        for index, request in enumerate(requests):
            if (
                self.resolve_request_model(
                    request.get("model"), default_bare_model=model, request_index=index
                )
                != model
            ):
                raise LLMBatchModelMismatchError(
                    f"Request {index} sets model={request.get('model')!r}: a Gemini batch job runs one model; "
                    f"every request must use the batch's {model!r}."
                )
        total = 0
        lines = iter_request_lines(
            requests,
            key16=idempotency_key,
            system_prompt=system_prompt,
            max_tokens=max_tokens,
            request_params=request_params,
            response_schema=self._schema(output_spec),
        )
        for index, line in enumerate(lines):
            if len(line) > DEFAULT_MAX_REQUEST_BYTES:
                raise LLMBatchLimitExceededError(
                    f"Request {index} is {len(line):,} bytes as a Gemini request line; the limit is "
                    f"{DEFAULT_MAX_REQUEST_BYTES:,}."
                )
            total += len(line)
            if total > self.max_payload_bytes:
                raise LLMBatchLimitExceededError(
                    f"The batch reached {total:,} bytes at request {index + 1} of {len(requests)}; a Gemini input "
                    f"file holds at most {self.max_payload_bytes:,}. Split the input with .expand()."
                )

    def submit(
        self,
        requests: list[BatchRequest],
        *,
        model: str,
        idempotency_key: str,
        input_fingerprint: str,
        output_spec: OutputSpec,
        system_prompt: str = "",
        max_tokens: int = 1024,
        request_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SubmitResult:
        name = display_name(idempotency_key, input_fingerprint)
        with tempfile.TemporaryDirectory(prefix="gemini-llm-batch-") as work:
            path = Path(work) / f"{idempotency_key}.jsonl"
            with path.open("wb") as fh:
                fh.writelines(
                    iter_request_lines(
                        requests,
                        key16=idempotency_key,
                        system_prompt=system_prompt,
                        max_tokens=max_tokens,
                        request_params=request_params,
                        response_schema=self._schema(output_spec),
                    )
                )
            file_name = upload_with_retry(self._hook, path, name, self.create_retry)
        job = create_once(
            self._hook,
            display_name=name,
            model=model,
            embeddings=False,
            file_name=file_name,
            inline_requests=None,
            retry=self.create_retry,
        )
        log.info("Created Gemini batch %s (%s, %d requests)", job.name, name, len(requests))
        return SubmitResult(batch_id=job.name, provider_input_ref=file_name)

    def find_orphaned_batch(
        self, idempotency_key: str, input_fingerprint: str, not_before: str
    ) -> str | None:
        """The newest job named for this key and fingerprint, if it was created for this intent.

        ``batches.list`` may show a new job late, so a miss within the create-settle window after the intent
        is looked up once more when that window has passed.
        """
        name = display_name(idempotency_key, input_fingerprint)
        job = self._hook.find_job_by_display_name(name)
        intent_at = datetime.fromisoformat(not_before) if not_before else None
        if job is None and intent_at is not None:
            wait = (
                self.create_retry.settle_seconds
                - (datetime.now(intent_at.tzinfo) - intent_at).total_seconds()
            )
            if wait > 0:
                time.sleep(wait)
                job = self._hook.find_job_by_display_name(name)
        if job is None:
            return None
        created = datetime.fromisoformat(job.create_time) if job.create_time else None
        if intent_at is not None and created is not None and created < intent_at - CLOCK_SKEW:
            log.info("Job %s (%s) predates this intent; not re-attaching to it", job.name, name)
            return None
        return job.name

    # ---- wait ---------------------------------------------------------------------------------------------

    def get_batch(self, batch_id: str) -> BatchState:
        try:
            job = self._hook.get_job(batch_id)
        except genai_errors.ClientError as e:
            if e.code == 404:
                raise GeminiBatchNotFoundError(f"Gemini batch {batch_id} was not found.") from e
            raise
        return batch_state(job)

    def cancel_batch(self, batch_id: str) -> None:
        self._hook.cancel_job(batch_id)

    # ---- results ------------------------------------------------------------------------------------------

    def iter_results(self, batch_id: str) -> Iterator[RawResultItem]:
        """Download the responses file now (so a bad batch id raises here), then stream its items."""
        job = self._hook.get_job(batch_id)
        key16 = key16_of(job)
        if job.responses_file is None:
            if job.has_inline_responses:
                raise ValueError(f"Batch {batch_id} has inline responses; this adapter submits files only.")
            return iter(())
        work = Path(tempfile.mkdtemp(prefix="gemini-llm-batch-"))
        try:
            path = self._hook.download_file(job.responses_file, work / "responses.jsonl")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._stream(path, work, key16=key16, job_name=job.name)

    @staticmethod
    def _stream(path: Path, work: Path, *, key16: str, job_name: str) -> Iterator[RawResultItem]:
        try:
            yield from iter_result_items(path, key16=key16, job_name=job_name)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def extract_output(self, raw: RawResultItem, spec: OutputSpec) -> ExtractedOutput:
        if raw.raw is None:
            return ExtractedOutput(kind="absent")
        return ExtractedOutput(kind="json_text" if spec.is_structured else "text", text=raw.raw)

    def close(self) -> None:
        if self._owns_hook:
            self._hook.get_conn().close()


class GeminiPrefixBatchAdapter(GeminiBatchAdapter):
    """The same adapter under the ``gemini:<model>`` prefix."""

    name: ClassVar[str] = "gemini"
