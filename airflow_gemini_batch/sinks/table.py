"""Table sink: result rows → a warehouse table through a common-sql connection, upserted on the key.

Invariants:

* Loading the same results twice leaves one row per key (``INSERT ... ON CONFLICT (key) DO UPDATE``), so a
  task retry or a rerun never duplicates. The key column is the table's primary key for that reason.
* Rows arrive in chunks (a few thousand) and are written with ``executemany``; nothing accumulates across
  chunks, so memory is flat in the row count. Commits happen every ``commit_seconds`` (or ``commit_every``
  rows), trading a little re-work on a crash (harmless: upserts) for not paying a disk sync per chunk: a time
  bound keeps the syncs a small share of the load whatever the row size, and bounds the re-work to seconds.
  An open transaction's size costs disk (journal / WAL), not memory: the database's page cache is capped.
* A chunk binds only the values that vary (SQLite): binding is a large part of a row's write in Python's
  ``sqlite3``, and a ``None`` is the dearest value to bind (it takes the module's adaptation path, like an
  int subclass, which exact ints and strs skip). So a chunk's ``INSERT`` leaves out the columns that are NULL
  in every one of its rows and writes the load's ``loaded_at`` and the chunk's job name as literals. The
  stored rows are the same: a left-out column is NULL on insert and, through ``excluded``, on update. Only
  columns without a default are left out (checked at ``open()``), and only values of a plain shape (job
  names, timestamps) become literals. ``bench/load_results.py`` times this against a floor that binds every
  value (figures: the README's Performance section).
* Every row of a load carries the load's ``attempts`` (how many times its request was sent, see
  :mod:`~airflow_gemini_batch.sinks.schema`), a constant of the load like ``loaded_at``. An existing table
  without the column gets it at ``open()`` (``create_table=True``) or is written without it.
* Non-succeeded rows are mirrored into the errors table; a key that succeeds on a later load is removed from
  it, so the errors table always lists exactly the keys that currently need attention.

This module holds the generic DB-API path (used for SQLite); PostgreSQL gets the COPY path in
:mod:`airflow_gemini_batch.sinks.postgres`.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import closing
from datetime import datetime, timezone
from itertools import repeat
from operator import add, itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results.rows import N_STORED, SUCCEEDED, count_succeeded
from airflow_gemini_batch.sinks.schema import FINGERPRINT_COLUMN, SQLITE, TableLayout, quote

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_gemini_batch.results.rows import ResultRow
    from airflow_gemini_batch.sinks.sink import SqlHook

log = logging.getLogger(__name__)

# ResultRow positions read per row by the C-level conversions (STORED_VALUES: the stored columns, also the
# PostgreSQL sink's).
STORED_VALUES = itemgetter(slice(0, N_STORED))
_EMBEDDING = itemgetter(4)
# ResultRow positions that may be left out of a chunk's INSERT when NULL in all its rows (text .. error_message,
# request_fingerprint), and the job name's position (a literal when the same in all rows).
_SPARSE = (*range(2, 14), 15)
_JOB = 14
_GET = tuple(itemgetter(i) for i in range(N_STORED))
# Values written into SQL as literals must look like this (job names, ISO timestamps): no quote can appear.
_PLAIN_LITERAL = re.compile(r"[A-Za-z0-9_/:.+ -]*")


def get_db_hook(conn_id: str) -> SqlHook:
    """The common-sql hook of a connection (``BaseHook.get_hook``): SqliteHook, PostgresHook, ..."""
    from airflow.sdk import BaseHook

    return BaseHook.get_hook(conn_id)


def dialect_of(hook: SqlHook) -> str:
    name = getattr(hook, "dialect_name", None) or getattr(hook, "conn_type", "") or ""
    return {"postgres": "postgresql"}.get(name, name)


def json_cell(value: Any) -> Any:
    """A structured-output field as a column value: scalars as they are, objects and lists as JSON text."""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def _all_null(rows: list[ResultRow], position: int) -> bool:
    """Whether a column is NULL in every row: ``any`` stops at the first truthy value, so a filled column costs
    next to nothing; ``count(None)`` confirms an all-falsy one (0 and "" are not NULL)."""
    getter = _GET[position]
    return not any(map(getter, rows)) and list(map(getter, rows)).count(None) == len(rows)


class TableSink:
    """Writes :class:`ResultRow` chunks into ``layout.table`` (and its errors table) with executemany.

    :param hook: a common-sql hook (or the SQLite stand-in) for the destination.
    :param layout: the validated table layout.
    :param create_table: create the tables if missing (``CREATE TABLE IF NOT EXISTS``).
    :param commit_every: rows after which a commit is due.
    :param commit_seconds: seconds after which a commit is due (checked after each chunk).
    :param attempts: the ``attempts`` value of every row of this load (1, or the row-retry round).
    """

    def __init__(
        self,
        hook: SqlHook,
        layout: TableLayout,
        *,
        create_table: bool = True,
        commit_every: int = 1_000_000,
        commit_seconds: float = 10.0,
        attempts: int = 1,
    ) -> None:
        self.hook = hook
        self.attempts = int(attempts)
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
        self._omittable: frozenset[int] = frozenset()

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def open(self) -> None:
        self._conn = self.hook.get_conn()
        layout = self.layout
        ph = getattr(self.hook, "placeholder", "?") or "?"
        with closing(self._conn.cursor()) as cur:
            if self.create_table:
                cur.execute(layout.create_sql())
                cur.execute(layout.create_sql(errors=True))
            self._ensure_attempts_column(cur)
            self._ensure_attempts_column(cur, errors=True)
            self.add_fingerprint_column(cur)
            # Deleting succeeded keys from an empty errors table is pure cost (a first load): skip it.
            cur.execute(f"SELECT 1 FROM {layout.errors_qualified} LIMIT 1")
            self._clear_errors = cur.fetchone() is not None
        self._conn.commit()
        self._main_sql = layout.upsert_sql(ph)
        self._errors_sql = layout.upsert_sql(ph, errors=True)
        self._delete_sql = f"DELETE FROM {layout.errors_qualified} WHERE {quote(layout.key_column)} = {ph}"
        self._loaded_at = self._loaded_at_value()
        self._tail = self._row_tail()
        plain = isinstance(self._loaded_at, str) and _PLAIN_LITERAL.fullmatch(self._loaded_at)
        self._omittable = (
            self._columns_without_default() if layout.dialect == SQLITE and plain else frozenset()
        )
        self._narrow_sql: dict[tuple[tuple[int, ...], str | None], str] = {}

    def _ensure_attempts_column(self, cur: Any, errors: bool = False) -> None:
        """A table (the main one, or with ``errors`` the errors table) made before the ``attempts`` column
        existed: add it (``create_table``), else leave the table as it is and write no ``attempts`` there
        (the user manages that table's schema)."""
        layout = self.layout
        cur.execute(f"SELECT * FROM {layout.errors_qualified if errors else layout.qualified} WHERE 1 = 0")
        existing = {d[0] for d in cur.description or ()}
        cur.fetchall()
        if "attempts" in existing or not existing:
            return
        name = (
            f"{layout.errors_schema}.{layout.errors_name}"
            if errors and layout.errors_schema
            else (layout.errors_name if errors else layout.table)
        )
        if self.create_table:
            log.info("Adding the attempts column to %s (made before it existed)", name)
            cur.execute(layout.add_attempts_sql(errors=errors))
        else:
            log.warning("%s has no attempts column and create_table=False: loading without it", name)
            if errors:
                layout.errors_attempts_column = False
            else:
                layout.attempts_column = False

    def _row_tail(self) -> tuple[Any, ...]:
        """The load's constants after the stored fields of every row: ``loaded_at`` (and ``attempts``)."""
        return (self._loaded_at, self.attempts) if self.layout.attempts_column else (self._loaded_at,)

    def add_fingerprint_column(self, cur: Any) -> None:
        """Give a main table made before fingerprints were stored its ``request_fingerprint`` column.

        Old rows keep NULL there, so an incremental run sends them once more and from then on reuses them.
        Adding a nullable column is a change of the table's definition only, on SQLite and PostgreSQL alike.
        """
        layout = self.layout
        cur.execute(f"SELECT * FROM {layout.qualified} WHERE 1 = 0")
        names = {d[0] for d in cur.description or ()}
        cur.fetchall()
        if names and FINGERPRINT_COLUMN not in names:
            log.warning(
                "Adding the %s column to %s (made before request fingerprints were stored)",
                FINGERPRINT_COLUMN,
                layout.table,
            )
            cur.execute(layout.add_fingerprint_sql())

    def _columns_without_default(self) -> frozenset[int]:
        """Positions of the sparse columns a chunk's INSERT may leave out: those whose default is NULL.

        A table made by this sink has no defaults; a table made by its user might (``DEFAULT 0``), and leaving
        such a column out would store the default instead of the row's NULL.
        """
        layout = self.layout
        pragma = f"PRAGMA {quote(layout.schema)}.table_info" if layout.schema else "PRAGMA table_info"
        with closing(self._conn.cursor()) as cur:
            cur.execute(f"{pragma}({quote(layout.name)})")
            no_default = {name for _, name, _, _, default, _ in cur.fetchall() if default is None}
        names = [name for name, _ in layout.columns()]
        return frozenset(i for i in _SPARSE if names[i] in no_default)

    def _loaded_at_value(self) -> Any:
        return self.loaded_at.isoformat(timespec="microseconds")

    def write(self, rows: list[ResultRow]) -> None:
        narrow = self._narrow_statement(rows) if self._omittable else None
        if narrow is None:
            main_sql, (main, errors, succeeded_keys) = self._main_sql, self._tuples(rows)
        else:
            main_sql, main = narrow
            errors, succeeded_keys = self._error_tuples(rows, self._clear_errors)
        with closing(self._conn.cursor()) as cur:
            cur.executemany(main_sql, main)
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
        tail = self._tail
        if self.layout.output_columns:
            main: Iterable[tuple] = [self._convert(r, tail) for r in rows]
        elif list(map(_EMBEDDING, rows)).count(None) == len(rows):
            main = map(add, map(STORED_VALUES, rows), repeat(tail))
        else:
            main = [r[:N_STORED] + tail if r[4] is None else self._convert(r, tail) for r in rows]
        return main, *self._error_tuples(rows, self._clear_errors)

    def _narrow_statement(self, rows: list[ResultRow]) -> tuple[str, Iterable[tuple]] | None:
        """The chunk's INSERT binding only the values that vary, and its tuples; ``None`` when the chunk needs
        converting (output columns, embeddings) and takes the full statement."""
        if self.layout.output_columns or not rows or not _all_null(rows, 4):
            return None  # output columns, embeddings (JSON text per row): the converting path
        n = len(rows)
        # Position 4 (embedding) is known to be all NULL by now: not scanned again.
        left_out = [i for i in self._omittable if i == 4 or _all_null(rows, i)]
        job = rows[0][_JOB]
        job_literal = (
            job
            if isinstance(job, str) and _PLAIN_LITERAL.fullmatch(job)
            and list(map(_GET[_JOB], rows)).count(job) == n
            else None
        )  # fmt: skip
        kept = tuple(
            i for i in range(N_STORED) if i not in left_out and not (i == _JOB and job_literal is not None)
        )
        sql = self._narrow_sql.get((kept, job_literal))
        if sql is None:
            sql = self._narrow_sql[(kept, job_literal)] = self._narrow_upsert(kept, job_literal)
        return sql, map(itemgetter(*kept), rows)

    def _narrow_upsert(self, kept: tuple[int, ...], job_literal: str | None) -> str:
        """``INSERT`` of the ``kept`` columns (+ literals); the update still sets every column from ``excluded``
        (NULL for a left-out one), so an upsert over an older row leaves nothing of it behind."""
        layout, ph = self.layout, getattr(self.hook, "placeholder", "?") or "?"
        names = [name for name, _ in layout.columns()]
        columns, values = [names[i] for i in kept], [ph] * len(kept)
        if job_literal is not None:
            columns.append(names[_JOB])
            values.append(f"'{job_literal}'")
        columns.append(names[N_STORED])  # loaded_at
        values.append(f"'{self._loaded_at}'")
        if layout.attempts_column:
            columns.append(names[N_STORED + 1])
            values.append(str(int(self.attempts)))  # an int: no quote can appear
        updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in names[1:])
        return (
            f"INSERT INTO {layout.qualified} ({', '.join(map(quote, columns))}) VALUES ({', '.join(values)}) "
            f"ON CONFLICT ({quote(layout.key_column)}) DO UPDATE SET {updates}"
        )

    def _error_tuples(self, rows: list[ResultRow], with_succeeded: bool) -> tuple[list[tuple], list[Any]]:
        """The errors-table tuples and (``with_succeeded``) the succeeded keys to delete from that table."""
        loaded_at = self._loaded_at
        if count_succeeded(rows) == len(rows):  # the common chunk: skip the row loop
            errors = []
        else:
            tail = (loaded_at, self.attempts) if self.layout.errors_attempts_column else (loaded_at,)
            errors = [(r[0], r[1], r[12], r[13], r[14], *tail) for r in rows if r[1] != SUCCEEDED]
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
