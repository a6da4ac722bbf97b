"""Table sink: result rows → a warehouse table through a common-sql connection, upserted on the key.

Invariants:

* Loading the same results twice leaves one row per key (``INSERT ... ON CONFLICT (key) DO UPDATE``), so a
  task retry or a rerun never duplicates. The key column is the table's primary key for that reason.
* Rows arrive in chunks (a few thousand) and are written with ``executemany``; nothing accumulates across
  chunks, so memory is flat in the row count. Commits happen every ``commit_every`` rows, trading a little
  re-work on a crash (harmless: upserts) for not paying a disk sync per chunk.
* Non-succeeded rows are mirrored into the errors table; a key that succeeds on a later load is removed from
  it, so the errors table always lists exactly the keys that currently need attention.

This module holds the generic DB-API path (used for SQLite); PostgreSQL gets the COPY path in
:mod:`airflow_gemini_batch.sinks.postgres`.
"""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results import N_STORED, SUCCEEDED
from airflow_gemini_batch.sinks.schema import TableLayout, quote

if TYPE_CHECKING:
    from airflow_gemini_batch.results import ResultRow

log = logging.getLogger(__name__)


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
    :param commit_every: rows between commits.
    """

    def __init__(
        self, hook: Any, layout: TableLayout, *, create_table: bool = True, commit_every: int = 50_000
    ) -> None:
        self.hook = hook
        self.layout = layout
        self.create_table = create_table
        self.commit_every = commit_every
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
        if self._since_commit >= self.commit_every:
            self._conn.commit()
            self._since_commit = 0

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

    def _tuples(self, rows: list[ResultRow]) -> tuple[list[tuple], list[tuple], list[Any]]:
        """Bind-ready tuples for the main table, the errors table, and the succeeded keys (list comprehensions:
        this runs once per row)."""
        loaded_at = self._loaded_at
        tail = (loaded_at,)
        n = N_STORED
        if self.layout.output_columns:
            main = [self._convert(r, tail) for r in rows]
        else:
            main = [r[:n] + tail if r[4] is None else self._convert(r, tail) for r in rows]
        errors = [(r[0], r[1], r[12], r[13], r[14], loaded_at) for r in rows if r[1] != SUCCEEDED]
        succeeded_keys = [r[0] for r in rows if r[1] == SUCCEEDED] if self._clear_errors else []
        return main, errors, succeeded_keys

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
