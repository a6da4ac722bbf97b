"""Key reconciliation: match result lines to the key list a shard was submitted with, in bounded memory.

Invariant: every key of the key list is matched at most once (a duplicated result line is reported, first one
wins), a result key that is not in the list is reported and never loaded, and every key left unmatched is
yielded by :meth:`KeyReconciler.iter_unmatched` so that it becomes ``missing`` - nothing disappears.

Memory choice (key lists can hold millions of keys):

* The service writes results "in the same order as the input requests", so the common case is a **streaming
  merge**: the key list is read alongside the results, and a result whose key is the next key in the list is
  matched with one string comparison and no lookup structure at all.
* Anything out of order (a dropped line, a duplicate, an unknown key, a reordered inline list) falls back to
  an **on-disk index**: a throw-away SQLite file ``(canonical key → position, JSON key)`` built from the key
  list the first time it is needed. SQLite's page cache is capped (:data:`INDEX_CACHE_KB`), so the index costs
  disk, not RAM, however long the list.
* Which positions were matched is one byte per key (a ``bytearray``): 1 MB per million keys. That, one block
  of the key list (:data:`KEY_BLOCK_BYTES`, parsed at once) and the capped SQLite cache are the whole memory
  bound of a shard's reconciliation.
* A run of in-order result keys is matched with a few list comparisons (:meth:`KeyReconciler.match_in_order`),
  not one call per key: reconciliation is on the per-line hot path of a load.

Each key's request fingerprint (``fingerprints-<n>.txt`` beside the key list, one sha256 hex per line in the
same order; optional, for manifests written before fingerprints) is read in step with the key list, block by
block: a match also tells the fingerprint of the key it matched (:attr:`KeyReconciler.fingerprint`,
:attr:`KeyReconciler.run_fingerprints`), so the load stores the fingerprint of the request that was *sent*.

Keys compare by a canonical text: a string as itself, anything else as its JSON (``5`` → ``"5"``). That way an
int key still matches when the service echoes it back as the string ``"5"`` (inline ``metadata`` is
``dict[str, str]``), and the loaded row keeps the key list's own value and type.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from itertools import zip_longest
from typing import IO, TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchStagingError
from airflow_gemini_batch.inputs.fingerprint import FINGERPRINT_LINE_BYTES
from airflow_gemini_batch.storage import is_local, open_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

MATCHED = "matched"
DUPLICATE = "duplicate"
UNKNOWN = "unknown"

#: SQLite page cache for the fallback index, in KiB (negative ``cache_size`` means KiB to SQLite).
INDEX_CACHE_KB = 4096


def canonical(key: Any) -> str:
    return key if type(key) is str else orjson.dumps(key).decode()


def open_keys(path: str) -> IO[bytes]:
    """A key list for reading: a local path directly (fast), anything with a scheme via ObjectStoragePath.

    A missing key list is a deployment problem, not a retryable blip: the error says where it looked and why
    it is most likely not there (the submit task wrote it on another machine's local disk).
    """
    try:
        return open_binary(path)
    except FileNotFoundError as error:
        where = "this worker's local disk" if is_local(path) else "the staging storage"
        raise GeminiBatchStagingError(
            f"The key list {path} is not on {where}; the submit task wrote it there and the load reconciles "
            "every key against it. With several workers (Celery, Kubernetes) a local staging folder is only on "
            "the machine that ran the submit task. Fix: point staging_path (or [gemini_batch] staging_path) at "
            "storage every worker reaches (s3://..., gs://..., a shared folder), then clear the submit task "
            "with its downstream tasks: it re-attaches to its jobs and republishes the key lists."
        ) from error


def iter_key_lines(path: str) -> Iterator[tuple[str, Any]]:
    """``(canonical, value)`` per non-blank line of a key list, streaming."""
    for canon, value, _ in iter_key_entries(path, None):
        yield canon, value


def iter_key_entries(path: str, fingerprints_path: str | None) -> Iterator[tuple[str, Any, str | None]]:
    """``(canonical, value, fingerprint)`` per non-blank line of a key list (fingerprint None without a
    fingerprints file), streaming; the two files are paired line by line."""
    loads = orjson.loads
    with open_keys(path) as fh, _open_fingerprints(fingerprints_path) as fps:
        # zip_longest: a short fingerprints file must never cut the key list (its keys get None).
        for raw, fingerprint in zip_longest(fh, fps if fps is not None else ()):
            if raw is None:
                break
            if raw.strip():
                value = loads(raw)
                canon = value if type(value) is str else orjson.dumps(value).decode()
                yield canon, value, fingerprint.rstrip(b"\n").decode() if fingerprint else None


@contextlib.contextmanager
def _open_fingerprints(path: str | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
        return
    with open_keys(path) as fh:
        yield fh


_END = object()


def _parse_key_lines(lines: list[bytes]) -> list[Any]:
    """Parse key-list lines (one C-level ``map``); whitespace-only lines are skipped, a bad line raises."""
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        # The rare slow path: a whitespace-only line is not a key; any other unparsable line raises here.
        return list(map(orjson.loads, filter(None, map(bytes.strip, lines))))


#: Bytes of key list parsed at a time: keys are parsed a block at a time by one C-level ``map`` (no Python
#: frame per key), and one block is all of the list the merge holds.
KEY_BLOCK_BYTES = 64 * 1024


class KeyReconciler:
    """Resolves result keys against one shard's key list (see the module docstring for the memory bound).

    :param keys_path: local path or ObjectStoragePath URI of the key list (one JSON value per line).
    :param work_dir: where the fallback index file may be created (default: the system temp dir).
    :param fingerprints_path: the key list's request fingerprints (same order), if the manifest has them.
    """

    def __init__(
        self, keys_path: str, work_dir: str | None = None, fingerprints_path: str | None = None
    ) -> None:
        self.keys_path = keys_path
        self.work_dir = work_dir
        self.fingerprints_path = fingerprints_path
        self._fh: IO[bytes] | None = open_keys(keys_path)
        self._fps: IO[bytes] | None = open_keys(fingerprints_path) if fingerprints_path else None
        self._fbuf: list[str | None] | None = None  # fingerprints of self._buf, when there is a file
        #: the fingerprint of the key the last resolve / take_next matched (None without a file)
        self.fingerprint: str | None = None
        #: the fingerprints of the prefix the last match_in_order matched (None without a file)
        self.run_fingerprints: list[str | None] | None = None
        self._rest = b""  # an incomplete last line of the previous block
        self._buf: list[Any] = []  # parsed key-list values of the current block
        self._base = 0  # list position of self._buf[0]
        self._pos = 0  # list position of self._next
        self._next: Any = _END  # the key-list value at position self._pos (the merge's head)
        self._seen = bytearray()  # one byte per key read so far: 1 = matched
        self._exhausted = False
        self._index: sqlite3.Connection | None = None
        self._index_path: str | None = None
        self.matched = 0
        self.lookups = 0  # how often the merge fell back to the index (out-of-order results)
        self._next = self._refill()

    def _refill(self) -> Any:
        """Parse the next block of the key list; its first value (or ``_END``). Blank lines are not keys."""
        fh = self._fh
        while fh is not None:
            block = fh.read(KEY_BLOCK_BYTES)
            if block:
                data = self._rest + block
                cut = data.rfind(b"\n") + 1
                self._rest, data = data[cut:], data[:cut]
            else:
                data, self._rest = self._rest, b""
            lines = data.split(b"\n")
            if lines[-1] == b"":
                lines.pop()
            fbuf = self._read_fingerprints(len(lines)) if self._fps is not None else None
            buf = _parse_key_lines(lines) if lines else []
            if fbuf is not None and len(buf) != len(lines):  # blank lines are no keys: drop their pairs
                fbuf = [f for line, f in zip(lines, fbuf, strict=True) if line.strip()]
            if buf:
                self._buf = buf
                self._fbuf = fbuf
                self._base = self._pos
                self._seen.extend(bytes(len(buf)))
                return buf[0]
            if not block:
                break
        self._buf = []
        self._fbuf = None
        self._base = self._pos
        self._exhausted = True
        return _END

    def _read_fingerprints(self, count: int) -> list[str | None]:
        """The next ``count`` lines of the fingerprints file (None for any the file lacks)."""
        assert self._fps is not None
        text = self._fps.read(count * FINGERPRINT_LINE_BYTES).decode("ascii")
        found: list[str | None] = list(text.split("\n")[:count])
        if len(found) < count or (found and not found[-1]):
            found = [f or None for f in found] + [None] * (count - len(found))
        return found

    def _step(self) -> None:
        """Move the merge's head past the current key."""
        self._pos += 1
        i = self._pos - self._base
        self._next = self._buf[i] if i < len(self._buf) else self._refill()

    def resolve(self, key: Any) -> tuple[str, Any]:
        """``(MATCHED, key-list value)``, ``(DUPLICATE, None)`` or ``(UNKNOWN, None)`` for one result key."""
        nxt = self._next
        # Same type and value is the in-order common case (``_END``'s type is no JSON type); the canonical
        # text covers an int echoed as "5". Inlined step: this runs once per result line.
        if (type(nxt) is type(key) and nxt == key) or (nxt is not _END and canonical(nxt) == canonical(key)):
            pos = self._pos
            fbuf = self._fbuf
            self.fingerprint = fbuf[pos - self._base] if fbuf is not None else None
            self._seen[pos] = 1
            self.matched += 1
            self._pos = pos = pos + 1
            i = pos - self._base
            self._next = self._buf[i] if i < len(self._buf) else self._refill()
            return MATCHED, nxt
        return self._resolve_slow(canonical(key))

    def match_in_order(self, run: list[Any]) -> int:
        """Match the longest prefix of ``run`` that is, in order, the next keys of the list; its length.

        The in-order common case of a whole run of result keys in a few C-level list comparisons instead of
        one :meth:`resolve` per key. Only int and str keys of the same type and value count (``True == 1``
        and ``1 == 1.0`` in Python, not here), so a matched key *is* the key list's value. The caller resolves
        the keys after the prefix one by one.
        """
        done = 0
        fingerprints: list[str | None] | None = [] if self._fps is not None else None
        self.run_fingerprints = fingerprints
        while done < len(run) and self._next is not _END:
            buf, i = self._buf, self._pos - self._base
            part = run[done : done + len(buf) - i]
            expected = buf[i : i + len(part)]
            types = list(map(type, expected))
            n = len(part)
            if part != expected or types != list(map(type, part)) or types.count(int) + types.count(str) != n:
                break
            self._seen[self._pos : self._pos + n] = b"\x01" * n
            if fingerprints is not None and self._fbuf is not None:
                fingerprints += self._fbuf[i : i + n]
            self._pos += n
            self.matched += n
            done += n
            j = self._pos - self._base
            self._next = buf[j] if j < len(buf) else self._refill()
        return done

    def take_next(self) -> tuple[str, Any]:
        """Match the next key in list order (for results that carry no key and are documented in order)."""
        while self._next is not _END and self._seen[self._pos]:
            self._step()
        if self._next is _END:
            return UNKNOWN, None
        value = self._next
        self._seen[self._pos] = 1
        self.fingerprint = self._fbuf[self._pos - self._base] if self._fbuf is not None else None
        self.matched += 1
        self._step()
        return MATCHED, value

    def _resolve_slow(self, canon: str) -> tuple[str, Any]:
        self.lookups += 1
        hit = self._lookup(canon)
        if hit is None:
            return UNKNOWN, None
        position, raw, self.fingerprint = hit
        # Move the merge forward past a jump (keys skipped over stay unmatched and end up missing), so
        # that results that are back in order take the fast path again.
        while self._next is not _END and self._pos <= position:
            self._step()
        if self._seen[position]:
            return DUPLICATE, None
        self._seen[position] = 1
        self.matched += 1
        return MATCHED, orjson.loads(raw)

    def _lookup(self, canon: str) -> tuple[int, str, str | None] | None:
        if self._index is None:
            self._build_index()
        assert self._index is not None
        return self._index.execute("SELECT pos, raw, fp FROM k WHERE canon = ?", (canon,)).fetchone()

    def _build_index(self) -> None:
        fd, self._index_path = tempfile.mkstemp(prefix="gemini-keys-", suffix=".sqlite", dir=self.work_dir)
        os.close(fd)
        db = sqlite3.connect(self._index_path)  # used by one thread: the load parses and writes in one loop
        db.execute(f"PRAGMA cache_size = -{INDEX_CACHE_KB}")
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute(
            "CREATE TABLE k (canon TEXT PRIMARY KEY, pos INTEGER NOT NULL, raw TEXT NOT NULL, fp TEXT) "
            "WITHOUT ROWID"
        )
        # OR IGNORE: a key listed twice keeps its first position, like the first-wins rule for results.
        entries = iter_key_entries(self.keys_path, self.fingerprints_path)
        db.executemany(
            "INSERT OR IGNORE INTO k VALUES (?, ?, ?, ?)",
            ((c, i, orjson.dumps(v).decode(), fp) for i, (c, v, fp) in enumerate(entries)),
        )
        db.commit()
        self._index = db

    @property
    def key_count(self) -> int:
        """Number of keys in the list (reads the rest of the list if the merge has not reached its end)."""
        while not self._exhausted:
            self._pos = self._base + len(self._buf)
            self._next = self._refill()
        return len(self._seen)

    def iter_unmatched(self) -> Iterator[Any]:
        """Key-list values never matched, in list order (a second pass over the list, only if there are any)."""
        for value, _ in self.iter_unmatched_entries():
            yield value

    def iter_unmatched_entries(self) -> Iterator[tuple[Any, str | None]]:
        """``(key-list value, fingerprint)`` of the keys never matched, in list order."""
        count = self.key_count
        if self.matched < count:
            seen = self._seen
            entries = iter_key_entries(self.keys_path, self.fingerprints_path)
            for i, (_, value, fingerprint) in enumerate(entries):
                if i >= count or not seen[i]:
                    yield value, fingerprint
        self.close()

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._index_path:
            with contextlib.suppress(OSError):
                os.unlink(self._index_path)
            self._index_path = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._fps is not None:
            self._fps.close()
            self._fps = None

    def __enter__(self) -> KeyReconciler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
