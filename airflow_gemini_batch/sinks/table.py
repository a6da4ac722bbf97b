"""Table sink: result rows → a warehouse table through a common-sql connection, upserted on the key.

Invariants:

* Loading the same results twice leaves one row per key (``INSERT ... ON CONFLICT (key) DO UPDATE``), so a
  task retry or a rerun never duplicates. The key column is the table's primary key for that reason.
* Rows arrive in chunks (a few thousand) and are written with ``executemany``; nothing accumulates across
  chunks, so memory is flat in the row count. Commits happen every ``commit_seconds`` (or ``commit_every``
  rows), trading a little re-work on a crash (harmless: upserts) for not paying a disk sync per chunk: a
  commit costs a sync (20-30 ms measured on SQLite), so a time bound keeps that cost under 1 % whatever the
  row size, and bounds the re-work to seconds. An open transaction's size costs disk (journal / WAL), not
  memory: the database's page cache is capped.
* Non-succeeded rows are mirrored into the errors table; a key that succeeds on a later load is removed from
  it, so the errors table always lists exactly the keys that currently need attention.

This module holds the generic DB-API path (used for SQLite); PostgreSQL gets the COPY path in
:mod:`airflow_gemini_batch.sinks.postgres`.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from datetime import datetime, timezone
from itertools import repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results import N_STORED, SUCCEEDED
from airflow_gemini_batch.sinks.schema import TableLayout, quote

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_gemini_batch.results import ResultRow

log = logging.getLogger(__name__)

# ResultRow positions read per row by the C-level conversions.
_STORED = itemgetter(slice(0, N_STORED))
_OUTCOME = itemgetter(1)
_EMBEDDING = itemgetter(4)


def get_db_hook(conn_id: str) -> Any:
    """The common-sql hook of a connection (``BaseHook.get_hook``): SqliteHook, PostgresHook, ..."""
    from airflow.sdk import BaseHook

    return BaseHook.get_hook(conn_id)


def dialect_of(hook: Any) -> str:
    name = getattr(hook, "dialect_name", None) or getattr(hook, "conn_type", "") or ""
    return {"postgres": "postgresql"}.get(name, name)


def json_cell(value: Any) -> Any:
    """A structured-output field as a column value: scalars as they are, objects and lists as JSON text."""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


class TableSink:
    """Writes :class:`ResultRow` chunks into ``layout.table`` (and its errors table) with executemany.

    :param hook: a common-sql hook (or the SQLite stand-in) for the destination.
    :param layout: the validated table layout.
    :param create_table: create the tables if missing (``CREATE TABLE IF NOT EXISTS``).
    :param commit_every: rows after which a commit is due.
    :param commit_seconds: seconds after which a commit is due (checked after each chunk).
    """

    def __init__(
        self,
        hook: Any,
        layout: TableLayout,
        *,
        create_table: bool = True,
        commit_every: int = 1_000_000,
        commit_seconds: float = 10.0,
    ) -> None:
        self.hook = hook
        self.layout = layout
        self.create_table = create_table
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self._last_commit = time.monotonic()
        self.loaded_at = datetime.now(timezone.utc)
        self.rows_written = 0
        self._since_commit = 0
        self._conn: Any = None
        self._clear_errors = True

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def open(self) -> None:
        self._conn = self.hook.get_conn()
        layout = self.layout
        ph = getattr(self.hook, "placeholder", "?") or "?"
        with closing(self._conn.cursor()) as cur:
            if self.create_table:
                cur.execute(layout.create_sql())
                cur.execute(layout.create_sql(errors=True))
            # Deleting succeeded keys from an empty errors table is pure cost (a first load): skip it.
            cur.execute(f"SELECT 1 FROM {layout.errors_qualified} LIMIT 1")
            self._clear_errors = cur.fetchone() is not None
        self._conn.commit()
        self._main_sql = layout.upsert_sql(ph)
        self._errors_sql = layout.upsert_sql(ph, errors=True)
        self._delete_sql = f"DELETE FROM {layout.errors_qualified} WHERE {quote(layout.key_column)} = {ph}"
        self._loaded_at = self._loaded_at_value()

    def _loaded_at_value(self) -> Any:
        return self.loaded_at.isoformat(timespec="microseconds")

    def write(self, rows: list[ResultRow]) -> None:
        main, errors, succeeded_keys = self._tuples(rows)
        with closing(self._conn.cursor()) as cur:
            cur.executemany(self._main_sql, main)
            if errors:
                cur.executemany(self._errors_sql, errors)
            if self._clear_errors and succeeded_keys:
                cur.executemany(self._delete_sql, [(k,) for k in succeeded_keys])
        self.rows_written += len(rows)
        self._since_commit += len(rows)
        if self._commit_due():
            self._commit()

    def _commit_due(self) -> bool:
        return (
            self._since_commit >= self.commit_every
            or time.monotonic() - self._last_commit >= self.commit_seconds
        )

    def _commit(self) -> None:
        self._conn.commit()
        self._since_commit = 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.commit()
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
                self._conn = None

    def describe(self) -> dict[str, Any]:
        layout = self.layout
        errors = (
            f"{layout.errors_schema}.{layout.errors_name}" if layout.errors_schema else layout.errors_name
        )
        return {"table": layout.table, "errors_table": errors}

    # ---- row conversion -----------------------------------------------------------------------------------

    def _tuples(self, rows: list[ResultRow]) -> tuple[Iterable[tuple], list[tuple], list[Any]]:
        """Bind-ready tuples for the main table, the errors table, and the succeeded keys.

        This runs once per row, so the common chunk (no embeddings, no output columns) is converted by C-level
        ``map``s - no Python step per row - and lazily, as executemany binds them.
        """
        tail = (self._loaded_at,)
        if self.layout.output_columns:
            main: Iterable[tuple] = [self._convert(r, tail) for r in rows]
        elif list(map(_EMBEDDING, rows)).count(None) == len(rows):
            main = map(add, map(_STORED, rows), repeat(tail))
        else:
            main = [r[:N_STORED] + tail if r[4] is None else self._convert(r, tail) for r in rows]
        return main, *self._error_tuples(rows, self._clear_errors)

    def _error_tuples(self, rows: list[ResultRow], with_succeeded: bool) -> tuple[list[tuple], list[Any]]:
        """The errors-table tuples and (``with_succeeded``) the succeeded keys to delete from that table."""
        loaded_at = self._loaded_at
        if list(map(_OUTCOME, rows)).count(SUCCEEDED) == len(rows):  # the common chunk: skip the row loop
            errors = []
        else:
            errors = [(r[0], r[1], r[12], r[13], r[14], loaded_at) for r in rows if r[1] != SUCCEEDED]
        succeeded_keys = [r[0] for r in rows if r[1] == SUCCEEDED] if with_succeeded else []
        return errors, succeeded_keys

    def _convert(self, row: ResultRow, tail: tuple) -> tuple:
        stored = row[:N_STORED]
        if row.embedding is not None:
            stored = (*stored[:4], orjson.dumps(row.embedding).decode(), *stored[5:])
        columns = self.layout.output_columns
        if not columns:
            return stored + tail
        value = row.value
        if not isinstance(value, dict):
            return stored + tail + (None,) * len(columns)
        return stored + tail + tuple(json_cell(value.get(c)) for c in columns)
