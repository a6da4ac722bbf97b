"""Incremental runs onto a BigQuery destination: its succeeded answers mirrored once into a local SQLite file,
then looked up there by the SQL path's own statement (:class:`~airflow_gemini_batch.inputs.incremental.
ReuseCheck`).

Invariants:

* One read of the destination per check, never a query per fetched batch: a BigQuery query job per batch
  would be billed for a scan of the destination's columns each time and wait for a job each time. The check
  opens one Storage Read session with ``selected_fields`` (the key, ``request_fingerprint``, the token
  columns, and ``job_name`` when this task instance's own jobs are excluded: what the lookup reads) and a ``row_restriction`` (``outcome = 'succeeded'``, key
  and fingerprint not NULL), so only those rows and columns leave BigQuery, from the session's snapshot.
* Bounded memory: each Arrow record batch is inserted ``MIRROR_CHUNK`` rows at a time (``executemany``) into a
  table of a temporary SQLite file whose PRIMARY KEY is the destination's key (the index the lookup needs),
  all in one transaction, without a journal (the file is thrown away on any failure). What is held is one
  record batch and one chunk of Python values, never a set of every fingerprint.
* The lookups are the SQLite statements of :class:`ReuseCheck` on the mirror (not a copy of them): the same
  match (key *and* fingerprint, ``succeeded``, not an answer of this task instance's own jobs), the same
  counts and token sums. The mirror holds only succeeded rows; its ``outcome`` column is a constant
  (generated, stored nowhere) so that statement applies unchanged.
* Where the Storage Read API is unavailable (not enabled, no permission, no gRPC), the same columns plus
  ``outcome`` are read by paged ``list_rows`` and filtered here. The switch happens when the session is
  refused, before any row is mirrored, so no row is read twice.
* A destination that does not exist yet, or has no ``request_fingerprint`` column, reuses nothing, with the
  SQL path's log lines; one without the key column is refused. Keys are STRING or INT64, as the BigQuery sink
  writes them (an INT64 key compares numerically with the wire key, as an INTEGER column does on SQLite).
* A key held twice (BigQuery enforces no unique key; the load's ``MERGE`` never makes one, a hand-written row
  can) is mirrored once: the row read last.
* The mirror file is deleted on close, and when building it fails part-way.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import BigQueryClients
from airflow_gemini_batch.inputs.bigquery import storage_read_unavailable
from airflow_gemini_batch.inputs.incremental import JOB_COLUMN, TOKEN_COLUMNS, ReuseCheck, ReuseDestination
from airflow_gemini_batch.results.rows import SUCCEEDED
from airflow_gemini_batch.sinks.schema import FINGERPRINT_COLUMN, SQLITE, check_identifier, quote

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import pyarrow as pa

log = logging.getLogger(__name__)

#: Rows inserted per ``executemany``: bounds the Python values alive at once.
MIRROR_CHUNK = 10_000
#: Rows per page of the ``list_rows`` fallback.
LIST_PAGE_ROWS = 50_000
#: A progress line every this many mirrored rows.
PROGRESS_ROWS = 1_000_000
#: The mirror's table (in its own file, so no name can clash).
MIRROR_TABLE = "answers"
#: The destination's key column type (as the BigQuery sink writes it) → the mirror's key column type.
_KEY_TYPES = {"INT64": "INTEGER", "INTEGER": "INTEGER", "STRING": "TEXT"}


class BigQueryReuseCheck(ReuseCheck):
    """:class:`ReuseCheck` for a BigQuery destination: mirrors its succeeded answers at open (see the module).

    :param destination: the checked destination (``destination_conn_id`` a ``google_cloud_platform``
        connection, ``destination_table`` ``dataset.table`` or ``project.dataset.table``).
    :param clients: the connection's BigQuery clients (default: made from ``destination_conn_id``).
    :param exclude_jobs: job names whose answers are not reused (this task instance's own).
    """

    def __init__(
        self,
        destination: ReuseDestination,
        clients: BigQueryClients | None = None,
        exclude_jobs: Sequence[str] = (),
    ) -> None:
        self._begin(destination, exclude_jobs)
        self.dialect = SQLITE  # the lookups run on the mirror
        check_identifier(destination.destination_key_column, "destination_key_column")
        self.clients = clients or BigQueryClients(str(destination.destination_conn_id))
        self.table = self.clients.table_id(str(destination.destination_table), "destination_table")
        #: how the mirror was read: "storage" (Storage Read API) or "list_rows" (the paged fallback)
        self.read_path: str | None = None
        #: rows the mirror holds (succeeded answers with a fingerprint)
        self.mirrored = 0
        self._path: Path | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def open(self) -> bool:
        """Find the table; False (nothing can be reused) when it or its fingerprint column is missing; else
        mirror its succeeded answers and prepare the lookup on the mirror."""
        from google.api_core.exceptions import NotFound

        try:
            schema = {f.name: f for f in self.clients.client.get_table(str(self.table)).schema}
        except NotFound:
            schema = {}
        if not self._usable({name: str(f.field_type) for name, f in schema.items()}):
            return False
        key = self.destination.destination_key_column
        key_type = _KEY_TYPES.get(str(schema[key].field_type).upper())
        if key_type is None:
            raise GeminiBatchInputError(
                f"incremental=True: the key column {key!r} of {self.table} is {schema[key].field_type}; "
                "BigQuery keys are STRING or INT64 (the load's key_column_type)."
            )
        # job_name only when the lookup excludes jobs (a retry or clear): else no statement reads it.
        wanted = (key, FINGERPRINT_COLUMN, *TOKEN_COLUMNS, *((JOB_COLUMN,) if self.exclude_jobs else ()))
        fields = [c for c in wanted if c in schema]
        try:
            self._mirror(fields, key_type, schema)
        except BaseException:
            self.close()
            raise
        self._prepare(quote(MIRROR_TABLE), integer_keys=key_type == "INTEGER")
        return True

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._path is not None:
                self._path.unlink(missing_ok=True)
                self._path = None

    # ---- the mirror ---------------------------------------------------------------------------------------

    def _mirror(self, fields: list[str], key_type: str, schema: dict[str, Any]) -> None:
        """A temporary SQLite file holding the destination's succeeded answers (``fields`` of them), keyed by
        the key; its connection becomes the lookup's."""
        fd, name = tempfile.mkstemp(prefix="gemini-bq-reuse-", suffix=".sqlite3")
        os.close(fd)
        self._path = Path(name)
        conn = sqlite3.connect(name)
        self._conn = conn  # closed by close() from here on
        # A throwaway file: a failed build is deleted, not rolled back.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        key = self.destination.destination_key_column
        # Every column the lookup reads, whether the destination has it or not (a missing one reads NULL).
        columns = [f"{quote(key)} {key_type} PRIMARY KEY", f"{quote(FINGERPRINT_COLUMN)} TEXT"]
        columns += [f"{quote(c)} INTEGER" for c in TOKEN_COLUMNS]
        columns += [f"{quote(JOB_COLUMN)} TEXT", f"outcome TEXT GENERATED ALWAYS AS ('{SUCCEEDED}') VIRTUAL"]
        # A text key is the table's own B-tree key (no rowid, so not stored twice); an integer one is the rowid.
        rowid = " WITHOUT ROWID" if key_type == "TEXT" else ""
        conn.execute(f"CREATE TABLE {quote(MIRROR_TABLE)} ({', '.join(columns)}){rowid}")
        insert = (
            f"INSERT OR REPLACE INTO {quote(MIRROR_TABLE)} ({', '.join(map(quote, fields))}) "
            f"VALUES ({', '.join('?' * len(fields))})"
        )
        log.info("Incremental: mirroring the succeeded answers of %s into %s", self.table, name)
        started = time.monotonic()
        next_progress = PROGRESS_ROWS
        for batch in self._record_batches(fields, schema):
            # By name: a session may order the selected fields as the table does.
            values = [batch.column(f) for f in fields]
            for offset in range(0, batch.num_rows, MIRROR_CHUNK):
                part = (v.slice(offset, MIRROR_CHUNK).to_pylist() for v in values)
                conn.executemany(insert, zip(*part, strict=True))
            self.mirrored += batch.num_rows
            if self.mirrored >= next_progress:
                log.info(
                    "Incremental: %s answers of %s mirrored (%s rows/s)",
                    f"{self.mirrored:,}",
                    self.table,
                    f"{self.mirrored / max(time.monotonic() - started, 1e-9):,.0f}",
                )
                next_progress += PROGRESS_ROWS
        conn.commit()
        elapsed = time.monotonic() - started
        log.info(
            "Incremental: mirrored %s succeeded answers of %s in %.1f s (%s rows/s, read by %s)",
            f"{self.mirrored:,}",
            self.table,
            elapsed,
            f"{self.mirrored / max(elapsed, 1e-9):,.0f}",
            "the Storage Read API" if self.read_path == "storage" else "paged list_rows",
        )

    def _record_batches(self, fields: list[str], schema: dict[str, Any]) -> Iterator[pa.RecordBatch]:
        """The succeeded answers' ``fields``: one Storage Read session (restricted and projected in BigQuery),
        or, when the API is unavailable, paged ``list_rows`` filtered here."""
        from google.cloud.bigquery_storage_v1 import types

        key = self.destination.destination_key_column
        restriction = (
            f"`outcome` = '{SUCCEEDED}' AND `{key}` IS NOT NULL AND `{FINGERPRINT_COLUMN}` IS NOT NULL"
        )
        t = self.table
        request = types.ReadSession(
            table=f"projects/{t.project}/datasets/{t.dataset}/tables/{t.table}",
            data_format=types.DataFormat.ARROW,
            read_options=types.ReadSession.TableReadOptions(
                selected_fields=fields, row_restriction=restriction
            ),
        )
        try:
            read_client = self.clients.read_client()
            session = read_client.create_read_session(
                parent=f"projects/{self.clients.project}", read_session=request, max_stream_count=1
            )
        except Exception as e:
            if not storage_read_unavailable(e):
                raise
            log.warning(
                "The BigQuery Storage Read API is unavailable (%s: %s); reading the answers of %s through "
                "paged list_rows instead (slower, and every row is read: enable the API and grant "
                "bigquery.readsessions.create to use it).",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
                t,
            )
            self.read_path = "list_rows"
            yield from self._listed(fields, schema)
            return
        self.read_path = "storage"
        if not session.streams:  # nothing matched
            return
        import pyarrow as pa

        # The messages' Arrow IPC parsed here (the reader's own to_arrow is deprecated); the stream object
        # resumes at its offset after a transient error.
        arrow_schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
        for stream in session.streams:
            for response in read_client.read_rows(stream.name):
                message = response.arrow_record_batch.serialized_record_batch
                yield pa.ipc.read_record_batch(pa.py_buffer(message), arrow_schema)

    def _listed(self, fields: list[str], schema: dict[str, Any]) -> Iterator[pa.RecordBatch]:
        """The fallback: ``fields`` and ``outcome`` page by page, only the rows the restriction would keep."""
        import pyarrow.compute as pc

        key = self.destination.destination_key_column
        selected = [schema[c] for c in (*fields, "outcome")]
        rows = self.clients.client.list_rows(
            str(self.table), selected_fields=selected, page_size=LIST_PAGE_ROWS
        )
        for batch in rows.to_arrow_iterable():
            kept = pc.and_(
                pc.equal(batch.column("outcome"), SUCCEEDED),
                pc.and_(pc.is_valid(batch.column(key)), pc.is_valid(batch.column(FINGERPRINT_COLUMN))),
            )
            yield batch.filter(kept)
