"""The Vertex AI request table, built and checked inside BigQuery: no row passes through the worker.

Invariants:

* One query job (``CREATE OR REPLACE TABLE … AS SELECT``) writes the table Vertex reads: the key column,
  passed through unchanged, and ``request`` (a ``GenerateContentRequest`` as JSON text). A CTAS, not a query
  with a destination setting: the same statement works on BigQuery and on its emulator (which ignores the
  destination setting).
* Row data is never spliced into SQL, and neither is template text: a ``prompt_template`` becomes
  ``CONCAT(@agb_p0, CAST(`col` AS STRING), @agb_p1, …)`` — its literal parts bound as query parameters, its
  placeholders validated column identifiers; the request's job-wide parts (system instruction, generation
  config, response schema, tools, safety settings) are JSON built here and bound as one parameter; the prompt
  is JSON-escaped by ``TO_JSON_STRING`` in BigQuery. A ``request_sql`` expression is the DAG author's own SQL.
* A NULL or blank prompt gives a NULL ``request`` (``TO_JSON_STRING(NULL)`` would be the text ``null``).
* The checks are one more query that answers one row: counts per problem (missing keys, duplicate keys, empty
  prompts, requests over the byte limit) and the first five keys of each, never the rows.
* Limits and invalid rows are decided before any paid call; ``on_invalid_row="skip"`` deletes the invalid rows
  from the request table (duplicates are never skipped: which of two rows to keep is not ours to guess).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.inputs.bigquery import query_parameters
from airflow_gemini_batch.inputs.requests import parse_template
from airflow_gemini_batch.sinks.schema import check_identifier

if TYPE_CHECKING:
    from collections.abc import Mapping

    from google.cloud.bigquery import Client

    from airflow_gemini_batch.hooks.bigquery import BigQueryClients, TableId

log = logging.getLogger(__name__)

PARAM_PREFIX = "agb_"
REQUEST_COLUMN = "request"
#: How long the request table lives: Vertex may queue a job for 72 h, and the load anti-joins against it.
REQUEST_TABLE_DAYS = 7
FIRST_KEYS = 5
#: A request line's head, before the JSON-escaped prompt.
_HEAD = '{"contents":[{"role":"user","parts":[{"text":'


@dataclass(frozen=True)
class RequestSql:
    """How a source row becomes a request, as SQL: the select list and the parameters it binds."""

    prompt: str | None  # a SQL expression giving the prompt text (None: ``request`` is given whole)
    request: str | None  # the DAG author's expression giving the request JSON (None: built from ``prompt``)
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        *,
        prompt_column: str | None,
        prompt_template: str | None,
        request_sql: str | None,
    ) -> RequestSql:
        given = [n for n, v in (("prompt_column", prompt_column), ("prompt_template", prompt_template),
                                ("request_sql", request_sql)) if v]  # fmt: skip
        if len(given) != 1:
            raise GeminiBatchInputError(
                f"A Vertex AI BigQuery run needs exactly one of prompt_column, prompt_template and request_sql; "
                f"got {given or 'none'}."
            )
        if request_sql:
            return cls(prompt=None, request=request_sql.strip().rstrip(";"))
        if prompt_column:
            return cls(
                prompt=f"CAST(`{check_identifier(prompt_column, 'prompt column')}` AS STRING)", request=None
            )
        literals, columns = parse_template(str(prompt_template))
        parts: list[str] = []
        params: dict[str, Any] = {}
        for i, literal in enumerate(literals):
            if literal:
                params[f"{PARAM_PREFIX}p{i}"] = literal
                parts.append(f"@{PARAM_PREFIX}p{i}")
            if i < len(columns):
                parts.append(
                    f"CAST(`{check_identifier(columns[i], 'prompt_template placeholder')}` AS STRING)"
                )
        concat = ", ".join(parts) or "''"
        return cls(prompt=f"CONCAT({concat})", request=None, parameters=params)


def job_wide_tail(job_wide: Mapping[str, Any]) -> str:
    """``,"generationConfig":{…},…}``: what follows ``contents`` in every request (JSON, bound as a value)."""
    if not job_wide:
        return "}"
    return "," + orjson.dumps(dict(job_wide), option=orjson.OPT_SORT_KEYS).decode()[1:]


@dataclass(frozen=True)
class RequestCheck:
    """What the checks query answered: counts, and the first keys of each problem."""

    total: int
    request_bytes: int
    problems: dict[str, tuple[int, list[str]]]

    @property
    def invalid(self) -> int:
        return sum(n for name, (n, _) in self.problems.items() if name != "duplicate key")


class RequestTable:
    """Build and check the request table of one Vertex AI job in BigQuery.

    :param clients: the connection's BigQuery clients.
    :param table: where the request table goes (in a regional dataset: Vertex refuses multi-region ones).
    :param key_column: the source's key column; it passes through Vertex into the predictions.
    :param source_sql: ``SELECT …`` or a validated table id; the rows to send.
    :param source_parameters: the source query's named parameters.
    """

    def __init__(
        self,
        clients: BigQueryClients,
        table: TableId,
        *,
        key_column: str,
        source_sql: str,
        request_sql: RequestSql,
        job_wide: Mapping[str, Any],
        source_parameters: Mapping[str, Any] | None = None,
        max_request_bytes: int,
    ) -> None:
        if source_parameters is not None and not hasattr(source_parameters, "items"):
            raise GeminiBatchInputError(
                "On Vertex AI the BigQuery source's parameters must be a dict (@name): the request table's own "
                "parameters are named too, and BigQuery cannot mix named and positional ones."
            )
        clash = [k for k in (source_parameters or {}) if str(k).startswith(PARAM_PREFIX)]
        if clash:
            raise GeminiBatchInputError(f"Query parameters {clash}: the prefix {PARAM_PREFIX!r} is reserved.")
        self.clients = clients
        self.table = table
        self.key_column = check_identifier(key_column, "key column")
        self.source_sql = source_sql
        self.request_sql = request_sql
        self.job_wide = dict(job_wide)
        self.source_parameters = dict(source_parameters or {})
        self.max_request_bytes = int(max_request_bytes)

    def _query(self, client: Client, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        from google.cloud.bigquery import QueryJobConfig

        config = QueryJobConfig(query_parameters=query_parameters(dict(params)), use_legacy_sql=False)
        job = client.query(sql, job_config=config, location=self.clients.location)
        return [dict(row) for row in job.result()]

    def build_sql(self) -> tuple[str, dict[str, Any]]:
        key = f"`{self.key_column}`"
        params = {**self.source_parameters, **self.request_sql.parameters}
        if self.request_sql.request is not None:
            select = f"SELECT {key}, CAST(({self.request_sql.request}) AS STRING) AS {REQUEST_COLUMN}"
            inner = f"SELECT * FROM ({self.source_sql})"
        else:
            params[f"{PARAM_PREFIX}head"] = _HEAD
            params[f"{PARAM_PREFIX}tail"] = "}]}]" + job_wide_tail(self.job_wide)
            select = (
                f"SELECT {key}, IF(agb_prompt IS NULL OR TRIM(agb_prompt) = '', NULL, "
                f"CONCAT(@{PARAM_PREFIX}head, TO_JSON_STRING(agb_prompt), @{PARAM_PREFIX}tail)) AS {REQUEST_COLUMN}"
            )
            inner = f"SELECT {key}, {self.request_sql.prompt} AS agb_prompt FROM ({self.source_sql})"
        sql = (
            f"CREATE OR REPLACE TABLE {self.table.sql} OPTIONS (expiration_timestamp = "
            f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {REQUEST_TABLE_DAYS * 24} HOUR)) AS\n"
            f"{select} FROM ({inner})"
        )
        return sql, params

    def build(self) -> None:
        """Write the request table (one query job; replaces an earlier try's)."""
        sql, params = self.build_sql()
        self._query(self.clients.client, sql, params)
        log.info("Built the Vertex AI request table %s in BigQuery (one query job)", self.table)

    def _conditions(self) -> dict[str, str]:
        key, req = f"`{self.key_column}`", REQUEST_COLUMN
        return {
            "missing key": f"{key} IS NULL",
            "empty prompt": f"{key} IS NOT NULL AND ({req} IS NULL OR TRIM({req}) = '')",
            "over the request limit": f"{key} IS NOT NULL AND BYTE_LENGTH({req}) > @{PARAM_PREFIX}max_bytes",
        }

    def check(self) -> RequestCheck:
        """One query: the row count, request bytes, and per problem its count and first keys."""
        t, key = self.table.sql, f"`{self.key_column}`"
        parts = [
            f"(SELECT COUNT(*) FROM {t}) AS total",
            f"(SELECT SUM(BYTE_LENGTH({REQUEST_COLUMN})) FROM {t}) AS bytes",
        ]
        names = [*self._conditions(), "duplicate key"]
        wheres = [
            *(f"SELECT CAST({key} AS STRING) AS k FROM {t} WHERE {c}" for c in self._conditions().values()),
            f"SELECT CAST({key} AS STRING) AS k FROM {t} WHERE {key} IS NOT NULL GROUP BY {key} HAVING COUNT(*) > 1",
        ]
        for i, inner in enumerate(wheres):
            parts.append(f"(SELECT COUNT(*) FROM ({inner})) AS n{i}")
            parts.append(
                f"(SELECT ARRAY_AGG(IFNULL(k, 'NULL') ORDER BY k LIMIT {FIRST_KEYS}) FROM ({inner})) AS k{i}"
            )
        row = self._query(
            self.clients.client,
            "SELECT " + ", ".join(parts),
            {f"{PARAM_PREFIX}max_bytes": self.max_request_bytes},
        )[0]
        problems = {
            name: (int(row[f"n{i}"] or 0), list(row[f"k{i}"] or []))
            for i, name in enumerate(names)
            if row[f"n{i}"]
        }
        return RequestCheck(int(row["total"] or 0), int(row["bytes"] or 0), problems)

    def enforce(self, check: RequestCheck, on_invalid_row: str) -> RequestCheck:
        """Raise naming the problems, their first keys, the limit and the fix — or, with ``skip``, delete the
        invalid rows from the request table (never the source) and return the check of what is left."""
        dup = check.problems.get("duplicate key")
        bad = {k: v for k, v in check.problems.items() if k != "duplicate key"}
        if dup or (bad and on_invalid_row != "skip"):
            detail = "; ".join(
                f"{n} {what} (first keys: {', '.join(keys)})" for what, (n, keys) in check.problems.items()
            )
            fix = (
                "make the key column unique in the source"
                if dup
                else f"fix the source rows, or on_invalid_row='skip' (requests are at most {self.max_request_bytes} bytes)"
            )
            raise GeminiBatchInputError(
                f"{sum(n for n, _ in check.problems.values())} row(s) of the Vertex AI request table {self.table} are "
                f"invalid; nothing was submitted: {detail}. Fix: {fix}."
            )
        if not bad:
            return check
        where = " OR ".join(f"({c})" for c in self._conditions().values())
        self._query(
            self.clients.client,
            f"DELETE FROM {self.table.sql} WHERE {where}",
            {f"{PARAM_PREFIX}max_bytes": self.max_request_bytes},
        )
        log.warning(
            "Skipped %d invalid row(s) (on_invalid_row='skip'): %s",
            check.invalid,
            "; ".join(f"{n} {what}, first keys {keys}" for what, (n, keys) in bad.items()),
        )
        return RequestCheck(check.total - check.invalid, check.request_bytes, {})
