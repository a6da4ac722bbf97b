"""The emulator's state: one :class:`Emulator` per app, holding files, jobs, cached contents, faults and quotas.

Why a module of its own: the route modules take an ``Emulator`` in every handler, and :mod:`.app` imports
them to build its route table; with the state class here neither imports the other's module (no circle).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow_gemini_batch.emulator.caches import CacheStore
from airflow_gemini_batch.emulator.common import ApiError
from airflow_gemini_batch.emulator.engine import JobEngine
from airflow_gemini_batch.emulator.faults import Knobs
from airflow_gemini_batch.emulator.persist import StateFile
from airflow_gemini_batch.emulator.quota import QuotaLimits
from airflow_gemini_batch.emulator.reply_holds import ReplyHolds
from airflow_gemini_batch.emulator.store import FileStore, advance_seq
from airflow_gemini_batch.emulator.vertex_jobs import KIND as VERTEX_KIND
from airflow_gemini_batch.emulator.vertex_jobs import VertexJob
from airflow_gemini_batch.emulator.vertex_worker import VertexWorker

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.requests import Request


class Emulator:
    """All mutable emulator state; one instance per app.

    With ``persist`` the metadata of files, jobs and cached contents is saved in ``<data_dir>/state.json`` on every change and
    loaded here, so a new process on the same data dir carries on where the last one stopped (see ``persist``).
    """

    def __init__(
        self,
        data_dir: Path,
        pending_seconds: float = 0.0,
        running_seconds: float = 0.0,
        persist: bool = False,
        max_concurrent_jobs: int = 0,
        max_enqueued_tokens: int = 0,
        bigquery_endpoint: str | None = None,
        storage_endpoint: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.files = FileStore(data_dir)
        self.caches = CacheStore()
        self.engine = JobEngine(self.files, self.caches)
        #: Vertex batch prediction jobs live in the same engine (kind ``vertex``), processed by this worker
        #: against the BigQuery / GCS emulators at these endpoints (None: that side is unavailable).
        self.vertex = VertexWorker(self.engine, bigquery_endpoint, storage_endpoint)
        self.engine.register_kind(VERTEX_KIND, VertexJob, self.vertex.process)
        self.knobs = Knobs(
            pending_seconds=pending_seconds,
            running_seconds=running_seconds,
            max_concurrent_jobs=max_concurrent_jobs,
            max_enqueued_tokens=max_enqueued_tokens,
        )
        self.reply_holds = ReplyHolds()
        self.state: StateFile | None = None
        if persist:
            self.state = StateFile(
                data_dir,
                lambda: {
                    "files": self.files.snapshot(),
                    "jobs": self.engine.snapshot(),
                    "caches": self.caches.snapshot(),
                },
            )
            loaded = self.state.load()
            top = self.files.restore(loaded["files"])
            # Why seqs first: restored workers may finish (and create output files) at once.
            top = max(top, self.caches.restore(loaded["caches"]))
            advance_seq(max([top, *(int(job.get("seq") or 0) for job in loaded["jobs"])]))
            self.engine.restore(loaded["jobs"])
            self.files.on_change = self.engine.on_change = self.caches.on_change = self.state.save
            self.state.save()

    def reset(self) -> None:
        self.reply_holds.reset()
        self.engine.reset()
        self.files.reset()
        self.caches.reset()
        self.knobs.reset()
        if self.state is not None:
            self.state.clear()

    def shutdown(self) -> None:
        """Process exit: let held replies go, stop job workers, keep (and stop writing) the persisted state."""
        self.reply_holds.reset()
        if self.state is not None:
            self.state.close()
        self.engine.shutdown()

    def quota_limits(self) -> QuotaLimits:
        """The batch quotas now in force (config ``max_concurrent_jobs`` / ``max_enqueued_tokens``; 0: off)."""
        return QuotaLimits(
            int(self.knobs.get("max_concurrent_jobs")), int(self.knobs.get("max_enqueued_tokens"))
        )

    @staticmethod
    def version_of(request: Request) -> str:
        match = re.search(r"/(v\d+[a-z0-9]*)/", request.url.path + "/")
        return match.group(1) if match else "v1beta"

    @staticmethod
    def page_size(request: Request, default: int) -> int:
        raw = request.query_params.get("pageSize")
        try:
            size = int(raw) if raw else default
        except ValueError:
            raise ApiError(400, f"Invalid pageSize: {raw!r}.") from None
        return min(max(size, 1) if size > 0 else default, 100)
