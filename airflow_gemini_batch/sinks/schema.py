"""Destination schema: validated identifiers, the documented result columns, and their types per dialect.

Invariant (architecture invariant 8): every SQL identifier that reaches a statement was either written here or
matched ``[A-Za-z_][A-Za-z0-9_]*`` (optionally ``schema.table``) and is then double-quoted; user-given column
types must be on a per-dialect whitelist. Row data (keys, answers, errors) is only ever bound or COPY-escaped,
never spliced into SQL. Two values that are not row data - the load's timestamp and a job name the service gave
- may be written by the SQLite sink as literals, and only when they match a plain pattern that admits no quote,
backslash or control character (``sinks.table._PLAIN_LITERAL``); any other value is bound.

The main table (one row per input key, upserted on the key column; every outcome, so users can join and
filter on ``outcome``):

=================  ======================  =========================  ==========================
column             SQLite                  PostgreSQL                 BigQuery
=================  ======================  =========================  ==========================
<key_column>       key_column_type (TEXT)  key_column_type (TEXT)     STRING / INT64
outcome            TEXT NOT NULL           TEXT NOT NULL              STRING
text               TEXT                    TEXT                       STRING
json_value         TEXT (JSON)             JSONB                      JSON
embedding          TEXT (JSON array)       DOUBLE PRECISION[]         ARRAY<FLOAT64>
finish_reason      TEXT                    TEXT                       STRING
prompt_tokens      INTEGER                 INTEGER                    INT64
output_tokens      INTEGER                 INTEGER                    INT64
thinking_tokens    INTEGER                 INTEGER                    INT64
cached_tokens      INTEGER                 INTEGER                    INT64
total_tokens       INTEGER                 INTEGER                    INT64
model_version      TEXT                    TEXT                       STRING
error_code         INTEGER                 INTEGER                    INT64
error_message      TEXT                    TEXT                       STRING
job_name           TEXT                    TEXT                       STRING
request_fingerprint TEXT                   TEXT                       STRING
loaded_at          TEXT (ISO 8601 UTC)     TIMESTAMPTZ                TIMESTAMP
attempts           INTEGER                 INTEGER                    INT64
<output_columns>   as given (whitelisted)  as given (whitelisted)     as given
=================  ======================  =========================  ==========================

``attempts`` is how many times the row's request was sent: 1, or the row-retry round that loaded it
(``GeminiBatchOperator``'s ``max_row_retries``). A table made before the column existed gets it on the next
load (``ALTER TABLE ... ADD COLUMN``, a nullable column: old rows read NULL); with ``create_table=False`` the
table is left as it is and the column is not written (:attr:`TableLayout.attempts_column`).

``request_fingerprint`` is the sha256 of the request that was sent for the key (``inputs.fingerprint``):
what an incremental submit compares to decide that a succeeded row can be reused. A table made before the
column existed gets it added by the next load (``ALTER TABLE ... ADD COLUMN``, NULL for the old rows, which
an incremental run therefore sends again once).

The errors table ``<table>_errors`` mirrors the non-succeeded rows: key, outcome, error_code, error_message,
job_name, loaded_at, attempts (same types), upserted on the key as well; a key that later succeeds is deleted
from it. So a row that failed in every row round shows there how many times it was sent. An errors table made
before it had ``attempts`` gets the column the way the main table does (:attr:`TableLayout.errors_attempts_column`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_gemini_batch.exceptions import GeminiBatchInputError

if TYPE_CHECKING:
    from collections.abc import Mapping

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SQLITE = "sqlite"
POSTGRES = "postgresql"

#: Column types a user may name (key_column_type, output_columns), per dialect. Upper-case, spaces collapsed.
TYPE_WHITELIST: dict[str, frozenset[str]] = {
    SQLITE: frozenset({"TEXT", "INTEGER", "REAL", "NUMERIC", "BOOLEAN", "BLOB"}),
    POSTGRES: frozenset(
        {
            "TEXT",
            "VARCHAR",
            "INTEGER",
            "BIGINT",
            "SMALLINT",
            "REAL",
            "DOUBLE PRECISION",
            "NUMERIC",
            "BOOLEAN",
            "JSONB",
            "JSON",
            "DATE",
            "TIMESTAMP",
            "TIMESTAMPTZ",
        }
    ),
}

# (column, SQLite type, PostgreSQL type) after the key column, in ResultRow order, then loaded_at.
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("outcome", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("text", "TEXT", "TEXT"),
    ("json_value", "TEXT", "JSONB"),
    ("embedding", "TEXT", "DOUBLE PRECISION[]"),
    ("finish_reason", "TEXT", "TEXT"),
    ("prompt_tokens", "INTEGER", "INTEGER"),
    ("output_tokens", "INTEGER", "INTEGER"),
    ("thinking_tokens", "INTEGER", "INTEGER"),
    ("cached_tokens", "INTEGER", "INTEGER"),
    ("total_tokens", "INTEGER", "INTEGER"),
    ("model_version", "TEXT", "TEXT"),
    ("error_code", "INTEGER", "INTEGER"),
    ("error_message", "TEXT", "TEXT"),
    ("job_name", "TEXT", "TEXT"),
    ("request_fingerprint", "TEXT", "TEXT"),
)
FINGERPRINT_COLUMN = "request_fingerprint"
LOADED_AT = ("loaded_at", "TEXT", "TIMESTAMPTZ")
ATTEMPTS = ("attempts", "INTEGER", "INTEGER")
ERROR_COLUMNS = ("outcome", "error_code", "error_message", "job_name")
INTEGER_TYPES = frozenset({"INTEGER", "BIGINT", "SMALLINT", "INT", "INT64"})


def check_identifier(name: str, what: str = "identifier") -> str:
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise GeminiBatchInputError(
            f"Invalid {what} {name!r}: only letters, digits and underscores are allowed, "
            "starting with a letter or underscore (so that no SQL can be injected through it)."
        )
    return name


def split_table(name: str) -> tuple[str | None, str]:
    """``"schema.table"`` or ``"table"`` → validated parts; anything else (spaces, quotes, ``;``) fails."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if len(parts) > 2:
        raise GeminiBatchInputError(f"Invalid table name {name!r}: use 'table' or 'schema.table'.")
    for part in parts:
        check_identifier(part, f"table name {name!r} (part)")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def quote(ident: str) -> str:
    return '"' + check_identifier(ident) + '"'


def quote_table(schema: str | None, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}" if schema else quote(table)


def check_type(type_name: str, dialect: str, what: str) -> str:
    normalized = " ".join(str(type_name).upper().split())
    allowed = TYPE_WHITELIST.get(dialect)
    if allowed is None:
        raise GeminiBatchInputError(f"Table destinations support {sorted(TYPE_WHITELIST)}, not {dialect!r}.")
    if normalized not in allowed:
        raise GeminiBatchInputError(
            f"Type {type_name!r} for {what} is not allowed on {dialect}; allowed: {sorted(allowed)}."
        )
    return normalized


@dataclass
class TableLayout:
    """The validated layout of a destination: table names, key column, output columns, per-dialect types."""

    table: str
    dialect: str
    key_column: str = "key"
    key_column_type: str = "TEXT"
    output_columns: Mapping[str, str] = field(default_factory=dict)
    errors_table: str | None = None
    #: Whether the main table has (or gets) the ``attempts`` column; the sink decides at ``open()``.
    attempts_column: bool = True
    #: The same for the errors table.
    errors_attempts_column: bool = True

    def __post_init__(self) -> None:
        self.schema, self.name = split_table(self.table)
        check_identifier(self.key_column, "key column")
        self.key_column_type = check_type(self.key_column_type, self.dialect, "key_column_type")
        reserved = {c for c, _, _ in RESULT_COLUMNS} | {LOADED_AT[0], ATTEMPTS[0], self.key_column}
        checked: dict[str, str] = {}
        for column, type_name in (self.output_columns or {}).items():
            check_identifier(column, "output column")
            if column in reserved:
                raise GeminiBatchInputError(f"Output column {column!r} clashes with a result column.")
            checked[column] = check_type(type_name, self.dialect, f"output column {column!r}")
        self.output_columns = checked
        errors = self.errors_table or f"{self.table}_errors"
        self.errors_schema, self.errors_name = split_table(errors)

    @property
    def integer_keys(self) -> bool:
        return self.key_column_type in INTEGER_TYPES

    @property
    def qualified(self) -> str:
        return quote_table(self.schema, self.name)

    @property
    def errors_qualified(self) -> str:
        return quote_table(self.errors_schema, self.errors_name)

    def columns(self) -> list[tuple[str, str]]:
        """``(name, type)`` of the main table, in load order."""
        pg = self.dialect == POSTGRES
        cols = [(self.key_column, self.key_column_type + " PRIMARY KEY")]
        cols += [(name, pg_type if pg else lite_type) for name, lite_type, pg_type in RESULT_COLUMNS]
        cols.append((LOADED_AT[0], LOADED_AT[2] if pg else LOADED_AT[1]))
        if self.attempts_column:
            cols.append((ATTEMPTS[0], ATTEMPTS[2] if pg else ATTEMPTS[1]))
        cols += list(self.output_columns.items())
        return cols

    def add_attempts_sql(self, errors: bool = False) -> str:
        """Give a table made before the ``attempts`` column existed that column (nullable: old rows read NULL)."""
        table = self.errors_qualified if errors else self.qualified
        return f"ALTER TABLE {table} ADD COLUMN {quote(ATTEMPTS[0])} {ATTEMPTS[1]}"

    def error_columns(self) -> list[tuple[str, str]]:
        types = dict(self.columns())
        cols = [(self.key_column, self.key_column_type + " PRIMARY KEY")]
        cols += [(c, types[c]) for c in ERROR_COLUMNS]
        cols.append((LOADED_AT[0], types[LOADED_AT[0]]))
        if self.errors_attempts_column:
            cols.append((ATTEMPTS[0], ATTEMPTS[2] if self.dialect == POSTGRES else ATTEMPTS[1]))
        return cols

    def create_sql(self, errors: bool = False) -> str:
        cols = self.error_columns() if errors else self.columns()
        body = ", ".join(f"{quote(name)} {type_}" for name, type_ in cols)
        table = self.errors_qualified if errors else self.qualified
        return f"CREATE TABLE IF NOT EXISTS {table} ({body})"

    def add_fingerprint_sql(self) -> str:
        """Adds the fingerprint column to a main table made before it existed (NULL for the old rows)."""
        return f"ALTER TABLE {self.qualified} ADD COLUMN {quote(FINGERPRINT_COLUMN)} TEXT"

    def upsert_sql(self, placeholder: str, errors: bool = False, source: str | None = None) -> str:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` (SQLite ≥ 3.24 and PostgreSQL share the syntax).

        :param source: a (quoted) staging table to ``SELECT`` from instead of ``VALUES`` placeholders.
        """
        names = [name for name, _ in (self.error_columns() if errors else self.columns())]
        col_list = ", ".join(quote(n) for n in names)
        updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names[1:])
        table = self.errors_qualified if errors else self.qualified
        if source is None:
            values = f"VALUES ({', '.join([placeholder] * len(names))})"
        else:
            # WHERE true: SQLite's parser needs it to tell ON CONFLICT from a join constraint; harmless on PG.
            values = f"SELECT {col_list} FROM {source} WHERE true"
        return (
            f"INSERT INTO {table} ({col_list}) {values} "
            f"ON CONFLICT ({quote(self.key_column)}) DO UPDATE SET {updates}"
        )
