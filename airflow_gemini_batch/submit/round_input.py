"""A row-retry round's input: the run's own source, read again and filtered to the remainder's keys.

Invariants:

* The requests of a retry round are rebuilt from the source, never from the earlier round's shard files:
  those are local to the worker that wrote them, and may be gone (housekeeping deletes them once their job
  exists). The source is streamed as for the first round; only rows whose key is on the remainder list (the
  key list the previous round's load wrote, :mod:`airflow_gemini_batch.results.remainder`) pass.
* Memory stays flat in the row count and in the remainder's size: the remainder keys go into a throw-away
  SQLite file (page cache capped, as for the load's key index), and each fetched batch is matched with one
  query, not one per row.
* Keys compare by the same canonical text as reconciliation (a string as itself, anything else as its JSON),
  so an integer key read back from the JSON key list matches the source's integer.
* A remainder key the source no longer has is reported (counted and logged), never invented: that row keeps
  the outcome it was loaded with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.sources import RowSource
from airflow_gemini_batch.results.reconcile import canonical, iter_key_lines

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

#: SQLite page cache for the remainder's key set, in KiB.
KEY_SET_CACHE_KB = 4096


def _canonical_or_none(key: Any) -> str | None:
    try:
        return canonical(key)
    except TypeError:  # a key that is no JSON value (a malformed JSONL line's stand-in) is never on a list
        return None


class KeyFilteredSource(RowSource):
    """``source``'s rows whose ``key_column`` value is on the key list at ``keys_uri`` (see the module docstring).

    :param source: the round's source, as the first round read it.
    :param keys_uri: the remainder key list (local path or ObjectStoragePath URI).
    :param key_column: the column keying each row (``key`` for prebuilt and prompt-list sources).
    """

    def __init__(self, source: RowSource, keys_uri: str, key_column: str) -> None:
        self.source = source
        self.keys_uri = keys_uri
        self.key_column = key_column
        self.prebuilt = source.prebuilt
        self.wanted = 0
        self.found = 0

    def describe(self) -> str:
        return f"{self.source.describe()}, only the keys listed in {self.keys_uri}"

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        fd, path = tempfile.mkstemp(prefix="gemini-remainder-keys-", suffix=".sqlite")
        os.close(fd)
        db = sqlite3.connect(path)
        try:
            self.wanted = self._index(db)
            position: int | None = None
            for batch in self.source.batches():
                if position is None:
                    self.columns = self.source.columns  # known once the source read its first batch
                    position = self._key_position()
                keys = [_canonical_or_none(row[position]) for row in batch]
                probe = orjson.dumps([k for k in keys if k is not None]).decode()
                hits = {
                    c
                    for (c,) in db.execute(
                        "SELECT c FROM k WHERE c IN (SELECT value FROM json_each(?))", (probe,)
                    )
                }
                if hits:
                    kept = [row for row, key in zip(batch, keys, strict=True) if key in hits]
                    self.found += len(kept)
                    yield kept
        finally:
            db.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.found < self.wanted:
            log.warning(
                "%d of the %d keys to send again are no longer in the source; their rows keep the outcome "
                "they were loaded with",
                self.wanted - self.found,
                self.wanted,
            )

    def _index(self, db: sqlite3.Connection) -> int:
        db.execute(f"PRAGMA cache_size = -{KEY_SET_CACHE_KB}")
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("CREATE TABLE k (c TEXT PRIMARY KEY) WITHOUT ROWID")
        db.executemany("INSERT OR IGNORE INTO k VALUES (?)", ((c,) for c, _ in iter_key_lines(self.keys_uri)))
        db.commit()
        return int(db.execute("SELECT COUNT(*) FROM k").fetchone()[0])

    def _key_position(self) -> int:
        columns = list(self.source.columns)
        if self.key_column not in columns:
            raise GeminiBatchInputError(
                f"The source no longer has the key column {self.key_column!r} (columns: {columns}); a retry "
                "round re-reads the same source as the first round. Fix the query and clear the task."
            )
        return columns.index(self.key_column)
