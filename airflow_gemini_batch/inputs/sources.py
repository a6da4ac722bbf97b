"""Row sources for the submit operator: a SQL query on a common-sql connection, a small list, a JSONL file.

Invariant: a source yields rows in bounded batches (``batch_size`` rows, tuples in column order) and never
holds the whole input. SQL is read with ``cursor.fetchmany``; on PostgreSQL (psycopg2 / psycopg 3) through a
server-side named cursor, because a plain psycopg cursor downloads the entire result set on ``execute``.
SQLite cursors are lazy.

Row values are data. Nothing here interprets them; the request stage only ever copies them into JSON strings.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

import orjson
from airflow.sdk import BaseHook

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.storage import is_file, open_binary

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000
PREBUILT_COLUMNS = ("key", "request")
PROMPT_LIST_COLUMNS = ("key", "prompt")


class MalformedLine:
    """Stands in for the key of a JSONL line that is not a ``{"key", "request"}`` object, so the request
    stage reports it as an invalid row (with its line number) instead of the source failing on the first
    bad line."""

    __slots__ = ("line_no", "reason")

    def __init__(self, line_no: int, reason: str) -> None:
        self.line_no = line_no
        self.reason = reason

    def __str__(self) -> str:
        return f"<line {self.line_no}>"


class RowSource:
    """Base: ``columns`` (known once the first batch is read) and ``batches()``.

    ``prebuilt`` sources yield ``(key, request_dict)`` rows that are already GenerateContentRequests.
    """

    prebuilt = False
    columns: Sequence[str] = ()

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def _is_psycopg(conn: Any) -> bool:
    return type(conn).__module__.split(".")[0] in ("psycopg2", "psycopg")


def _as_tuples(batch: Sequence[Any]) -> Sequence[tuple[Any, ...]]:
    """Driver rows → plain tuples; a no-op (no copy) for the drivers that already return tuples."""
    if not batch or type(batch[0]) is tuple:
        return batch
    if isinstance(batch[0], Mapping):  # e.g. psycopg2 RealDictCursor configured in the connection extra
        return [tuple(r.values()) for r in batch]
    return [tuple(r) for r in batch]


def dbapi_connector(conn_id: str) -> Callable[[], Any]:
    """``() -> DB-API connection`` for a connection id, through its common-sql hook."""
    hook = BaseHook.get_hook(conn_id)
    if not hasattr(hook, "get_conn"):
        raise GeminiBatchInputError(
            f"Connection {conn_id!r} ({type(hook).__name__}) is not a SQL connection; "
            "use a common-sql connection (sqlite, postgres, bigquery, ...)."
        )
    return hook.get_conn


class SqlRowSource(RowSource):
    """Rows of a query on any common-sql connection (SQLite, PostgreSQL, BigQuery, ...), in batches.

    :param conn_id: an Airflow connection whose hook is a common-sql ``DbApiHook``.
    :param sql: one SELECT statement.
    :param parameters: query parameters in the driver's style.
    :param batch_size: rows per ``fetchmany``; memory is bounded by this.
    """

    def __init__(
        self,
        conn_id: str,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.conn_id = conn_id
        self.sql = sql
        self.parameters = parameters
        self.batch_size = batch_size

    def describe(self) -> str:
        return f"SQL on connection {self.conn_id!r}"

    def _execute(self, conn: Any) -> Any:
        if _is_psycopg(conn):
            # Server-side cursor: the server keeps the result, we pull batch_size rows per round trip.
            cur = conn.cursor(name=f"agb_{uuid.uuid4().hex[:16]}")
            cur.itersize = self.batch_size
        else:
            cur = conn.cursor()
            with suppress(AttributeError, TypeError):
                cur.arraysize = self.batch_size
        if self.parameters is None:
            cur.execute(self.sql)
        else:
            cur.execute(self.sql, self.parameters)
        return cur

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        connect = dbapi_connector(self.conn_id)
        consumed = 0
        tolerant = False
        while True:
            conn = connect()
            try:
                if tolerant:
                    # Bytes that are not UTF-8 become lone surrogates, which the JSON encoder rejects per
                    # row, so the request stage names the offending keys instead of the driver failing.
                    conn.text_factory = partial(str, encoding="utf-8", errors="surrogateescape")
                cur = self._execute(conn)
                try:
                    skip = consumed if tolerant else 0
                    while skip > 0:
                        skip -= len(cur.fetchmany(min(skip, self.batch_size)) or ())
                    while True:
                        batch = cur.fetchmany(self.batch_size)
                        if not self.columns and cur.description:
                            self.columns = [d[0] for d in cur.description]
                        if not batch:
                            return
                        consumed += len(batch)
                        yield _as_tuples(batch)
                finally:
                    with suppress(Exception):
                        cur.close()
            except sqlite3.OperationalError as e:
                if tolerant or "decode" not in str(e):
                    raise
                # sqlite3 fails the whole fetch on a non-UTF-8 TEXT value and the cursor cannot resume. Re-run
                # the query decoding leniently and skip the rows already read; SQLite returns the same order
                # for the same query on unchanged data (add ORDER BY to a query on a table being written to).
                log.warning(
                    "Non-UTF-8 text after %d rows; re-reading leniently to name the bad rows", consumed
                )
                tolerant = True
            finally:
                with suppress(Exception):
                    conn.rollback()  # ends the server-side cursor's transaction; nothing was written
                with suppress(Exception):
                    conn.close()


class ListRowSource(RowSource):
    """A small in-memory list (e.g. from XCom): prompt strings, row dicts, or ``{"key", "request"}`` dicts.

    * strings: the prompt; the key is the item's position (0, 1, ...);
    * dicts with ``request``: a prebuilt request and its ``key``;
    * other dicts: rows, with the columns of the first dict.
    """

    def __init__(self, items: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise GeminiBatchInputError(
                f"requests must be a list of strings or dicts, got {type(items).__name__}; "
                "pass a list (or an XCom that resolves to one)."
            )
        self.items = items
        self.batch_size = batch_size
        first = items[0] if items else ""
        if isinstance(first, str):
            self.columns = PROMPT_LIST_COLUMNS
            self.kind = "str"
        elif isinstance(first, Mapping) and "request" in first:
            self.columns, self.prebuilt, self.kind = PREBUILT_COLUMNS, True, "prebuilt"
        elif isinstance(first, Mapping):
            self.columns, self.kind = list(first.keys()), "row"
        else:
            raise GeminiBatchInputError(
                f"requests items must be strings or dicts, got {type(first).__name__}."
            )

    def describe(self) -> str:
        return f"list of {len(self.items)} requests"

    def _row(self, position: int, item: Any) -> tuple[Any, ...]:
        if self.kind == "str" and isinstance(item, str):
            return (position, item)
        if self.kind == "prebuilt" and isinstance(item, Mapping):
            return (item.get("key"), item.get("request"))
        if self.kind == "row" and isinstance(item, Mapping):
            return tuple(item.get(c) for c in self.columns)
        raise GeminiBatchInputError(
            f"requests item {position} is a {type(item).__name__}, unlike the first item; "
            "use one kind of item per list (all strings, all row dicts, or all {'key', 'request'} dicts)."
        )

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        for start in range(0, len(self.items), self.batch_size):
            chunk = self.items[start : start + self.batch_size]
            yield [self._row(start + i, item) for i, item in enumerate(chunk)]


class JsonlRowSource(RowSource):
    """An existing JSONL file of ``{"key": ..., "request": {...}}`` lines (local path or ObjectStoragePath).

    Read line by line (binary, so bad UTF-8 is reported per line, not as a decode crash of the whole file).
    """

    prebuilt = True
    columns = PREBUILT_COLUMNS

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.path = path
        self.batch_size = batch_size

    def describe(self) -> str:
        return f"JSONL file {self.path}"

    @staticmethod
    def _parse(line_no: int, line: bytes) -> tuple[Any, Any]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            reason = "not valid UTF-8" if "utf-8" in str(e).lower() else "not valid JSON"
            return MalformedLine(line_no, reason), None
        if not isinstance(obj, dict) or "request" not in obj:
            return MalformedLine(line_no, 'not an object with "key" and "request"'), None
        return obj.get("key"), obj["request"]

    def batches(self) -> Iterator[Sequence[tuple[Any, ...]]]:
        if not is_file(self.path):
            raise GeminiBatchInputError(
                f"input_path {self.path} does not exist; give an existing JSONL file."
            )
        with open_binary(self.path) as f:
            batch: list[tuple[Any, Any]] = []
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                batch.append(self._parse(line_no, line))
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
