"""BigQuery sink: result rows → NDJSON load jobs into a staging table → one ``MERGE`` on the key per table.

Invariants:

* A rerun never duplicates: the destination is written only by ``MERGE ... ON t.key = s.key`` (update when
  matched, insert when not), so loading the same results twice leaves one row per key.
* A failed load leaves the destination as it was: until :meth:`close`, rows go only to a staging table of this
  load's own (``<table>__gemini_batch_stage_<hex>``, in the destination's dataset, expiring in a day); on
  :meth:`abort` it is dropped and the destination was never touched. A destination this load *created* (so
  empty, and nobody else's) takes the load jobs directly, with no stage and no MERGE (that is most of a
  first load's cost); on abort it is dropped, which is again how it was before: absent. A load job is atomic
  (all its rows or none).
* The destination and its errors table change together or not at all: their two ``MERGE`` statements run as
  one script job inside ``BEGIN TRANSACTION; ... COMMIT TRANSACTION;`` (:func:`merge_script`), so a failure at
  the second rolls back the first. A load that fails there leaves both tables as they were (and the caller's
  :meth:`abort` drops a destination this load created); the rerun merges everything again.
* Bounded memory: :meth:`write` serialises each chunk to NDJSON in a temporary *file*; once it holds
  ``load_chunk_bytes`` it is sent as one load job (a resumable upload streamed from the file) and emptied. So
  memory is one chunk of rows plus the client's upload buffer, whatever the row count. The file, not memory,
  holds up to ``load_chunk_bytes`` (1 GiB): few, large load jobs, since a table's daily load-job limit is
  fixed (BigQuery's advice: fewer and larger writes), while the worker's disk easily holds a GiB.
* The schema is derived from :data:`~airflow_gemini_batch.sinks.schema.RESULT_COLUMNS` (the PostgreSQL type
  of each column mapped to its BigQuery type: ``JSONB`` → ``JSON``, ``DOUBLE PRECISION[]`` →
  ``ARRAY<FLOAT64>``, ``INTEGER`` → ``INT64``, ``TIMESTAMPTZ`` → ``TIMESTAMP``, text → ``STRING``), so a column
  added there reaches BigQuery with no change here. Identifiers were validated (``check_identifier``,
  :func:`~airflow_gemini_batch.hooks.bigquery.parse_table_id`) and are backtick-quoted; row data travels only
  in the load jobs' NDJSON, never in SQL.
* ``MERGE`` lists its columns (``INSERT (cols) VALUES (s.cols)``), not ``INSERT ROW``: the same statement runs
  on BigQuery and on its emulator, which cannot parse ``INSERT ROW``.
* A destination made before ``request_fingerprint`` or ``attempts`` existed, or an errors table made before
  ``attempts``, gets the column (:meth:`BigQueryTableSink._ensure_columns`), as the SQL sinks do.
* The errors table is merged from the same staging table: non-succeeded keys upserted, keys that succeeded
  now deleted, so it lists exactly the keys that need attention.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results.rows import N_STORED, STORED_FIELDS, SUCCEEDED, count_succeeded
from airflow_gemini_batch.sinks.schema import (
    ATTEMPTS,
    ERROR_COLUMNS,
    FINGERPRINT_COLUMN,
    LOADED_AT,
    RESULT_COLUMNS,
    check_identifier,
)
from airflow_gemini_batch.sinks.table import json_cell

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from google.cloud.bigquery import Client, SchemaField

    from airflow_gemini_batch.hooks.bigquery import BigQueryClients, TableId
    from airflow_gemini_batch.results.rows import ResultRow

log = logging.getLogger(__name__)

_JSON_VALUE = STORED_FIELDS[3]
LOAD_CHUNK_BYTES = 1024 * 1024 * 1024
STAGE_EXPIRATION_MS = 24 * 3600 * 1000

# PostgreSQL column types (RESULT_COLUMNS' third field, and names users give) → BigQuery types.
_BQ_TYPES = {
    "TEXT": "STRING",
    "VARCHAR": "STRING",
    "STRING": "STRING",
    "INTEGER": "INT64",
    "INT": "INT64",
    "BIGINT": "INT64",
    "SMALLINT": "INT64",
    "INT64": "INT64",
    "REAL": "FLOAT64",
    "DOUBLE PRECISION": "FLOAT64",
    "FLOAT": "FLOAT64",
    "FLOAT64": "FLOAT64",
    "NUMERIC": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
    "BOOLEAN": "BOOL",
    "BOOL": "BOOL",
    "JSON": "JSON",
    "JSONB": "JSON",
    "DATE": "DATE",
    "DATETIME": "DATETIME",
    "TIMESTAMP": "TIMESTAMP",
    "TIMESTAMPTZ": "TIMESTAMP",
    "BYTES": "BYTES",
}
KEY_TYPES = frozenset({"STRING", "INT64"})


def bigquery_type(type_name: str, what: str) -> tuple[str, str]:
    """A column type as given (BigQuery or PostgreSQL spelling) → ``(BigQuery type, mode)``."""
    normalized = " ".join(str(type_name).upper().replace("NOT NULL", "").split())
    mode = "NULLABLE"
    if normalized.endswith("[]"):
        normalized, mode = normalized[:-2].strip(), "REPEATED"
    elif normalized.startswith("ARRAY<") and normalized.endswith(">"):
        normalized, mode = normalized[6:-1].strip(), "REPEATED"
    bq = _BQ_TYPES.get(normalized)
    if bq is None:
        raise GeminiBatchInputError(
            f"Type {type_name!r} for {what} is not a BigQuery column type here; allowed: {sorted(set(_BQ_TYPES))} "
            "(or ARRAY<...> of one)."
        )
    return bq, mode


def merge_script(statements: Sequence[str]) -> str:
    """One statement as it is; several as one script job in a multi-statement transaction, so they apply
    together or not at all (a failing statement rolls back the ones before it, and the script fails)."""
    if len(statements) == 1:
        return statements[0]
    return "BEGIN TRANSACTION;\n" + "".join(f"{s};\n" for s in statements) + "COMMIT TRANSACTION;"


class BigQueryTableSink:
    """Writes :class:`ResultRow` chunks into a BigQuery table (and its errors table) through a staging table.

    :param clients: the connection's BigQuery clients (the provider's ``BigQueryHook``).
    :param table: ``dataset.table`` or ``project.dataset.table``.
    :param key_column: the key column's name.
    :param key_column_type: ``STRING`` (also ``TEXT``) or ``INT64`` (also ``INTEGER``, ``BIGINT``).
    :param output_columns: structured-output fields → column types (BigQuery or PostgreSQL spelling).
    :param errors_table: default ``<table>_errors`` in the same dataset.
    :param create_table: create the tables when missing (otherwise a missing table is an error).
    :param time_partitioning: the destination's ``timePartitioning`` (API form, e.g. ``{"type": "DAY",
        "field": "loaded_at"}``), used when this sink creates it.
    :param cluster_fields: the destination's clustering columns, used when this sink creates it.
    :param load_chunk_bytes: NDJSON bytes per load job.
    :param attempts: the ``attempts`` value of every row of this load (1, or the row-retry round).
    """

    def __init__(
        self,
        clients: BigQueryClients,
        table: str,
        *,
        key_column: str = "key",
        key_column_type: str = "STRING",
        output_columns: Mapping[str, str] | None = None,
        errors_table: str | None = None,
        create_table: bool = True,
        time_partitioning: Mapping[str, Any] | None = None,
        cluster_fields: Sequence[str] | None = None,
        load_chunk_bytes: int = LOAD_CHUNK_BYTES,
        attempts: int = 1,
    ) -> None:
        self.clients = clients
        self.table_text = table
        self.key_column = check_identifier(key_column, "key column")
        key_type, _ = bigquery_type(key_column_type, "key_column_type")
        if key_type not in KEY_TYPES:
            raise GeminiBatchInputError(
                f"key_column_type {key_column_type!r}: BigQuery keys are STRING or INT64."
            )
        self.integer_keys = key_type == "INT64"
        reserved = {c for c, _, _ in RESULT_COLUMNS} | {LOADED_AT[0], ATTEMPTS[0], self.key_column}
        self.output_columns: dict[str, tuple[str, str]] = {}
        for column, type_name in (output_columns or {}).items():
            check_identifier(column, "output column")
            if column in reserved:
                raise GeminiBatchInputError(f"Output column {column!r} clashes with a result column.")
            self.output_columns[column] = bigquery_type(type_name, f"output column {column!r}")
        self.errors_text = errors_table
        self.create_table = create_table
        self.time_partitioning = dict(time_partitioning) if time_partitioning else None
        self.cluster_fields = [check_identifier(c, "cluster field") for c in cluster_fields or ()]
        self.load_chunk_bytes = load_chunk_bytes
        self.attempts = int(attempts)
        #: Whether the destination has (or gets) the ``attempts`` column; decided at ``open()``.
        self.attempts_column = True
        #: The same for the errors table (a row that failed in every round shows how many it had).
        self.errors_attempts_column = True
        self._key_type = key_type
        self.loaded_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        self.rows_written = 0
        self.load_jobs = 0
        self._failed_rows = 0
        self._file: IO[bytes] | None = None
        self._file_bytes = 0
        self._stage: TableId | None = None
        self._stage_exists = False
        self._errors_existed = True
        self._direct = False
        self._stored_names: list[str] = []

    # ---- names and schema ---------------------------------------------------------------------------------

    @property
    def table(self) -> TableId:
        return self.clients.table_id(self.table_text, "destination_table")

    @property
    def errors(self) -> TableId:
        if self.errors_text:
            return self.clients.table_id(self.errors_text, "errors_table")
        return self.table.sibling(f"{self.table.table}_errors")

    @property
    def columns(self) -> list[tuple[str, tuple[str, str]]]:
        """Column names and (type, mode): ResultRow's stored fields, loaded_at, attempts, output columns."""
        cols = [(self.key_column, (self._key_type, "NULLABLE"))]
        cols += [(name, bigquery_type(pg, name)) for name, _, pg in RESULT_COLUMNS]
        cols.append((LOADED_AT[0], bigquery_type(LOADED_AT[2], LOADED_AT[0])))
        if self.attempts_column:
            cols.append((ATTEMPTS[0], bigquery_type(ATTEMPTS[2], ATTEMPTS[0])))
        return cols + list(self.output_columns.items())

    def schema(self, names: Sequence[str] | None = None) -> list[SchemaField]:
        from google.cloud.bigquery import SchemaField

        wanted = set(names) if names is not None else None
        return [
            SchemaField(name, type_, mode=mode)
            for name, (type_, mode) in self.columns
            if wanted is None or name in wanted
        ]

    def _error_names(self) -> list[str]:
        names = [self.key_column, *ERROR_COLUMNS, LOADED_AT[0]]
        # The stage carries attempts only when the destination does (``columns``), and the errors table takes
        # them from the stage.
        return [*names, ATTEMPTS[0]] if self.attempts_column and self.errors_attempts_column else names

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def open(self) -> None:
        client = self.clients.client
        table, errors = self.table, self.errors
        # A destination this load created is empty and its own: rows are loaded into it directly (no stage, no
        # MERGE), and an aborted load drops it again, so the destination is "as it was": absent.
        self._direct = self._ensure(client, table, self.schema(), partitioned=True)
        self._errors_existed = not self._ensure(
            client, errors, self.schema(self._error_names()), partitioned=False
        )
        self._stored_names = [n for n, _ in self.columns][:N_STORED]
        self._stage = (
            table
            if self._direct
            else table.sibling(f"{table.table}__gemini_batch_stage_{uuid.uuid4().hex[:12]}")
        )
        self._file = tempfile.TemporaryFile(prefix="gemini-bq-load-")  # noqa: SIM115 - closed in close()/abort()
        self._file_bytes = 0

    def _ensure(
        self, client: Client, table_id: TableId, schema: list[SchemaField], partitioned: bool
    ) -> bool:
        """Create ``table_id`` when missing (True if this call created it)."""
        from google.api_core.exceptions import Conflict, NotFound
        from google.cloud.bigquery import Table, TimePartitioning

        try:
            existing = client.get_table(str(table_id))
            self._ensure_columns(client, table_id, existing, errors=not partitioned)
            return False
        except NotFound:
            if not self.create_table:
                raise GeminiBatchInputError(
                    f"BigQuery table {table_id} does not exist and create_table=False; create it or drop that "
                    "argument."
                ) from None
        table = Table(str(table_id), schema=schema)
        if partitioned and self.time_partitioning:
            table.time_partitioning = TimePartitioning.from_api_repr(self.time_partitioning)
        if partitioned and self.cluster_fields:
            table.clustering_fields = self.cluster_fields
        try:
            client.create_table(table)
        except Conflict:  # created meanwhile by a concurrent load: theirs is the same schema
            return False
        log.info("Created BigQuery table %s", table_id)
        return True

    def _ensure_columns(self, client: Client, table_id: TableId, table: Any, errors: bool) -> None:
        """A table made before a column existed gets it: the destination ``request_fingerprint`` always (as
        the SQL sinks do: a NULLABLE column, old rows read NULL, so an incremental run sends them once more),
        and either table ``attempts`` when ``create_table`` (else the load leaves that table alone and writes
        no attempts there).

        DDL through the client (one ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` job per column) rather than
        a schema patch: the emulator applies ALTER TABLE but ignores a patched schema, and takes only one
        ALTER command per statement; BigQuery accepts both forms.
        """
        have = {f.name for f in table.schema}
        missing = [] if errors or FINGERPRINT_COLUMN in have else [(FINGERPRINT_COLUMN, "STRING")]
        if ATTEMPTS[0] not in have:
            if self.create_table:
                missing.append((ATTEMPTS[0], "INT64"))
            else:
                log.warning("%s has no attempts column and create_table=False: loading without it", table_id)
                if errors:
                    self.errors_attempts_column = False
                else:
                    self.attempts_column = False
        for column, type_ in missing:
            log.info("Adding the %s column to %s (made before it existed)", column, table_id)
            self._run(client, f"ALTER TABLE {table_id.sql} ADD COLUMN IF NOT EXISTS `{column}` {type_}")

    def write(self, rows: list[ResultRow]) -> None:
        assert self._file is not None, "open() first"
        # Line by line into the file's buffer, not one joined chunk: each line is freed as soon as it is
        # buffered, so the allocator reuses one small block instead of mapping and unmapping fresh pages for
        # every chunk's lines and their join (page faults that cost more than the serialising).
        self._file.writelines(map(self._ndjson_line, rows))
        self._file_bytes = self._file.tell()
        self.rows_written += len(rows)
        self._failed_rows += len(rows) - count_succeeded(rows)
        if self._file_bytes >= self.load_chunk_bytes:
            self._load_chunk()

    def _ndjson_line(self, row: ResultRow) -> bytes:
        """One row as one NDJSON line: a dict built straight from the row's stored fields (the hot path)."""
        line = dict(zip(self._stored_names, row[:N_STORED], strict=True))
        key = row[0]
        if self.integer_keys and not isinstance(key, int):
            try:
                line[self.key_column] = int(key)
            except (TypeError, ValueError):
                raise GeminiBatchInputError(
                    f"Key {key!r} is not an integer but key_column_type is INT64; use key_column_type='STRING'."
                ) from None
        if row[3] is not None:  # json_value: JSON text, embedded as JSON (not as a JSON string)
            line[_JSON_VALUE] = orjson.Fragment(row[3])
        line[LOADED_AT[0]] = self.loaded_at
        if self.attempts_column:
            line[ATTEMPTS[0]] = self.attempts
        if self.output_columns:
            value = row.value if isinstance(row.value, dict) else {}
            for name, (type_, _) in self.output_columns.items():
                cell = value.get(name)
                line[name] = cell if type_ == "JSON" else json_cell(cell)
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    def _load_chunk(self) -> None:
        """One load job: the temporary file's NDJSON appended to the staging table (all of it or none)."""
        from google.cloud.bigquery import LoadJobConfig

        if self._file is None or not self._file_bytes:
            return
        assert self._stage is not None
        client = self.clients.client
        self._file.seek(0)
        config = LoadJobConfig(
            schema=self.schema(),
            source_format="NEWLINE_DELIMITED_JSON",
            write_disposition="WRITE_APPEND",
            create_disposition="CREATE_IF_NEEDED",
        )
        # No size: a resumable upload streamed from the file (the emulator refuses the client's multipart form).
        job = client.load_table_from_file(
            self._file, str(self._stage), job_config=config, location=self.clients.location
        )
        job.result()
        if not self._stage_exists:
            self._stage_exists = True
            if not self._direct:
                self._expire_stage(client)
        self.load_jobs += 1
        self._file.seek(0)
        self._file.truncate()
        self._file_bytes = 0

    def _expire_stage(self, client: Client) -> None:
        """The staging table expires in a day, should this process die before dropping it."""
        from datetime import timedelta

        try:
            stage = client.get_table(str(self._stage))
            stage.expires = datetime.now(timezone.utc) + timedelta(milliseconds=STAGE_EXPIRATION_MS)
            client.update_table(stage, ["expires"])
        except Exception:  # an expiry is a convenience; the stage is dropped at close/abort anyway
            log.debug("Could not set an expiry on %s", self._stage, exc_info=True)

    def _merge_sql(self, target: TableId, names: list[str], errors: bool) -> str:
        key = f"`{self.key_column}`"
        q = [f"`{n}`" for n in names]
        updates = ", ".join(f"{c} = s.{c}" for c in q if c != key)
        inserts = f"INSERT ({', '.join(q)}) VALUES ({', '.join('s.' + c for c in q)})"
        assert self._stage is not None
        head = f"MERGE {target.sql} AS t USING {self._stage.sql} AS s ON t.{key} = s.{key}\n"
        if not errors:
            return f"{head}WHEN MATCHED THEN UPDATE SET {updates}\nWHEN NOT MATCHED THEN {inserts}"
        done = f"s.`outcome` = '{SUCCEEDED}'"  # a constant of ours, not row data
        return (
            f"{head}WHEN MATCHED AND {done} THEN DELETE\n"
            f"WHEN MATCHED THEN UPDATE SET {updates}\n"
            f"WHEN NOT MATCHED AND NOT {done} THEN {inserts}"
        )

    def _run(self, client: Client, sql: str) -> Any:
        job = client.query(sql, location=self.clients.location)
        job.result()
        return job

    def close(self) -> None:
        """Last chunk → staging; the destination's and the errors table's ``MERGE`` as one transaction; drop
        the stage."""
        try:
            self._load_chunk()
            statements = self._merge_statements() if self._stage_exists else []
            if statements:
                job = self._run(self.clients.client, merge_script(statements))
                log.info("Merged %d rows into %s (job %s)", self.rows_written, self.table, job.job_id)
        finally:
            self._release()

    def _merge_statements(self) -> list[str]:
        """The destination's ``MERGE`` (none when this load created it: the rows are already there), then the
        errors table's (when it exists or gets rows)."""
        statements = []
        if not self._direct:
            statements.append(self._merge_sql(self.table, [n for n, _ in self.columns], errors=False))
        if self._failed_rows or self._errors_existed:
            statements.append(self._merge_sql(self.errors, self._error_names(), errors=True))
        return statements

    def abort(self) -> None:
        """Drop the staging table: nothing of this load reached the destination. A destination (and errors
        table) this load created is dropped too: before it, there was none."""
        if self._direct:
            client = self.clients.client
            doomed = [self.table] + ([] if self._errors_existed else [self.errors])
            for table in doomed:
                try:
                    client.delete_table(str(table), not_found_ok=True)
                except Exception:
                    log.warning("Could not drop %s, created by this aborted load", table)
            self._stage_exists = False
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._stage is not None and self._stage_exists and not self._direct:
            try:
                self.clients.client.delete_table(str(self._stage), not_found_ok=True)
            except Exception:  # it expires within a day anyway
                log.warning("Could not drop the staging table %s; it expires within a day", self._stage)
        self._stage_exists = False

    def describe(self) -> dict[str, Any]:
        return {"table": str(self.table), "errors_table": str(self.errors), "load_jobs": self.load_jobs}
