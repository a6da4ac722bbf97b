"""Object-storage sink: result rows → ``results.jsonl`` or ``results.parquet``, plus ``errors.jsonl``.

Invariants:

* Streamed: JSONL is written line by line; Parquet one row group per chunk through ``pyarrow.parquet``'s
  ``ParquetWriter``, so neither format holds more than a chunk in memory.
* A rerun overwrites the files (the folder's equivalent of an upsert): one file set per destination folder,
  one row per input key, never appended twice.
* Every row carries the load's ``attempts`` (1, or the row-retry round that loaded it), like ``loaded_at``.
* ``errors.jsonl`` next to the results lists the non-succeeded rows, so failed keys are findable without
  scanning the results.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.results.rows import STORED_FIELDS, SUCCEEDED
from airflow_gemini_batch.sinks.table import json_cell
from airflow_gemini_batch.storage import object_path

if TYPE_CHECKING:
    from airflow_gemini_batch.results.rows import ResultRow

FORMATS = ("jsonl", "parquet")
_ERROR_FIELDS = ("key", "outcome", "error_code", "error_message", "job_name", "loaded_at")


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
        self._out: Any = None
        self._errors: Any = None
        self._writer: Any = None

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._out = self.results_path.open("wb")
        self._errors = self.errors_path.open("wb")
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

    def write(self, rows: list[ResultRow]) -> None:
        errors = self._errors
        dumps = orjson.dumps
        for row in rows:
            if row.outcome != SUCCEEDED:
                err = (row.key, row.outcome, row.error_code, row.error_message, row.job_name, self.loaded_at)
                errors.write(dumps(dict(zip(_ERROR_FIELDS, err, strict=True))) + b"\n")
        if self._writer is not None:
            self._write_parquet(rows)
        else:
            out = self._out
            names = (*STORED_FIELDS, "loaded_at", "attempts", *self.output_columns)
            for row in rows:
                values = [*row[: len(STORED_FIELDS)], self.loaded_at, self.attempts, *self._extras(row)]
                out.write(dumps(dict(zip(names, values, strict=True))) + b"\n")
        self.rows_written += len(rows)

    def _write_parquet(self, rows: list[ResultRow]) -> None:
        import pyarrow as pa

        columns: dict[str, list[Any]] = {name: [] for name in STORED_FIELDS}
        for i, name in enumerate(STORED_FIELDS):
            col = columns[name]
            for row in rows:
                col.append(row[i])
        if not self.integer_keys:
            columns["key"] = [k if isinstance(k, str) else orjson.dumps(k).decode() for k in columns["key"]]
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
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fh in (self._out, self._errors):
            if fh is not None:
                fh.close()
        self._out = self._errors = None

    def abort(self) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.results_path), "errors_path": str(self.errors_path)}
