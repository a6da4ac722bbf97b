"""Benchmark of the BigQuery RERUN path, ON THE BIGQUERY EMULATOR (bqemulator: DuckDB), not BigQuery.

A rerun loads into a destination that already holds every key: ``BigQueryTableSink`` stages the rows by NDJSON
load jobs, then runs the destination's and the errors table's ``MERGE`` as one transaction (one script job),
and drops the stage. Compared in the same run, each case in a fresh process (bench/harness.py), same emulator:

* load floor - the same rows as NDJSON (orjson) and one bare load job into an empty table (the issue's goal:
  ours ≤ 1.3x this);
* load + MERGE floor - the same NDJSON, one bare load job into an empty staging table, then one bare ``MERGE``
  of it into a copy of the destination (the least any staged upsert can do: the figure the sink's own extra
  work - the errors table's ``MERGE``, the transaction, the stage's expiry and drop - is measured against);
* ours - ``BigQueryTableSink`` into a copy of the destination (every key matched: all rows updated), at the
  full size and at the small one (peak memory should be flat between them).

Every destination is a ``CREATE TABLE ... AS SELECT`` copy of a seed table made once (by the sink's first load),
so each run starts from the same full table. ``BENCH_ROWS`` scales the run (default 1 000 000; the small size
is min(100 000, BENCH_ROWS)); ``BENCH_REPEATS`` (default 2).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from bench.bigquery import _client, emulated_bigquery
from bench.harness import best_of, format_row

CONN_ID = "google_cloud_default"
DATASET = "bench_merge"
CHUNK = 5_000
LOADED_AT = "2026-12-02T00:00:00.000000+00:00"


def result_rows(n: int, text: str) -> Iterator[list[Any]]:
    """``n`` succeeded result rows in ``CHUNK``-row lists, generated on the fly (every case uses them)."""
    from airflow_gemini_batch.results.rows import SUCCEEDED, ResultRow

    for start in range(0, n, CHUNK):
        yield [
            ResultRow(
                i,
                SUCCEEDED,
                f"{text} product number {i}, made to last.",
                finish_reason="STOP",
                prompt_tokens=12,
                output_tokens=14,
                thinking_tokens=0,
                cached_tokens=0,
                total_tokens=26,
                model_version="gemini-2.5-flash-001",
                job_name="batches/bench",
                request_fingerprint=f"{i:064x}",
            )
            for i in range(start, min(n, start + CHUNK))
        ]


def _sink(table: str) -> Any:
    from airflow_gemini_batch.sinks import table_sink

    return table_sink(CONN_ID, table, key_column_type="INT64")


def _copy(client: Any, seed: str, table: str) -> None:
    """A fresh copy of the seeded destination and its errors table (before the timing)."""
    client.query(f"CREATE TABLE `{table}` AS SELECT * FROM `{seed}`").result()
    client.query(f"CREATE TABLE `{table}_errors` AS SELECT * FROM `{seed}_errors`").result()


def _ndjson(rows: int, f: Any) -> None:
    import orjson

    from airflow_gemini_batch.results.rows import STORED_FIELDS

    for chunk in result_rows(rows, "A rerun's"):
        for r in chunk:
            row = dict(zip(STORED_FIELDS, r[: len(STORED_FIELDS)], strict=True))
            row["loaded_at"], row["attempts"] = LOADED_AT, 1
            f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    f.seek(0)


def _load(client: Any, f: Any, table: str, schema: Any) -> None:
    from google.cloud import bigquery

    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(f, table, job_config=config).result()


def load_floor(rows: int, table: str) -> Any:
    client = _client()
    schema = _sink(table).schema()  # the same columns as ours

    def run() -> int:
        with tempfile.TemporaryFile() as f:
            _ndjson(rows, f)
            _load(client, f, table, schema)
        return rows

    return run


def load_merge_floor(rows: int, seed: str, table: str) -> Any:
    client = _client()
    _copy(client, seed, table)
    schema = _sink(table).schema()
    names = [f"`{f.name}`" for f in schema]
    stage = f"{table}_stage"
    merge = (
        f"MERGE `{table}` AS t USING `{stage}` AS s ON t.`key` = s.`key`\n"
        f"WHEN MATCHED THEN UPDATE SET {', '.join(f'{c} = s.{c}' for c in names[1:])}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) VALUES ({', '.join('s.' + c for c in names)})"
    )

    def run() -> int:
        with tempfile.TemporaryFile() as f:
            _ndjson(rows, f)
            _load(client, f, stage, schema)
        client.query(merge).result()
        return rows

    return run


def rerun_ours(rows: int, seed: str, table: str) -> Any:
    client = _client()
    _copy(client, seed, table)
    sink = _sink(table)  # connection, hook, client: before the timing
    assert sink.clients.client is not None

    def run() -> int:
        sink.open()
        for chunk in result_rows(rows, "A rerun's"):
            sink.write(chunk)
        sink.close()
        return sink.rows_written

    return run


def seed_destination(table: str, rows: int) -> None:
    """The destination as a first load leaves it (the sink itself, into a new table)."""
    sink = _sink(table)
    sink.open()
    for chunk in result_rows(rows, "A first"):
        sink.write(chunk)
    sink.close()


def main() -> None:
    full = int(os.environ.get("BENCH_ROWS", "1000000"))
    small = min(100_000, full)
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    with emulated_bigquery(DATASET, "gemini-bench-bqm-") as client:
        seeds = {n: f"{client.project}.{DATASET}.seed_{n}" for n in {full, small}}
        for n, table in seeds.items():
            print(f"  seeding {table} with {n:,} rows (a first load) ...", flush=True)
            seed_destination(table, n)

        def fresh(label: str) -> str:
            return f"{client.project}.{DATASET}.{label}_{uuid.uuid4().hex[:8]}"

        print(f"  (each case {repeats}x, interleaved; the fastest run of each counts)")
        got: dict[str, dict[str, Any]] = {}
        for _ in range(repeats):  # fresh tables per run, so every run starts from the same state
            result = best_of(
                1,
                {
                    "load": ("bench.bigquery_merge:load_floor", {"rows": full, "table": fresh("floor")}),
                    "load+merge": (
                        "bench.bigquery_merge:load_merge_floor",
                        {"rows": full, "seed": seeds[full], "table": fresh("merge_floor")},
                    ),
                    "ours": (
                        "bench.bigquery_merge:rerun_ours",
                        {"rows": full, "seed": seeds[full], "table": fresh("ours")},
                    ),
                    "ours-small": (
                        "bench.bigquery_merge:rerun_ours",
                        {"rows": small, "seed": seeds[small], "table": fresh("small")},
                    ),
                },
            )
            for label, r in result.items():
                kept = got.setdefault(label, r)
                kept["peak_mb"] = max(kept["peak_mb"], r["peak_mb"])
                kept["seconds"] = min(kept["seconds"], r["seconds"])
        print(format_row(f"floor: NDJSON + one load job {full:,}", got["load"]))
        print(format_row(f"floor: + one bare MERGE {full:,}", got["load+merge"], got["load"]))
        print(format_row(f"ours: rerun (stage + MERGE) {full:,}", got["ours"], got["load"]))
        print(format_row(f"ours: rerun (stage + MERGE) {small:,}", got["ours-small"]))
        ratio = got["ours"]["seconds"] / got["load"]["seconds"]
        print(f"  rerun time: ours {ratio:.2f}x a bare load job (goal <= 1.3x)")
        floor = got["load+merge"]["seconds"]
        print(f"  rerun time: ours {got['ours']['seconds'] / floor:.2f}x a bare load job + bare MERGE")
        print(
            f"  bare load + MERGE itself: {floor / got['load']['seconds']:.2f}x a bare load job "
            "(what any staged upsert costs on the emulator)"
        )
        print(
            f"  peak memory: +{got['ours-small']['peak_mb']:.1f} MB at {small:,}, +{got['ours']['peak_mb']:.1f} MB at {full:,}"
        )


if __name__ == "__main__":
    main()
