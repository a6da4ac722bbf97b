"""Incremental runs: leave out the rows whose answer is already in the destination for the same request.

A row is *reused* when the destination table has a row for its key with ``outcome = 'succeeded'`` and the
same ``request_fingerprint`` (:mod:`airflow_gemini_batch.inputs.fingerprint`): same model, same job-wide
config, same request. Its destination row stays as it is; it is counted (``reused``) and never sent. Every
other row - new, changed (prompt, model, config, schema), failed, invalid_output or missing last time - is
sent, so a changed prompt resends exactly the rows it changed.

Invariants:

* The database does the work, one fetched batch at a time: one parameterised left join of the batch (at most
  :data:`LOOKUP_BATCH` rows) with the destination on its primary key (index lookups, never a scan of the
  destination per batch), answering with one row: the reused rows' token sums and the positions of the rows to
  send. The reused count is the rest of the part (each input row comes out of the left join, NULL-extended
  exactly when nothing matched), so no aggregate counts it. The batch goes as two bound values built by joining
  what the encoder holds, with no Python step per row: the wire keys as one JSON array, and the fingerprints
  as one string (SQLite: the 64-hex-digit digests back to back, row ``j``'s cut out at ``64 j``; PostgreSQL:
  comma-separated, zipped with the keys by ``ROWS FROM``). Memory is one batch, never a set of every
  fingerprint in the table.
  Matching on the key as well as the fingerprint is what makes reuse per row: two keys with the same prompt
  share a fingerprint, but each has its own answer. (A key repeated in one batch is decided per row; the
  repeat is refused later as a duplicate.)
* PostgreSQL, integer keys: a part whose keys are dense (``max - min`` under :data:`DENSE_SPAN` times its
  length, as a source read in key order gives) is merge-joined with one index range scan over
  ``[min, max]`` instead: at most that many destination rows, so still bounded by the part and never by the
  table, and cheaper than one index descent per key. Any other part (sparse, or keys that are not integers)
  takes the per-key lookups. The planner is steered by ``SET LOCAL`` (this read-only transaction only),
  switched only when consecutive parts change kind.
* The lookup needs an index on the destination's key: the load creates its tables with the key as primary
  key, and its upsert (``ON CONFLICT`` on the key) needs a unique index there on any existing table too, so
  a table the load has written to always has one.
* The check only reads. A destination that does not exist yet (a first run) or has no ``request_fingerprint``
  column yet (written by a version before fingerprints; the load adds the column) reuses nothing: every row is
  sent, with a log line saying why.
* What re-sending the reused rows would have cost is known from their stored token columns, summed here: the
  four that pricing reads (:data:`REUSED_TOKEN_FIELDS`); ``total_tokens`` is not priced, and each summed
  column is a step per reused row.
* A BigQuery destination is read once per check into a local SQLite mirror and looked up there by the SQLite
  statement below (:mod:`airflow_gemini_batch.inputs.incremental_bigquery`): a query job per batch would be
  billed for a scan each time.
* Object-store destinations are refused for ``incremental=True``: their files are rewritten whole by each
  load, so a reused row would vanish from them.
* A row answered by the task instance's own jobs (``exclude_jobs``: every job its ledger recorded, in every
  row round) is never reused by it: a retry or a clear after a load must build the same shards as the try
  that created the jobs (else it looks like a changed input), and it re-attaches instead of paying again.
"""

from __future__ import annotations

import logging
import re
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.fingerprint import FINGERPRINT_HEX
from airflow_gemini_batch.results.rows import SUCCEEDED
from airflow_gemini_batch.sinks.schema import (
    FINGERPRINT_COLUMN,
    INTEGER_TYPES,
    POSTGRES,
    SQLITE,
    quote,
    quote_table,
    split_table,
)
from airflow_gemini_batch.sinks.table import dialect_of, get_db_hook

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow_gemini_batch.sinks.sink import SqlHook

log = logging.getLogger(__name__)

#: Keys looked up per query: bounds the statement and what one answer holds in memory.
LOOKUP_BATCH = 10_000
#: A PostgreSQL part of integer keys spanning fewer than this many values per key is looked up by a range.
DENSE_SPAN = 2
#: A joined batch of wire keys that are all integers a bigint holds (PostgreSQL casts them without a check).
_INTEGER_KEYS = re.compile(rb'"-?[0-9]{1,18}"(?:,"-?[0-9]{1,18}")*')
#: The destination's column naming the job that answered a row.
JOB_COLUMN = "job_name"
#: The token counts summed over the reused rows: what ``cost.pricing.compute_cost`` prices (prompt, cached at
#: the cache price, output and thinking as output).
REUSED_TOKEN_FIELDS = ("prompt", "output", "thinking", "cached")
#: The destination's columns holding them (the load's names, ``REUSED_TOKEN_FIELDS`` order).
TOKEN_COLUMNS = tuple(f"{name}_tokens" for name in REUSED_TOKEN_FIELDS)

#: The submit operator's parameters naming the destination: the load operator's own names (one place).
DESTINATION_PARAMETERS = (
    "destination_conn_id",
    "destination_table",
    "destination_path",
    "destination_key_column",
)


@dataclass(frozen=True)
class ReuseDestination:
    """Where an incremental submit looks for answers: the load's destination, by the load's parameter names.

    :param destination_conn_id: the load's ``destination_conn_id``.
    :param destination_table: the load's ``destination_table``.
    :param destination_path: the load's ``destination_path`` (refused: see the module docstring).
    :param destination_key_column: the load's ``key_column`` (the submit's ``key_column`` names the source's).
    """

    destination_conn_id: str | None = None
    destination_table: str | None = None
    destination_path: str | None = None
    destination_key_column: str = "key"

    def check(self) -> ReuseDestination:
        """Refuse what cannot be checked, before any row is read (:class:`GeminiBatchInputError`); the
        identifiers are checked when the check is made (templates rendered)."""
        if self.destination_path:
            raise GeminiBatchInputError(
                "incremental=True needs a table destination: object-store output (destination_path) is "
                "rewritten whole by each load, so reused rows would vanish from it. Fix: load into a table "
                "(destination_conn_id + destination_table), or set incremental=False."
            )
        if not self.destination_table or not self.destination_conn_id:
            raise GeminiBatchInputError(
                "incremental=True needs the load's destination on the submit operator too: "
                "destination_conn_id and destination_table (and destination_key_column, the load's "
                "key_column), so rows already answered there are not sent again."
            )
        return self


class ReuseCheck:
    """Drops, batch by batch, the rows whose answer the destination table already holds (see the module).

    :param destination: the checked destination.
    :param hook: a common-sql hook for it (default: the connection's own hook).
    :param exclude_jobs: job names whose answers are not reused (this task instance's own, see the module).
    """

    def __init__(
        self, destination: ReuseDestination, hook: SqlHook | None = None, exclude_jobs: Sequence[str] = ()
    ) -> None:
        self._begin(destination, exclude_jobs)
        split_table(str(destination.destination_table))  # identifiers once templates are rendered
        quote(destination.destination_key_column)
        self.hook = hook or get_db_hook(str(destination.destination_conn_id))
        self.dialect = dialect_of(self.hook)
        if self.dialect not in (SQLITE, POSTGRES):
            raise GeminiBatchInputError(
                "incremental=True supports SQLite, PostgreSQL and BigQuery (google_cloud_platform) "
                f"destinations, not {self.dialect!r}."
            )

    def _begin(self, destination: ReuseDestination, exclude_jobs: Sequence[str]) -> None:
        """What every check starts with, whatever holds the destination: nothing reused, no query yet."""
        self.destination = destination.check()
        #: one JSON array parameter, or None: no clause at all (the common first run costs nothing more)
        self.exclude_jobs = orjson.dumps(sorted(set(exclude_jobs))).decode() if exclude_jobs else None
        self.reused = 0
        self.tokens = dict.fromkeys(REUSED_TOKEN_FIELDS, 0)
        self._conn: Any = None
        self._sql: str | None = None
        self._sql_any: str | None = None  # PostgreSQL, integer key column: for a batch with other keys
        self._integer_keys: re.Pattern[bytes] | None = None
        self._sql_range: str | None = None  # PostgreSQL, integer key column: a part of dense keys
        self._by_range = False  # which plan the session's SET LOCAL settings steer to now

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def open(self) -> bool:
        """Connect and find the table; False (nothing can be reused) when it or its fingerprint column is
        missing."""
        schema, name = split_table(str(self.destination.destination_table))
        self._conn = self.hook.get_conn()
        columns = self._columns(schema, name)
        if not self._usable(columns):
            return False
        key_type = columns[self.destination.destination_key_column]
        self._prepare(quote_table(schema, name), key_type.split("(")[0].strip().upper() in INTEGER_TYPES)
        return True

    def _usable(self, columns: Mapping[str, str]) -> bool:
        """Whether a destination with these columns (name → type; none: it does not exist) can be checked:
        False, with the log line saying why, when it is absent or has no fingerprints yet; a destination
        without the key column is refused."""
        table = self.destination.destination_table
        if not columns:
            log.info("Incremental: %s does not exist yet; every row is sent.", table)
            return False
        if FINGERPRINT_COLUMN not in columns:
            log.warning(
                "Incremental: %s has no %s column yet (written before fingerprints were stored); every row "
                "is sent, and this run's load adds the column.",
                table,
                FINGERPRINT_COLUMN,
            )
            return False
        key = self.destination.destination_key_column
        if key not in columns:
            raise GeminiBatchInputError(
                f"incremental=True: {table} has no column {key!r}; set destination_key_column to the load's "
                f"key_column (columns: {sorted(columns)})."
            )
        return True

    def _prepare(self, table_sql: str, integer_keys: bool) -> None:
        """The lookup statement(s) of ``self.dialect`` against ``table_sql`` (quoted), on ``self._conn``."""
        key = self.destination.destination_key_column
        sums = ", ".join(f"SUM(a.{quote(c)})" for c in TOKEN_COLUMNS)
        key_sql, fp_sql = quote(key), quote(FINGERPRINT_COLUMN)
        matched = f"a.{fp_sql} = {{fp}} AND a.outcome = '{SUCCEEDED}'"
        if self.exclude_jobs is not None:
            jobs = (
                "SELECT value FROM json_each(?3)"
                if self.dialect == SQLITE
                else "SELECT json_array_elements_text(%s::json)"
            )
            matched += f" AND COALESCE(a.{quote(JOB_COLUMN)}, '') NOT IN ({jobs})"
        if self.dialect == SQLITE:
            # json_each(keys) drives a LEFT JOIN (one primary-key lookup per key; an INTEGER key column
            # compares the key text numerically); row j's fingerprint is bytes [64j, 64j + 64) of the blob.
            fp = f"CAST(substr(?2, j.key * {FINGERPRINT_HEX} + 1, {FINGERPRINT_HEX}) AS TEXT)"
            self._sql = (
                f"SELECT {sums}, json_group_array(j.key) FILTER (WHERE a.{key_sql} IS NULL) "
                f"FROM json_each(?1) AS j LEFT JOIN {table_sql} AS a "
                f"ON a.{key_sql} = j.value AND {matched.format(fp=fp)}"
            )
            return
        # One index lookup per input key, whatever the planner estimates for the batch: a hash join would
        # scan the whole destination once per batch. LOCAL: for this read-only transaction only.
        with closing(self._conn.cursor()) as cur:
            cur.execute("SET LOCAL enable_hashjoin = off")
            cur.execute("SET LOCAL enable_mergejoin = off")
        # ROWS FROM zips the keys' JSON array with the split fingerprints, row for row.
        template = (
            f"SELECT {sums}, array_agg(u.i - 1) FILTER (WHERE a.{key_sql} IS NULL) "
            "FROM ROWS FROM (json_array_elements_text(%s::json), string_to_table(%s, ',')) "
            "WITH ORDINALITY AS u(k, fp, i) LEFT JOIN {source} AS a "
            f"ON a.{key_sql} = {{key}} AND {matched.format(fp='u.fp')}"
        )
        # A batch whose keys are all integers (one regex over the joined keys, in C) casts them directly;
        # otherwise a key that is not an integer cannot be in an integer column: NULL, which matches nothing.
        self._sql = template.format(source=table_sql, key="u.k::bigint" if integer_keys else "u.k")
        self._sql_any = template.format(
            source=table_sql, key="CASE WHEN u.k ~ '^-?[0-9]{1,18}$' THEN u.k::bigint END"
        )
        self._integer_keys = _INTEGER_KEYS if integer_keys else None
        if integer_keys:
            # The same join against only the destination's rows in [min, max] of the part (bound by the caller).
            ranged = f"(SELECT * FROM {table_sql} WHERE {key_sql} BETWEEN %s::bigint AND %s::bigint)"
            self._sql_range = template.format(source=ranged, key="u.k::bigint")

    def _columns(self, schema: str | None, name: str) -> dict[str, str]:
        """Column name → declared type, or ``{}`` when the table does not exist."""
        with closing(self._conn.cursor()) as cur:
            if self.dialect == SQLITE:
                pragma = f"PRAGMA {quote(schema)}.table_info" if schema else "PRAGMA table_info"
                cur.execute(f"{pragma}({quote(name)})")
                return {row[1]: str(row[2] or "") for row in cur.fetchall()}
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                (quote_table(schema, name),),
            )
            return {row[0]: str(row[1]) for row in cur.fetchall()}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()  # only read; ends the snapshot on PostgreSQL
            finally:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ReuseCheck:
        if not self.open():
            self._sql = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the check ----------------------------------------------------------------------------------------

    def filter(
        self, lines: list[bytes], keys: list[bytes], fingerprints: list[str]
    ) -> tuple[list[bytes], list[bytes], list[str]]:
        """The batch without its reused rows (same order); counts them and sums their stored tokens.

        The database matches key *and* fingerprint and answers with one row per lookup: the reused rows' token
        sums and the positions of the rows to send (usually few); the others are the reused ones. No Python step
        per row: the parameters are joins of what the encoder already holds, and only the sent rows are picked
        out.
        """
        if self._sql is None or not keys:
            return lines, keys, fingerprints
        send: list[int] = []
        reused = 0
        for start in range(0, len(keys), LOOKUP_BATCH):
            part = keys[start : start + LOOKUP_BATCH]
            *sums, to_send = self._lookup(part, fingerprints[start : start + LOOKUP_BATCH])
            reused += len(part) - len(to_send)
            send.extend(start + i for i in to_send)
            for name, total in zip(REUSED_TOKEN_FIELDS, sums, strict=True):
                self.tokens[name] += int(total or 0)
        if not reused:
            return lines, keys, fingerprints
        self.reused += reused
        send.sort()
        return [lines[i] for i in send], [keys[i] for i in send], [fingerprints[i] for i in send]

    def _lookup(self, keys: list[bytes], fingerprints: list[str]) -> tuple[Any, ...]:
        """``(token sums..., positions to send)`` of one part of a batch: one query.

        The keys go as one JSON array (their wire form joined), the fingerprints as one string (SQLite: a
        blob of fixed-width digests, cut by position; PostgreSQL: comma-separated): two bound values the
        database parses in C, however many rows (a driver's per-element adaptation costs microseconds each).
        """
        joined = b",".join(keys)
        array = b"[" + joined + b"]"
        digests = "".join(fingerprints)
        if len(digests) != FINGERPRINT_HEX * len(fingerprints):
            raise ValueError(f"request fingerprints must be {FINGERPRINT_HEX} hex digits each")
        with closing(self._conn.cursor()) as cur:
            if self.dialect == SQLITE:
                cur.execute(self._sql, (array.decode(), digests.encode(), *self._own()))
                *sums, to_send = cur.fetchone()
                return (*sums, orjson.loads(to_send))
            params: tuple[Any, ...] = (array.decode(), ",".join(fingerprints))
            sql = self._sql
            by_range = False
            if self._integer_keys is not None:
                if not self._integer_keys.fullmatch(joined):
                    sql = self._sql_any
                else:
                    numbers = orjson.loads(b"[" + joined.replace(b'"', b"") + b"]")  # C, not a step per row
                    low, high = min(numbers), max(numbers)
                    by_range = high - low < DENSE_SPAN * len(numbers)
                    if by_range:
                        sql, params = self._sql_range, (*params, low, high)
            self._steer(cur, by_range)
            cur.execute(sql, (*params, *self._own()))
            *sums, to_send = cur.fetchone()
            return (*sums, to_send or [])

    def _steer(self, cur: Any, by_range: bool) -> None:
        """Set the planner for this part's plan (see the module): a merge join over the range, or one index
        lookup per key (a hash or merge join of the whole table would scan it once per part)."""
        if by_range == self._by_range:
            return
        cur.execute(f"SET LOCAL enable_mergejoin = {'on' if by_range else 'off'}")
        cur.execute(f"SET LOCAL enable_nestloop = {'off' if by_range else 'on'}")
        self._by_range = by_range

    def _own(self) -> tuple[str, ...]:
        """The ``exclude_jobs`` parameter of a lookup, when it has that clause."""
        return () if self.exclude_jobs is None else (self.exclude_jobs,)
