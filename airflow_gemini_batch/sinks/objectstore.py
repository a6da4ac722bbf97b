"""Object-storage sink: result rows → ``results.jsonl`` or ``results.parquet``, plus ``errors.jsonl``.

Invariants:

* Streamed: JSONL is written line by line; Parquet one row group per chunk through ``pyarrow.parquet``'s
  ``ParquetWriter``, so neither format holds more than a chunk in memory.
* A rerun overwrites the files (the folder's equivalent of an upsert): one file set per destination folder,
  one row per input key, never appended twice.
* Every row carries the load's ``attempts`` (1, or the row-retry round that loaded it), like ``loaded_at``.
* A failed load leaves the previous files as they were: both files are written under hidden temporary names
  (:class:`~airflow_gemini_batch.storage.PendingFile`) and moved into place by :meth:`close` - ``errors.jsonl``
  first, ``results.<fmt>`` last, so a new results file always has its errors file beside it - and
  :meth:`abort` removes them. The same on the local disk, ``gs://``, ``s3://`` or any other store.
* Integer keys (``key_column_type`` INTEGER / BIGINT / SMALLINT) are written as integers - int64 in Parquet,
  JSON numbers in JSONL - although they travel as strings (the request lines and key lists carry
  ``str(key)``); a key that is not a 64-bit integer fails the load with its name, and the fix.
* ``errors.jsonl`` next to the results lists the non-succeeded rows, so failed keys are findable without
  scanning the results.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.results.rows import STORED_FIELDS, SUCCEEDED
from airflow_gemini_batch.sinks.table import json_cell
from airflow_gemini_batch.storage import PendingFile, object_path

if TYPE_CHECKING:
    from airflow_gemini_batch.results.rows import ResultRow

FORMATS = ("jsonl", "parquet")
_ERROR_FIELDS = ("key", "outcome", "error_code", "error_message", "job_name", "loaded_at")
_INT64 = (-(2**63), 2**63 - 1)


def integer_key(key: Any) -> int:
    """A key as an int64: an int as it is, a string of decimal digits (the wire form ``str(key)``) parsed.

    Strict on purpose: ``int()`` alone would also take ``" 7"``, ``"1_000"`` or ``"٣"``, and two different keys
    must never land as one integer.
    """
    if type(key) is int:
        value = key
    elif type(key) is str and key.isascii() and key.removeprefix("-").isdigit():
        value = int(key)
    else:
        raise _not_an_integer(key)
    if not _INT64[0] <= value <= _INT64[1]:
        raise _not_an_integer(key)
    return value


def _not_an_integer(key: Any) -> GeminiBatchInputError:
    return GeminiBatchInputError(
        f"Key {key!r} is not a 64-bit integer, but key_column_type says the keys are integers (written as int64 "
        "in Parquet, numbers in JSONL). The previous output files are kept. Fix: key_column_type='TEXT', or "
        "submit integer keys."
    )


class ObjectStorageSink:
    """Writes :class:`ResultRow` chunks into ``<destination_path>/results.<fmt>`` and ``errors.jsonl``.

    :param destination_path: a folder, as an ObjectStoragePath URI or a local path.
    :param output_format: ``jsonl`` or ``parquet`` (needs pyarrow).
    :param output_columns: structured-output fields copied to top-level fields / columns.
    :param integer_keys: write keys as int64 in Parquet (otherwise strings).
    :param attempts: the ``attempts`` value of every row of this load.
    """

    def __init__(
        self,
        destination_path: str,
        output_format: str = "jsonl",
        output_columns: dict[str, str] | None = None,
        integer_keys: bool = False,
        attempts: int = 1,
    ) -> None:
        if output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {FORMATS}, not {output_format!r}")
        self.folder = object_path(destination_path)
        self.output_format = output_format
        self.output_columns = list(output_columns or {})
        self.integer_keys = integer_keys
        self.attempts = int(attempts)
        self.loaded_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        self.rows_written = 0
        self.results_path = self.folder / f"results.{output_format}"
        self.errors_path = self.folder / "errors.jsonl"
        self._pending: list[PendingFile] = []
        self._out: Any = None
        self._errors: Any = None
        self._writer: Any = None

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        errors, results = PendingFile(self.errors_path), PendingFile(self.results_path)
        self._pending = [errors, results]  # the publishing order: results last
        self._errors = errors.open()
        self._out = results.open()
        if self.output_format == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._out, self._arrow_schema())

    def _arrow_schema(self) -> Any:
        import pyarrow as pa

        types = {
            "key": pa.int64() if self.integer_keys else pa.string(),
            "embedding": pa.list_(pa.float64()),
            "loaded_at": pa.string(),
            "attempts": pa.int64(),
        }
        for name in ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "total_tokens"):
            types[name] = pa.int64()
        types["error_code"] = pa.int64()
        fields = [
            pa.field(name, types.get(name, pa.string())) for name in (*STORED_FIELDS, "loaded_at", "attempts")
        ]
        # Output columns as JSON text in Parquet: their types are SQL names, and a mixed-type field must not
        # fail a load halfway.
        fields += [pa.field(name, pa.string()) for name in self.output_columns]
        return pa.schema(fields)

    def _extras(self, row: ResultRow) -> list[Any]:
        value = row.value
        return [json_cell(value.get(c)) if isinstance(value, dict) else None for c in self.output_columns]

    def _keys(self, rows: list[ResultRow]) -> list[Any]:
        if self.integer_keys:
            return [integer_key(row.key) for row in rows]
        return [row.key for row in rows]

    def write(self, rows: list[ResultRow]) -> None:
        errors = self._errors
        dumps = orjson.dumps
        keys = self._keys(rows)
        for key, row in zip(keys, rows, strict=True):
            if row.outcome != SUCCEEDED:
                err = (key, row.outcome, row.error_code, row.error_message, row.job_name, self.loaded_at)
                errors.write(dumps(dict(zip(_ERROR_FIELDS, err, strict=True))) + b"\n")
        if self._writer is not None:
            self._write_parquet(rows, keys)
        else:
            out = self._out
            names = (*STORED_FIELDS, "loaded_at", "attempts", *self.output_columns)
            for key, row in zip(keys, rows, strict=True):
                values = [
                    key,
                    *row[1 : len(STORED_FIELDS)],
                    self.loaded_at,
                    self.attempts,
                    *self._extras(row),
                ]
                out.write(dumps(dict(zip(names, values, strict=True))) + b"\n")
        self.rows_written += len(rows)

    def _write_parquet(self, rows: list[ResultRow], keys: list[Any]) -> None:
        import pyarrow as pa

        columns: dict[str, list[Any]] = {name: [] for name in STORED_FIELDS}
        for i, name in enumerate(STORED_FIELDS[1:], start=1):
            col = columns[name]
            for row in rows:
                col.append(row[i])
        if self.integer_keys:
            columns["key"] = keys
        else:
            columns["key"] = [k if isinstance(k, str) else orjson.dumps(k).decode() for k in keys]
        columns["loaded_at"] = [self.loaded_at] * len(rows)
        columns["attempts"] = [self.attempts] * len(rows)
        if self.output_columns:
            extras = [self._extras(row) for row in rows]
            for j, name in enumerate(self.output_columns):
                values = (e[j] for e in extras)
                columns[name] = [
                    v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values
                ]
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self._writer.schema))

    def close(self) -> None:
        """Finish both files and move them into place (errors first, results last)."""
        if self._writer is not None:
            self._writer.close()  # the Parquet footer; the file object stays open (it is not the writer's)
            self._writer = None
        self._out = self._errors = None
        while self._pending:
            self._pending[0].publish()
            self._pending.pop(0)  # only once in place: an abort after a failed move still discards the rest

    def abort(self) -> None:
        """Drop the temporary files: the destination keeps the files of the previous load, if any."""
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the footer goes to a file that is thrown away anyway
                self._writer.close()
            self._writer = None
        self._out = self._errors = None
        pending, self._pending = self._pending, []
        for file in pending:
            file.discard()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.results_path), "errors_path": str(self.errors_path)}
