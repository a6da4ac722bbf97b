"""Files: metadata in memory (persisted by ``persist.StateFile`` when enabled), bytes on disk under
``<data_dir>/files/``.

Invariants:

* File bytes never live in memory as a whole: uploads are appended to disk chunk by chunk as they arrive
  (the SHA-256 is computed incrementally), downloads are streamed from disk.
* An upload session is identified only by its unguessable ``upload_id`` (chunk requests carry no API key).
* The next chunk must start at the session's current offset (``X-Goog-Upload-Offset``), else 400.
* Listing is newest first; a page token is the sequence number of the last item returned, so items created
  while paging never shift pages, and a non-empty ``nextPageToken`` always comes with a non-empty page.
* All mutations happen under one lock (event-loop handlers and job-worker threads both use the store).
* Every metadata mutation (finalize, generated output, delete, reset) calls ``on_change`` afterwards, outside
  the lock, so the persisted snapshot follows; ``restore`` rebuilds records from a snapshot.
* Sequence numbers (list order, page tokens) are process-wide and never reused: restoring a snapshot
  advances the counter past every restored ``seq``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow_gemini_batch.emulator.common import API_HOST, ApiError, int64, new_id, rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FILE_TTL_SECONDS = 48 * 3600
_seq = itertools.count(1)
_seq_lock = threading.Lock()


def next_seq() -> int:
    with _seq_lock:
        return next(_seq)


def advance_seq(at_least: int) -> None:
    """Make every later ``next_seq()`` greater than ``at_least`` (after restoring persisted items)."""
    global _seq  # one process-wide counter, shared by files and jobs
    with _seq_lock:
        upcoming = next(_seq)
        _seq = itertools.count(max(upcoming, at_least + 1))


@dataclass
class FileRecord:
    id: str
    display_name: str | None
    mime_type: str
    size: int
    sha256_b64: str
    source: str
    path: Path
    create_time: float = field(default_factory=time.time)
    seq: int = field(default_factory=next_seq)

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def resource(self, version: str = "v1beta") -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name}
        if self.display_name:
            body["displayName"] = self.display_name
        body.update(
            {
                "mimeType": self.mime_type,
                "sizeBytes": int64(self.size),
                "createTime": rfc3339(self.create_time),
                "updateTime": rfc3339(self.create_time),
                "expirationTime": rfc3339(self.create_time + FILE_TTL_SECONDS),
                "sha256Hash": self.sha256_b64,
                "uri": f"{API_HOST}/{version}/files/{self.id}",
                "state": "ACTIVE",
                "source": self.source,
            }
        )
        if self.source == "GENERATED":
            body["downloadUri"] = f"{API_HOST}/download/{version}/files/{self.id}:download?alt=media"
        return body

    def to_dict(self) -> dict[str, Any]:
        """Persisted form; the path is stored relative to the files dir (the data dir may move)."""
        return {
            "id": self.id,
            "display_name": self.display_name,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256_b64": self.sha256_b64,
            "source": self.source,
            "path": self.path.name,
            "create_time": self.create_time,
            "seq": self.seq,
        }


@dataclass
class UploadSession:
    upload_id: str
    file_id: str
    display_name: str | None
    mime_type: str
    declared_size: int | None
    path: Path
    handle: BinaryIO
    hasher: Any = field(default_factory=hashlib.sha256)
    offset: int = 0


class FileStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.files_dir = data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: dict[str, FileRecord] = {}
        self._uploads: dict[str, UploadSession] = {}
        self.on_change: Callable[[], None] = lambda: None

    # ---- persistence ----

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [record.to_dict() for record in sorted(self._files.values(), key=lambda r: r.seq)]

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Rebuild records from a snapshot (dropping those whose bytes are gone); returns the max seq."""
        for stale in [*self.files_dir.glob("*.upload"), *self.files_dir.glob("*.part")]:
            stale.unlink(missing_ok=True)  # an interrupted upload or output: never finalized
        top = 0
        with self._lock:
            for raw in records:
                record = FileRecord(**{**raw, "path": self.files_dir / str(raw["path"])})
                if not record.path.is_file():
                    continue
                self._files[record.id] = record
                top = max(top, record.seq)
        return top

    # ---- uploads ----

    def start_upload(
        self, name: str | None, display_name: str | None, mime_type: str, size: int | None
    ) -> UploadSession:
        file_id = (name or "").removeprefix("files/") or new_id(12)
        with self._lock:
            taken = file_id in self._files or any(s.file_id == file_id for s in self._uploads.values())
            if taken:
                raise ApiError(409, f"File files/{file_id} already exists.")
            path = self.files_dir / f"{file_id}.upload"
            session = UploadSession(
                upload_id=new_id(32),
                file_id=file_id,
                display_name=display_name,
                mime_type=mime_type,
                declared_size=size,
                path=path,
                handle=path.open("wb"),
            )
            self._uploads[session.upload_id] = session
        return session

    def session(self, upload_id: str) -> UploadSession:
        with self._lock:
            session = self._uploads.get(upload_id)
        if session is None:
            raise ApiError(404, "Upload session not found (unknown or finished upload_id).")
        return session

    @staticmethod
    def write(session: UploadSession, data: bytes) -> None:
        session.handle.write(data)
        session.hasher.update(data)
        session.offset += len(data)

    def abort(self, session: UploadSession) -> None:
        with self._lock:
            self._uploads.pop(session.upload_id, None)
        session.handle.close()
        session.path.unlink(missing_ok=True)

    def finalize(self, session: UploadSession) -> FileRecord:
        session.handle.close()
        final_path = self.files_dir / session.file_id
        os.replace(session.path, final_path)
        record = FileRecord(
            id=session.file_id,
            display_name=session.display_name,
            mime_type=session.mime_type,
            size=session.offset,
            sha256_b64=base64.b64encode(session.hasher.digest()).decode("ascii"),
            source="UPLOADED",
            path=final_path,
        )
        with self._lock:
            self._uploads.pop(session.upload_id, None)
            self._files[record.id] = record
        self.on_change()
        return record

    # ---- generated files ----

    def generated_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.part"

    def register_generated(self, file_id: str, tmp_path: Path, mime_type: str) -> FileRecord:
        final_path = self.files_dir / file_id
        os.replace(tmp_path, final_path)
        hasher = hashlib.sha256()
        with final_path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
        record = FileRecord(
            id=file_id,
            display_name=file_id,
            mime_type=mime_type,
            size=final_path.stat().st_size,
            sha256_b64=base64.b64encode(hasher.digest()).decode("ascii"),
            source="GENERATED",
            path=final_path,
        )
        with self._lock:
            self._files[file_id] = record
        self.on_change()
        return record

    # ---- read / delete ----

    def get(self, file_id: str) -> FileRecord:
        with self._lock:
            record = self._files.get(file_id)
        if record is None:
            raise ApiError(404, f"File files/{file_id} not found.")
        return record

    def find(self, file_id: str) -> FileRecord | None:
        with self._lock:
            return self._files.get(file_id)

    def list(self, page_size: int, page_token: str | None) -> tuple[list[FileRecord], str | None]:
        with self._lock:
            records = sorted(self._files.values(), key=lambda r: r.seq, reverse=True)
        return paginate(records, page_size, page_token)

    def delete(self, file_id: str) -> None:
        with self._lock:
            record = self._files.pop(file_id, None)
        if record is None:
            raise ApiError(404, f"File files/{file_id} not found.")
        record.path.unlink(missing_ok=True)
        self.on_change()

    def reset(self) -> None:
        with self._lock:
            sessions = list(self._uploads.values())
            self._uploads.clear()
            self._files.clear()
        for session in sessions:
            session.handle.close()
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)


def paginate(items: list[Any], page_size: int, page_token: str | None) -> tuple[list[Any], str | None]:
    """``items`` sorted by descending ``.seq``; returns (page, next token or None)."""
    if page_token:
        try:
            below = int(page_token)
        except ValueError:
            raise ApiError(400, f"Invalid page token: {page_token!r}.") from None
        items = [item for item in items if item.seq < below]
    page = items[:page_size]
    more = len(items) > page_size
    return page, (str(page[-1].seq) if more and page else None)
