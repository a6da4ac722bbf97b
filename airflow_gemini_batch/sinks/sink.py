"""The one interface every destination of loaded results implements: :class:`Sink`.

Invariant: the loading stage talks to a destination only through these five calls, in this order -
``open()`` once, ``write(rows)`` per chunk, then ``close()`` after the last chunk or ``abort()`` on any
failure - and ``describe()`` for the summary. A sink never holds more than the chunk it is given (memory is
flat in the row count), and writing the same rows twice leaves them once (an upsert on key, or a file
rewritten whole), so a retried load never duplicates.

Why a Protocol, not a base class: the table, PostgreSQL and object-storage sinks share no code through it, and
a new warehouse (BigQuery next) is one module whose class has these methods - nothing to inherit, nothing in
the loading stage to change. ``isinstance(x, Sink)`` works (``runtime_checkable``) for the tests that check
every sink honours it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from airflow_gemini_batch.results.rows import ResultRow


@runtime_checkable
class Sink(Protocol):
    """A destination for :class:`~airflow_gemini_batch.results.rows.ResultRow` chunks."""

    #: Rows written so far (all chunks).
    rows_written: int

    def open(self) -> None:
        """Connect and prepare the destination (create tables, open files); called once, before any write."""

    def write(self, rows: list[ResultRow]) -> None:
        """Write one chunk of rows (a few thousand); the sink keeps nothing of it after returning."""

    def close(self) -> None:
        """Make everything written durable (commit, flush) and release the destination."""

    def abort(self) -> None:
        """Release the destination after a failure; what is not committed yet is dropped."""

    def describe(self) -> dict[str, Any]:
        """Where the rows went, for the load's summary (table names or file paths; small and JSON-able)."""


@runtime_checkable
class SqlHook(Protocol):
    """What a table sink needs of a common-sql hook (``SqliteHook``, ``PostgresHook``, or a stand-in)."""

    def get_conn(self) -> Any:
        """A DB-API connection (its type is the driver's)."""
