"""PostgreSQL table sink: the COPY fast path, with an upsert so that reruns never duplicate.

Invariants (on top of :mod:`airflow_gemini_batch.sinks.table`):

* Rows reach the server with ``COPY ... FROM STDIN`` (psycopg 3 ``write_row``, or psycopg2 ``copy_expert``
  with text-format escaping), never as one ``INSERT`` per row.
* Into a table this load just created, keys cannot conflict (reconciliation loads each key once), so rows are
  copied straight into it, through one COPY kept open across chunks until a commit: the server stores rows
  while the next chunk is parsed (errors rows wait in a buffer of at most :data:`ERRORS_BUFFER_ROWS`, since a
  connection runs one COPY at a time). Into an existing table they are copied into a temporary staging table
  and merged with ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE``, one chunk per transaction (the
  staging table is ``ON COMMIT DELETE ROWS``, so it never grows beyond a chunk).
* An existing table without the ``attempts`` column gets it before the staging table copies its shape.
* Embeddings are ``DOUBLE PRECISION[]``; structured output is ``JSONB``; ``loaded_at`` is ``TIMESTAMPTZ``, sent
  as ISO 8601 text with its UTC offset (so the session time zone cannot shift it).
"""

from __future__ import annotations

import io
import logging
from collections import deque
from contextlib import ExitStack, closing, suppress
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchInputError
from airflow_gemini_batch.results.rows import N_STORED, SUCCEEDED
from airflow_gemini_batch.sinks.schema import quote
from airflow_gemini_batch.sinks.table import STORED_VALUES, TableSink, json_cell

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_gemini_batch.results.rows import ResultRow

log = logging.getLogger(__name__)

_STAGE = "gemini_batch_stage"
_ERRORS_STAGE = "gemini_batch_errors_stage"
#: Errors rows held while the main table's COPY is open (a COPY at a time per connection): the bound on them.
ERRORS_BUFFER_ROWS = 5_000


def _escape(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_text_cell(value: Any) -> str:
    """One value in COPY text format (psycopg2 path): NULL is ``\\N``, arrays ``{...}``, bools ``t``/``f``."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, list):
        return "{" + ",".join(repr(float(v)) for v in value) + "}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return _escape(str(value))


class PostgresTableSink(TableSink):
    """:class:`TableSink` for PostgreSQL, writing each chunk with COPY (see the module docstring)."""

    def open(self) -> None:
        self._conn = self.hook.get_conn()
        layout = self.layout
        self._psycopg3 = not hasattr(self._conn, "get_dsn_parameters")
        with closing(self._conn.cursor()) as cur:
            self._direct_main = self._create(cur, layout.qualified, layout.create_sql())
            self._direct_errors = self._create(cur, layout.errors_qualified, layout.create_sql(errors=True))
            if not self._direct_main:
                self._ensure_attempts_column(cur)
                self.add_fingerprint_column(cur)
            if not self._direct_errors:
                self._ensure_attempts_column(cur, errors=True)
            cur.execute(f"SELECT 1 FROM {layout.errors_qualified} LIMIT 1")
            self._clear_errors = cur.fetchone() is not None
            for direct, stage, target in (
                (self._direct_main, _STAGE, layout.qualified),
                (self._direct_errors, _ERRORS_STAGE, layout.errors_qualified),
            ):
                if not direct:
                    cur.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage)} "
                        f"(LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    )
        self._conn.commit()
        self._main_cols = ", ".join(quote(c) for c, _ in layout.columns())
        self._error_cols = ", ".join(quote(c) for c, _ in layout.error_columns())
        # Into tables this load created (nothing to merge), one COPY stays open across chunks until a commit:
        # the server stores a chunk while the next one is parsed, instead of each chunk's COPY waiting for
        # the server to finish (that wait would serialize parsing and storing).
        self._streaming = self._psycopg3 and self._direct_main and self._direct_errors
        self._cur: Any = None
        self._copy_stack: ExitStack | None = None
        self._main_copy: Any = None
        self._pending_errors: list[tuple] = []
        # ISO text, not a datetime: COPY sends text anyway and the server parses it the same way, but the
        # client no longer renders a datetime per row (a large share of write_row's time).
        self._loaded_at = self._loaded_at_value()
        self._tail = self._row_tail()

    def _create(self, cur: Any, qualified: str, create_sql: str) -> bool:
        """Create the table if missing; True when it did not exist before (so it is empty and ours)."""
        cur.execute("SELECT to_regclass(%s)", (qualified,))
        existed = cur.fetchone()[0] is not None
        if not existed:
            if not self.create_table:
                raise GeminiBatchInputError(f"Table {qualified} does not exist and create_table=False.")
            cur.execute(create_sql)
        return not existed

    def write(self, rows: list[ResultRow]) -> None:
        if self._streaming:
            self._write_streaming(rows)
            return
        main, errors, _ = self._tuples(rows)
        layout = self.layout
        key = quote(layout.key_column)
        with closing(self._conn.cursor()) as cur:
            if self._direct_main:
                self._copy(cur, layout.qualified, self._main_cols, main)
            else:
                self._copy(cur, quote(_STAGE), self._main_cols, main)
                cur.execute(layout.upsert_sql("%s", source=quote(_STAGE)))
                if self._clear_errors:
                    cur.execute(
                        f"DELETE FROM {layout.errors_qualified} AS e USING {quote(_STAGE)} AS s "
                        f"WHERE e.{key} = s.{key} AND s.outcome = %s",
                        (SUCCEEDED,),
                    )
            if errors:
                if self._direct_errors:
                    self._copy(cur, layout.errors_qualified, self._error_cols, errors)
                else:
                    self._copy(cur, quote(_ERRORS_STAGE), self._error_cols, errors)
                    cur.execute(layout.upsert_sql("%s", errors=True, source=quote(_ERRORS_STAGE)))
        self.rows_written += len(rows)
        self._since_commit += len(rows)
        # A staged chunk must be committed (that empties the staging table); a direct copy may batch commits.
        if not (self._direct_main and self._direct_errors) or self._commit_due():
            self._commit()

    # ---- streaming COPY (both tables created by this load, psycopg 3) -------------------------------------

    def _write_streaming(self, rows: list[ResultRow]) -> None:
        """Append a chunk to one COPY kept open across chunks; errors rows wait in a bounded buffer."""
        main, errors, _ = self._tuples(rows)
        if self._main_copy is None:
            self._cur = self._conn.cursor()
            self._copy_stack = ExitStack()
            sql = f"COPY {self.layout.qualified} ({self._main_cols}) FROM STDIN"
            self._main_copy = self._copy_stack.enter_context(self._cur.copy(sql))
        deque(map(self._main_copy.write_row, main), maxlen=0)  # consumed in C: no Python step per row
        self._pending_errors += errors
        self.rows_written += len(rows)
        self._since_commit += len(rows)
        due = self._commit_due()
        if due or len(self._pending_errors) >= ERRORS_BUFFER_ROWS:
            self._end_copy()
        if due:
            self._commit()

    def _end_copy(self, error: BaseException | None = None) -> None:
        """Finish the open COPY (or fail it, given ``error``), then copy the buffered errors rows."""
        stack, self._copy_stack, self._main_copy = self._copy_stack, None, None
        if stack is not None:
            if error is None:
                stack.close()  # COPY done: the server has every row sent so far
            else:
                stack.__exit__(type(error), error, error.__traceback__)  # CopyFail: nothing of it is kept
        if error is None and self._pending_errors:
            errors, self._pending_errors = self._pending_errors, []
            with closing(self._conn.cursor()) as cur:
                self._copy(cur, self.layout.errors_qualified, self._error_cols, errors)

    def close(self) -> None:
        if self._conn is not None and self._streaming:
            self._end_copy()
        self._close_cursor()
        super().close()

    def abort(self) -> None:
        if self._conn is not None and self._streaming:
            try:
                self._end_copy(GeminiBatchError("load aborted"))
            except Exception:  # the connection is rolled back and closed next, whatever happened here
                log.debug("Ending the COPY on abort failed", exc_info=True)
        self._close_cursor()
        super().abort()

    def _close_cursor(self) -> None:
        if self._cur is not None:
            with suppress(Exception):
                self._cur.close()
            self._cur = None

    def _copy(self, cur: Any, table: str, columns: str, tuples: Iterable[tuple]) -> None:
        sql = f"COPY {table} ({columns}) FROM STDIN"
        if self._psycopg3:
            with cur.copy(sql) as copy:
                write_row = copy.write_row
                for t in tuples:
                    write_row(t)
            return
        buf = io.StringIO()
        for t in tuples:
            buf.write("\t".join(map(copy_text_cell, t)))
            buf.write("\n")
        buf.seek(0)
        cur.copy_expert(sql, buf)

    def _tuples(self, rows: list[ResultRow]) -> tuple[Iterable[tuple], list[tuple], list[Any]]:
        # Unlike SQLite, embeddings stay lists (psycopg adapts them to float8[]); JSON fields stay JSON text.
        # Without output columns the rows are converted by C-level maps, lazily as COPY writes them.
        tail = self._tail
        columns = list(self.layout.output_columns)
        if columns:
            main: Iterable[tuple] = [r[:N_STORED] + tail + self._extras(r.value, columns) for r in rows]
        else:
            main = map(add, map(STORED_VALUES, rows), repeat(tail))
        errors, _ = self._error_tuples(rows, False)  # succeeded keys leave the errors table by a join
        return main, errors, []

    @staticmethod
    def _extras(value: Any, columns: list[str]) -> tuple:
        if not isinstance(value, dict):
            return (None,) * len(columns)
        return tuple(json_cell(value.get(c)) for c in columns)
