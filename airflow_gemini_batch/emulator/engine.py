"""Job engine: creates jobs, schedules their workers, and streams input JSONL to output JSONL.

Invariants:

* Processing is streaming: the input file is read one line at a time and each output line is written as soon
  as it is computed, so memory does not grow with the input size (a 1 GB input needs no 1 GB buffer).
* Output lines are in input order: ``{"key": k, "response": {...}}`` or
  ``{"key": k, "error": {code, message}}``.
  Inline results echo each request's ``metadata`` unchanged.
* A worker starts when the job leaves PENDING (a timer, plus a lazy check on every read) and only for jobs
  that will SUCCEED; it paces itself over ``running_seconds`` so ``pendingRequestCount`` visibly decreases.
  A job held in PENDING gets no timer; its release (``read`` using up the hold, or ``release``) schedules it.
* The worker stops promptly on cancel / delete / reset (``job.stop``), and then publishes nothing.
* Output corruption (``corrupt_output``) is applied by ``OutputWriter`` only, never to the counts:
  truncate = last line cut mid-JSON (no newline); malformed = first line is not JSON;
  drop_key = first key has no line; unknown_key = one extra line with a key never sent;
  duplicate_key = first line written twice. For inline output: truncate drops the last item, malformed
  leaves the first item with neither ``response`` nor ``error``, the other three behave as for files.
* Every job metadata change (created, finished, cancelled, deleted) calls ``on_change`` afterwards (outside
  the lock), so the persisted snapshot follows. ``restore`` re-adds persisted jobs: a job that was still
  processing when the process stopped gets a fresh worker, which redoes it from the first line on the
  job's original timeline (its ``start_time`` is in the past, so pacing catches up at once).
* ``shutdown`` stops the workers but keeps every job (process exit); ``reset`` forgets them.
* A request naming a ``cachedContent`` is answered only while that cache is live, for the job's model, and
  when the request sets no ``systemInstruction`` / ``tools`` / ``toolConfig`` of its own (the service's
  rules); its ``usageMetadata`` then reports the cache's tokens as ``cachedContentTokenCount`` (included in
  ``promptTokenCount``, as on the service). Otherwise the line is an error, like the service's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import IO, TYPE_CHECKING, Any

import orjson

import airflow_gemini_batch.emulator.responder as responder
from airflow_gemini_batch.emulator.common import ApiError, new_id, pick
from airflow_gemini_batch.emulator.faults import fails_by_fraction, row_failure
from airflow_gemini_batch.emulator.jobs import Job
from airflow_gemini_batch.emulator.quota import QuotaBook, QuotaLimits
from airflow_gemini_batch.emulator.store import FileStore, paginate

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from airflow_gemini_batch.emulator.caches import CacheStore

log = logging.getLogger(__name__)
UNKNOWN_KEY = "__emulator_unknown_key__"
_NOT_WITH_CACHE = (
    ("systemInstruction", "system_instruction"),
    ("tools", "tools"),
    ("toolConfig", "tool_config"),
)


def count_lines(path: Path) -> int:
    """Non-blank lines, streaming."""
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def iter_file_requests(path: Path) -> Iterator[tuple[Any, dict[str, Any] | None, str | None]]:
    """``(key, request, parse_error)`` per non-blank input line, streaming."""
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield None, None, f"Invalid JSON in input line: {exc}"
                continue
            if not isinstance(line, dict):
                yield None, None, "Input line is not a JSON object."
                continue
            request = line.get("request")
            if not isinstance(request, dict):
                request = {k: v for k, v in line.items() if k not in ("key", "metadata")}
            yield line.get("key"), request, None


class OutputWriter:
    """Writes result items (file lines or inline items), applying the job's corruption mode."""

    def __init__(self, corruption: str | None, fh: IO[bytes] | None) -> None:
        self.corruption = corruption
        self.fh = fh
        self.items: list[dict[str, Any]] = []
        self._first = True
        self._held: bytes | None = None

    def add(self, item: dict[str, Any]) -> None:
        first, self._first = self._first, False
        if self.fh is None:
            self._add_inline(item, first)
            return
        data = orjson.dumps(item)
        if first and self.corruption == "drop_key":
            return
        if first and self.corruption == "malformed":
            data = data[: max(len(data) // 2, 1)] + b" <<not json>>"
        if first and self.corruption == "duplicate_key":
            self._emit(data)
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        assert self.fh is not None
        if self.corruption == "truncate":
            if self._held is not None:
                self.fh.write(self._held + b"\n")
            self._held = data
        else:
            self.fh.write(data + b"\n")

    def _add_inline(self, item: dict[str, Any], first: bool) -> None:
        if first and self.corruption == "drop_key":
            return
        if first and self.corruption == "malformed":
            item = {k: v for k, v in item.items() if k not in ("response", "error")}
        if first and self.corruption == "duplicate_key":
            self.items.append(item)
        self.items.append(item)

    def close(self, unknown_item: dict[str, Any]) -> None:
        if self.corruption == "unknown_key":
            if self.fh is None:
                self.items.append(unknown_item)
            else:
                self._emit(orjson.dumps(unknown_item))
        if self.fh is not None and self._held is not None:
            self.fh.write(self._held[: max(len(self._held) // 2, 1)])
        if self.fh is None and self.corruption == "truncate" and self.items:
            self.items.pop()


class JobEngine:
    def __init__(self, files: FileStore, caches: CacheStore | None = None) -> None:
        self.files = files
        self.caches = caches
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self.on_change: Callable[[], None] = lambda: None
        self._workers: list[threading.Thread] = []
        self.quota = QuotaBook()
        #: How many times each key's request was processed, over all jobs since the last reset (a test's
        #: proof that an answered row was never sent again). Keys as text.
        self.requests_by_key: Counter[str] = Counter()
        #: Job kinds processed elsewhere (kind → job class, worker body), e.g. Vertex batch prediction.
        self._kinds: dict[str, tuple[type[Job], Callable[[Job], None]]] = {}

    def register_kind(self, kind: str, job_type: type[Job], process: Callable[[Job], None]) -> None:
        """Jobs of ``kind`` are restored as ``job_type`` and processed by ``process`` (on the worker thread).

        ``process`` reports through :meth:`count_row`, :meth:`pace` and :meth:`finish`, and returns early
        once ``job.stop`` is set; this engine keeps the lifecycle (timers, holds, cancel, quota, persistence).
        """
        self._kinds[kind] = (job_type, process)

    # ---- creation ----

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        self.on_change()
        self._schedule(job)
        return job

    def check_quota(self, model: str, tokens: int, limits: QuotaLimits) -> None:
        """429 RESOURCE_EXHAUSTED when a new job does not fit the quotas beside the jobs not finished (see
        ``quota``); called, with no await before the ``add``, ahead of anything a create consumes."""
        with self._lock:
            self.quota.check_and_note(list(self._jobs.values()), model, tokens, limits, time.time())

    def quota_view(self, limits: QuotaLimits) -> dict[str, Any]:
        with self._lock:
            return self.quota.view(list(self._jobs.values()), limits, time.time())

    def _schedule(self, job: Job) -> None:
        if job.needs_worker and math.isfinite(job.start_time):  # held in PENDING: release schedules it
            delay = max(job.start_time - time.time(), 0.0)
            if delay <= 0:
                self.ensure_worker(job)
            else:
                timer = threading.Timer(delay, self.ensure_worker, args=(job,))
                timer.daemon = True
                timer.start()

    # ---- persistence ----

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.to_dict() for job in sorted(self._jobs.values(), key=lambda j: j.seq)]

    def restore(self, bodies: list[dict[str, Any]]) -> int:
        """Re-add persisted jobs, restarting unfinished work; returns the max seq."""
        top = 0
        for body in bodies:
            job_type = self._kinds.get(str(body.get("kind")), (Job, None))[0]
            job = job_type.from_dict(body)
            top = max(top, job.seq)
            if job.deleted or job.cancelled_at is not None:
                job.stop.set()  # never work on these again
            elif job.finished_at is None:
                # Interrupted mid-way: its partial output was discarded, so it is redone from the start.
                job.processed = job.succeeded = job.failed = 0
                job.output_file, job.inline_output = None, None
            # Why: a finished or stopped job must never get a worker (reads start one lazily otherwise).
            job.worker_started = job.finished_at is not None or job.stop.is_set()
            with self._lock:
                self._jobs[job.id] = job
            if not job.worker_started:
                self._schedule(job)
        return top

    @staticmethod
    def new_job_id() -> str:
        return new_id(36)

    # ---- queries ----

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.deleted:
            return None
        self._maybe_start(job)
        return job

    def list(
        self,
        page_size: int,
        page_token: str | None,
        lag_seconds: float = 0.0,
        kinds: tuple[str, ...] = ("generate", "embed"),
        where: Callable[[Job], bool] = lambda job: True,
    ) -> tuple[list[Job], str | None]:
        """Newest first, of ``kinds`` (an API's own jobs) and ``where``; ``lag_seconds`` hides jobs younger
        than that (an eventually consistent list)."""
        visible_before = time.time() - lag_seconds
        with self._lock:
            jobs = sorted(
                (
                    j
                    for j in self._jobs.values()
                    if not j.deleted and j.create_time <= visible_before and j.kind in kinds and where(j)
                ),
                key=lambda j: j.seq,
                reverse=True,
            )
        for job in jobs:
            self._maybe_start(job)
        return paginate(jobs, page_size, page_token)

    def all_jobs(self) -> builtins.list[Job]:  # builtins: ``list`` is a method of this class
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.seq)

    def _maybe_start(self, job: Job) -> None:
        if job.needs_worker and not job.worker_started and time.time() >= job.start_time:
            self.ensure_worker(job)

    # ---- mutations ----

    def read(self, job: Job, now: float) -> None:
        """Count one ``batches.get`` read of ``job`` (after its reply was built at ``now``)."""
        with self._lock:
            counted = job.count_read(now)
            used_up = counted and job.hold_reads == 0
        if used_up:
            self._release(job, time.time())
        elif counted:
            self.on_change()  # the reads left are persisted: a restarted emulator holds the job as long

    def release(self, name: str | None = None) -> builtins.list[str]:
        """Release the held job called ``name`` (every held job when None); returns the names released."""
        now = time.time()
        return [job.name for job in self.all_jobs() if name in (None, job.name) and self._release(job, now)]

    def _release(self, job: Job, now: float) -> bool:
        with self._lock:
            released = job.release(now)
        if released:
            self.on_change()
            self._schedule(job)
        return released

    def cancel(self, job: Job) -> None:
        now = time.time()
        with self._lock:
            job.cancel_requested = True
            state, _, _ = job.state_at(now)
            if state in ("PENDING", "RUNNING"):
                job.cancelled_at = now
                job.stop.set()
        self.on_change()

    def delete(self, job: Job) -> None:
        with self._lock:
            job.deleted = True
        job.stop.set()
        self.on_change()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker and wait for it, keeping the jobs (their persisted state says where to resume).

        Why wait: a stopping worker deletes its partial output; a successor on the same data dir must not
        have that file deleted from under it.
        """
        with self._lock:
            jobs = list(self._jobs.values())
            workers = list(self._workers)
        for job in jobs:
            job.stop.set()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0.0))

    def reset(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self.quota = QuotaBook()
            self.requests_by_key.clear()
        for job in jobs:
            job.stop.set()

    # ---- worker ----

    def ensure_worker(self, job: Job) -> None:
        with self._lock:
            if job.worker_started or job.stop.is_set():
                return
            job.worker_started = True
        thread = threading.Thread(target=self._run, args=(job,), name=f"emulator-job-{job.id}", daemon=True)
        with self._lock:  # started under the lock, so shutdown() never sees (and joins) an unstarted thread
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
            thread.start()

    def _run(self, job: Job) -> None:
        process = self._kinds.get(job.kind, (Job, self._process))[1]
        try:
            process(job)
        except Exception:
            if not job.stop.is_set():
                log.exception("emulator job %s failed while processing", job.name)

    def stored_requests(self, job: Job) -> builtins.list[Any]:
        """The job's input as stored: each file line parsed (``{"key", "request"}``), or the inline items."""
        if job.inline_requests is not None:
            return list(job.inline_requests)
        record = self.files.find(str(job.input_file).removeprefix("files/"))
        if record is None:
            return []
        with record.path.open("rb") as fh:
            return [orjson.loads(line) for line in fh if line.strip()]

    def _requests(self, job: Job) -> Iterator[tuple[Any, dict[str, Any] | None, str | None, Any]]:
        """``(key, request, parse_error, metadata)``."""
        if job.inline_requests is not None:
            for item in job.inline_requests:
                metadata = item.get("metadata")
                request = item.get("request") if isinstance(item.get("request"), dict) else item
                key = metadata.get("key") if isinstance(metadata, dict) else None
                yield key, request, None, metadata
            return
        assert job.input_file is not None
        record = self.files.find(job.input_file.removeprefix("files/"))
        if record is None:
            raise FileNotFoundError(job.input_file)
        for key, request, error in iter_file_requests(record.path):
            yield key, request, error, None

    def _process(self, job: Job) -> None:
        inline = job.inline_requests is not None
        out_id = f"batch-{job.id}"
        tmp_path = self.files.generated_path(out_id)
        fh = None if inline else tmp_path.open("wb")
        writer = OutputWriter(job.behaviour.corrupt_output, fh)
        fail_keys = set(job.behaviour.fail_keys)
        fail_fraction, failure = job.behaviour.fail_fraction, row_failure(job.behaviour.fail_status)
        total = max(job.request_count, 1)
        try:
            for index, (key, request, parse_error, metadata) in enumerate(self._requests(job)):
                if job.stop.is_set():
                    return
                if parse_error is not None or request is None:
                    kind, body = "error", {"code": 400, "message": parse_error or "Missing request."}
                elif key is not None and (str(key) in fail_keys or fails_by_fraction(key, fail_fraction)):
                    kind, body = "error", dict(failure)
                else:
                    kind, body = self._answer(request, job)
                item: dict[str, Any] = {kind: body}
                if inline:
                    if metadata is not None:
                        item["metadata"] = metadata
                elif key is not None:
                    item = {"key": key, **item}
                writer.add(item)
                self.count_row(job, key, kind == "response")
                self.pace(job, (index + 1) / total)
            unknown_request = {"contents": [{"parts": [{"text": "unknown"}], "role": "user"}]}
            _, unknown_body = responder.answer(unknown_request, job.model, job.kind)
            unknown: dict[str, Any] = {"response": unknown_body}
            unknown = (
                {"metadata": {"key": UNKNOWN_KEY}, **unknown} if inline else {"key": UNKNOWN_KEY, **unknown}
            )
            writer.close(unknown)
        finally:
            if fh is not None:
                fh.close()
            if job.stop.is_set():  # stopped (also mid-loop): a partial output is never kept
                tmp_path.unlink(missing_ok=True)
        if job.stop.is_set():
            return
        if inline:
            job.inline_output = writer.items
        else:
            self.files.register_generated(out_id, tmp_path, "application/jsonl")
            job.output_file = f"files/{out_id}"
        self.finish(job)

    def count_row(self, job: Job, key: Any, succeeded: bool) -> None:
        """One request of ``job`` processed (``key`` None: a request without one)."""
        with self._lock:
            if key is not None:
                self.requests_by_key[str(key)] += 1
            job.processed += 1
            if succeeded:
                job.succeeded += 1
            else:
                job.failed += 1

    def finish(self, job: Job, error_message: str | None = None) -> None:
        """The worker is done (its output published); with ``error_message`` the job ends FAILED with it."""
        with self._lock:
            job.error_message = error_message
            job.finished_at = time.time()
        self.on_change()

    def _answer(self, request: dict[str, Any], job: Job) -> tuple[str, dict[str, Any]]:
        """One request's answer, resolving its ``cachedContent`` (see the module docstring)."""
        name = pick(request, "cachedContent", "cached_content")
        if name is None or self.caches is None or job.kind != "generate":
            return responder.answer(request, job.model, job.kind)
        if any(pick(request, *spellings) for spellings in _NOT_WITH_CACHE):
            message = (
                "CachedContent can not be used with GenerateContent request setting system_instruction, "
                "tools or tool_config. Proposed fix: move those values to CachedContent from GenerateContent "
                "request."
            )
            return "error", {"code": 400, "message": message}
        try:
            cache = self.caches.resolve(str(name), job.model, time.time())
        except ApiError as exc:
            return "error", {"code": exc.code, "message": exc.message}
        kind, body = responder.answer(request, job.model, job.kind)
        usage = body.get("usageMetadata") if kind == "response" else None
        if usage is not None:
            usage["promptTokenCount"] += cache.token_count
            usage["totalTokenCount"] += cache.token_count
            usage["cachedContentTokenCount"] = cache.token_count
        return kind, body

    @staticmethod
    def pace(job: Job, fraction: float) -> None:
        """Spread the work over ``running_seconds`` so progress is observable."""
        if job.running_seconds <= 0:
            return
        delay = job.start_time + job.running_seconds * fraction - time.time()
        if delay > 0.005:
            job.stop.wait(delay)
