"""``EmulatorControl``: a tiny synchronous client for the ``/_emulator`` control API.

Each method is one HTTP call; a non-200 reply raises ``httpx.HTTPStatusError`` so a typo in a test (an unknown
endpoint name, a bad final state) fails loudly instead of being silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from types import TracebackType

#: A wait for held replies gives up after this long: far beyond any honest delay, even on a busy machine.
REPLY_HOLD_WAIT_SECONDS = 60.0


class EmulatorControl:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        with httpx.Client(base_url=self.base_url, timeout=timeout or self._timeout) as client:
            response = client.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Forget files, jobs, faults, behaviours and call counts (persisted ones too); config to defaults."""
        self._call("POST", "reset")

    def configure(self, **kw: float) -> dict[str, float]:
        """Any of pending_seconds, running_seconds, output_delay_seconds, reply_delay_seconds,
        list_lag_seconds (``batches.list`` leaves out jobs younger than that), max_concurrent_jobs,
        max_enqueued_tokens (the quotas; 0 = unlimited)."""
        return self._call("POST", "config", kw)

    def config(self) -> dict[str, float]:
        return self._call("GET", "config")

    def inject_fault(
        self,
        endpoint: str,
        status: int | None = None,
        count: int = 1,
        reset_after_bytes: int | None = None,
        after: bool = False,
    ) -> dict[str, Any]:
        """Answer the next ``count`` calls of ``endpoint`` with ``status`` (or cut a download after
        ``reset_after_bytes``); with ``after``, each call takes effect first and the error is its reply."""
        body: dict[str, Any] = {"endpoint": endpoint, "count": count, "after": after}
        if status is not None:
            body["status"] = status
        if reset_after_bytes is not None:
            body["reset_after_bytes"] = reset_after_bytes
        return self._call("POST", "faults", body)["fault"]

    def set_job_behaviour(self, match: str = "*", **kw: Any) -> dict[str, Any]:
        """Shape jobs created from now on whose display name contains ``match`` (``"*"``: all).

        kw: ``final_state``, ``stay_pending``, ``corrupt_output``, ``fail_keys`` and ``fail_fraction`` (rows
        answered with an error of ``fail_status``, default 500; the fraction picks keys by hash,
        ``faults.fails_by_fraction``), ``count`` (jobs this rule
        applies to; None = all), ``report_state`` (any string: sent verbatim as ``metadata.state``) with
        ``report_state_reads`` (how many ``batches.get`` reads of each job report it, default 3, None = all;
        ``batches.list`` shows it meanwhile too). Only ``metadata.state`` is changed; ``done``, output and
        errors follow the normal lifecycle, which goes on underneath. ``key_column`` (Vertex jobs): the
        pass-through column (BigQuery) or ``request.labels`` entry (JSONL) holding a row's key for
        ``fail_keys`` / ``fail_fraction`` (default: the first pass-through column / label ``key``).
        """
        return self._call("POST", "job_behaviour", {"match": match, **kw})["job_behaviour"]

    def hold_state(
        self,
        state: str = "PENDING",
        reads: int | None = None,
        match: str | None = None,
        count: int | None = None,
        age_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """Hold jobs created from now on in ``state`` until ``reads`` ``batches.get`` reads have reported it
        (None: until :meth:`release`); then their lifecycle goes on as configured. ``state``: PENDING,
        RUNNING, or SUCCEEDED (done, its output not visible yet, as the real service may report it).

        ``match``: a display-name prefix (None: every job); ``count``: hold only the next ``count`` jobs;
        ``age_seconds``: date their ``createTime`` that far back (a job PENDING for hours, without a clock).
        E.g. ``hold_state("PENDING", reads=1)``: a deferrable sensor's first poke sees PENDING and defers,
        the trigger's first poll sees the job go on; no wall-clock margin involved.
        """
        body = {"state": state, "reads": reads, "match": match, "count": count, "age_seconds": age_seconds}
        return self._call("POST", "hold", body)["hold"]

    def release(self, job_name: str | None = None) -> list[str]:
        """End the hold of ``job_name`` now (None: of every held job, and forget the hold rules)."""
        return self._call("POST", "release", {} if job_name is None else {"name": job_name})["released"]

    def hold_replies(self, method: str, path: str, count: int | None = None) -> ReplyHold:
        """Hold the replies to ``method`` requests (``"*"``: any) whose path matches the glob ``path`` until
        released: a hanging API without a clock. ``path`` leaves out the API version, so a job's name is
        the path of its ``batches.get`` (``hold_replies("GET", job_name)``); ``count``: only the next N.

        The request is handled meanwhile (a held get has read the job); only its reply waits. The returned
        :class:`ReplyHold` waits until requests are held and releases them, also as a context manager; a
        reset releases every hold.
        """
        view = self._call("POST", "reply_holds", {"method": method, "path": path, "count": count})
        return ReplyHold(self, view["reply_hold"]["id"])

    def reply_holds(self) -> list[dict[str, Any]]:
        """Every reply hold since the last reset: ``id``, ``method``, ``path``, ``count``, ``held`` (requests
        held so far), ``waiting`` (held now) and ``released``."""
        return self._call("GET", "reply_holds")["reply_holds"]

    def release_replies(self, hold_id: int | None = None) -> list[dict[str, Any]]:
        """Let the replies of hold ``hold_id`` (None: of every hold) go and retire it; the views, with
        ``let_go`` (how many replies this released)."""
        body = {} if hold_id is None else {"id": hold_id}
        return self._call("POST", "reply_holds/release", body)["released"]

    def job(self, job_name: str) -> dict[str, Any]:
        """The control view of one job (as in :meth:`jobs`)."""
        found = [job for job in self.jobs() if job["name"] == job_name]
        if not found:
            raise LookupError(f"the emulator has no job {job_name!r}")
        return found[0]

    def jobs(self) -> list[dict[str, Any]]:
        """Every job since the last reset: state, behaviour, ``hold`` (or None) and ``reads`` among others."""
        return self._call("GET", "jobs")["jobs"]

    def set_quota(
        self, max_concurrent_jobs: int | None = None, max_enqueued_tokens: int | None = None
    ) -> dict[str, float]:
        """Enforce the batch quotas on create (429 RESOURCE_EXHAUSTED past them); 0 turns one off."""
        body = {"max_concurrent_jobs": max_concurrent_jobs, "max_enqueued_tokens": max_enqueued_tokens}
        return self._call("POST", "config", {k: v for k, v in body.items() if v is not None})

    def quota(self) -> dict[str, Any]:
        """Limits, jobs not finished now, high-water marks since the reset, and rejected creates."""
        return self._call("GET", "quota")

    def caches(self) -> list[dict[str, Any]]:
        """Every cached content since the last reset: its resource plus ``live``, ``deleted`` and ``hits``."""
        return self._call("GET", "caches")["caches"]

    def job_requests(self, job_name: str) -> list[dict[str, Any]]:
        """The request lines (``{"key", "request"}``, or inline requests) a job was created with, as stored."""
        return self._call("GET", f"jobs/{job_name.removeprefix('batches/')}/requests")["requests"]

    def calls(self) -> dict[str, int]:
        return self._call("GET", "calls")

    def request_counts(self) -> dict[str, int]:
        """How many times each key's request was processed over all jobs since the last reset (keys as text)."""
        return self._call("GET", "requests")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")


class ReplyHold:
    """One reply hold in the emulator (see :meth:`EmulatorControl.hold_replies`); leaving a ``with`` block
    releases it, so a failing test never leaves a client waiting on it."""

    def __init__(self, control: EmulatorControl, hold_id: int) -> None:
        self.control = control
        self.id = hold_id

    def wait(self, held: int = 1, timeout: float = REPLY_HOLD_WAIT_SECONDS) -> dict[str, Any]:
        """Return the hold's view once it has held ``held`` requests in all: the server answers when the
        request arrives (no polling). ``httpx.HTTPStatusError`` after ``timeout`` (408) or when the hold was
        released short of ``held`` (412), its message saying how many it held."""
        body = {"id": self.id, "held": held, "timeout_seconds": timeout}
        return self.control._call("POST", "reply_holds/wait", body, timeout=timeout + 30.0)["reply_hold"]

    def view(self) -> dict[str, Any]:
        found = [hold for hold in self.control.reply_holds() if hold["id"] == self.id]
        if not found:
            raise LookupError(f"the emulator has no reply hold {self.id} (a reset forgets them)")
        return found[0]

    def release(self) -> dict[str, Any]:
        """Let the held replies go; later matching requests are answered at once. The view, with ``let_go``."""
        return self.control.release_replies(self.id)[0]

    def __enter__(self) -> ReplyHold:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
