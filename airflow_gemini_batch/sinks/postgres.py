"""PostgreSQL table sink: the COPY fast path, with an upsert so that reruns never duplicate.

Invariants (on top of :mod:`airflow_gemini_batch.sinks.table`):

* Rows reach the server with ``COPY ... FROM STDIN`` (psycopg 3 ``write_row``, or psycopg2 ``copy_expert``
  with text-format escaping), never as one ``INSERT`` per row.
* Into a table this load just created, keys cannot conflict (reconciliation loads each key once), so rows are
  copied straight into it. Into an existing table they are copied into a temporary staging table and merged
  with ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE``, one chunk per transaction (the staging table is
  ``ON COMMIT DELETE ROWS``, so it never grows beyond a chunk).
* Embeddings are ``DOUBLE PRECISION[]``; structured output is ``JSONB``; ``loaded_at`` is ``TIMESTAMPTZ``.
"""

from __future__ import annotations

import io
from contextlib import closing
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results import N_STORED, SUCCEEDED
from airflow_gemini_batch.sinks.schema import quote
from airflow_gemini_batch.sinks.table import TableSink, json_cell

if TYPE_CHECKING:
    from airflow_gemini_batch.results import ResultRow

_STAGE = "gemini_batch_stage"
_ERRORS_STAGE = "gemini_batch_errors_stage"


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
        self._loaded_at = self.loaded_at

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
        if not (self._direct_main and self._direct_errors) or self._since_commit >= self.commit_every:
            self._conn.commit()
            self._since_commit = 0

    def _copy(self, cur: Any, table: str, columns: str, tuples: list[tuple]) -> None:
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

    def _tuples(self, rows: list[ResultRow]) -> tuple[list[tuple], list[tuple], list[Any]]:
        # Unlike SQLite, embeddings stay lists (psycopg adapts them to float8[]); JSON fields stay JSON text.
        loaded_at = self._loaded_at
        tail = (loaded_at,)
        n = N_STORED
        columns = list(self.layout.output_columns)
        if columns:
            main = [r[:n] + tail + self._extras(r.value, columns) for r in rows]
        else:
            main = [r[:n] + tail for r in rows]
        errors = [(r[0], r[1], r[12], r[13], r[14], loaded_at) for r in rows if r[1] != SUCCEEDED]
        return main, errors, []

    @staticmethod
    def _extras(value: Any, columns: list[str]) -> tuple:
        if not isinstance(value, dict):
            return (None,) * len(columns)
        return tuple(json_cell(value.get(c)) for c in columns)
