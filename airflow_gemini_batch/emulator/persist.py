"""Persistence of the emulator's metadata (files, batch jobs and cached contents) in ``<data_dir>/state.json``.

Why: ``make demo`` starts a fresh emulator process on the same data dir each time, and the provider re-attaches
to an earlier run's jobs by display name through ``batches.list`` instead of paying twice. Against the real
service those jobs still exist, so against the emulator they must survive a restart too.

Invariants:

* The state file is a full snapshot (``{"version": 1, "files": [...], "jobs": [...], "caches": [...]}``),
  rewritten after every metadata change (upload finalized, output generated, job created / finished /
  cancelled / deleted, file deleted, cache created / updated / deleted, reset) - never after per-line progress, which is recomputed on restart.
* Writes are atomic: a temp file in the same directory, then ``os.replace``; a crash (even ``kill -9``) leaves
  either the old or the new snapshot, never a torn one. Snapshots are taken and written under one lock, so
  the newest write always holds the newest state.
* Bulky, write-once job parts (inline requests, inline results) go to ``<data_dir>/blobs/<job>.<part>.json``,
  written once each, and the snapshot holds ``{"$blob": name}`` in their place: the snapshot stays small, so
  rewriting it on every change stays cheap however big inline batches are.
* File bytes are not in the snapshot: they already live under ``<data_dir>/files/``; a record whose bytes
  are gone is dropped at load time. Unfinished uploads (``*.upload``) and outputs (``*.part``) are discarded.
* What is *not* persisted: upload sessions, timing config, injected faults, behaviour rules, call counts
  (they are per-run test knobs; the CLI flags set the config again on each start).
* An unreadable state file is moved aside to ``state.json.corrupt`` and the emulator starts empty (loudly).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
STATE_VERSION = 1
BLOB_PARTS = ("inline_requests", "inline_output")


class StateFile:
    """Atomic JSON snapshot of ``{"files": [...], "jobs": [...]}`` in a data dir."""

    def __init__(self, data_dir: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = data_dir / STATE_FILE
        self.blobs_dir = data_dir / "blobs"
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._written: set[str] = set()
        self._closed = False

    def load(self) -> dict[str, Any]:
        """The last snapshot (``files``, ``jobs`` and ``caches`` lists), empty when there is none or it is
        unreadable (a snapshot from before caches has none)."""
        empty: dict[str, Any] = {"files": [], "jobs": [], "caches": []}
        if not self.path.exists():
            return empty
        try:
            state = orjson.loads(self.path.read_bytes())
            version = state.get("version") if isinstance(state, dict) else None
            if version != STATE_VERSION:
                raise ValueError(f"not a version-{STATE_VERSION} state snapshot (version {version!r})")
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(STATE_FILE + ".corrupt")
            log.warning("emulator state file %s unreadable (%s); moved to %s", self.path, exc, aside)
            os.replace(self.path, aside)
            return empty
        jobs = []
        for job in state.get("jobs") or []:
            try:
                jobs.append(self._with_blobs(job))
            except (OSError, ValueError) as exc:
                log.warning(
                    "emulator job %s dropped: its stored parts are unreadable (%s)", job.get("id"), exc
                )
        return {
            "files": list(state.get("files") or []),
            "jobs": jobs,
            "caches": list(state.get("caches") or []),
        }

    def save(self) -> None:
        """Snapshot the current state and replace the state file with it atomically."""
        with self._lock:
            if self._closed:
                return
            state = self._snapshot()
            state["jobs"] = [self._without_blobs(job) for job in state.get("jobs") or []]
            _write_atomic(self.path, orjson.dumps({"version": STATE_VERSION, **state}))

    def close(self) -> None:
        """No more writes: a worker finishing after shutdown must not overwrite what a successor wrote."""
        with self._lock:
            self._closed = True

    def clear(self) -> None:
        """Forget everything (``/_emulator/reset``): drop the blobs, then persist the (now empty) state."""
        with self._lock:
            shutil.rmtree(self.blobs_dir, ignore_errors=True)
            self._written.clear()
        self.save()

    def _without_blobs(self, job: dict[str, Any]) -> dict[str, Any]:
        job = dict(job)
        for part in BLOB_PARTS:
            if job.get(part) is None:
                continue
            name = f"{job['id']}.{part}.json"
            if name not in self._written:  # the parts never change once set: write each once
                self.blobs_dir.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.blobs_dir / name, orjson.dumps(job[part]))
                self._written.add(name)
            job[part] = {"$blob": name}
        return job

    def _with_blobs(self, job: dict[str, Any]) -> dict[str, Any]:
        job = dict(job)
        for part in BLOB_PARTS:
            ref = job.get(part)
            if isinstance(ref, dict) and "$blob" in ref:
                name = str(ref["$blob"])
                job[part] = orjson.loads((self.blobs_dir / name).read_bytes())
                self._written.add(name)
        return job


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        # Why: a failed write must not leave temp files behind, nor hide the error.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
