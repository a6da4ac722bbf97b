"""Benchmark, ON THE BIGQUERY EMULATOR (bqemulator: DuckDB behind the REST and Storage Read APIs), not BigQuery.

Compared in the same run, each case in a fresh process (bench/harness.py), against the same emulator:

* read floor - a bare ``client.list_rows(table).to_arrow(bqstorage_client=...)`` of the table through the
  Storage Read API (whole table in memory as Arrow, no conversion);
* read ours - ``BigQueryRowSource(table=...)``: the same Storage Read (the same read session, all columns),
  streamed into the Python tuple batches every source yields, consumed with the cyclic GC paused as
  ``inputs.shards.build_shards`` consumes every source in the product. Not included: request building
  (the encoder, the same for every source). Goal: ≥ 0.8x the floor's rate, peak memory flat between 100 k
  and 1 M rows;
* load floor - the same result rows as NDJSON (orjson) and one bare load job straight into a table;
* load ours - ``BigQueryTableSink`` into a fresh table (so the load jobs go straight into it: the path of a
  first load; a rerun's stage + MERGE is not timed here), fed by the operator's own hot loop
  (``results.loading.stream_to_sink``: chunking, outcome and token counts, the cyclic GC paused). Goal: ≤ 1.3x the floor, peak memory flat between
  100 k and 1 M rows.

Emulator figures say how our code paths compare on the same server; they are not BigQuery's throughput (the
emulator runs on this machine's cores, which the client shares). ``BENCH_ROWS`` scales the run (default
1 000 000; the small size is min(100 000, BENCH_ROWS)); ``BENCH_REPEATS`` (default 2); ``python -m
bench.bigquery read`` (or ``load``) runs one half only.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import best_of, format_row

CONN_ID = "google_cloud_default"
DATASET = "bench"
CHUNK = 5_000


def result_rows(n: int) -> Iterator[list[Any]]:
    """``n`` succeeded result rows in ``CHUNK``-row lists, generated on the fly (both load cases use them)."""
    from airflow_gemini_batch.results.rows import SUCCEEDED, ResultRow

    for start in range(0, n, CHUNK):
        yield [
            ResultRow(
                i,
                SUCCEEDED,
                f"A sturdy product number {i}, made to last.",
                None,
                None,
                "STOP",
                12,
                14,
                0,
                0,
                26,
                "gemini-2.5-flash-001",
                None,
                None,
                "batches/bench",
            )
            for i in range(start, min(n, start + CHUNK))
        ]


def _client() -> Any:
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    return BigQueryHook(gcp_conn_id=CONN_ID).get_client()


@contextmanager
def emulated_bigquery(dataset: str, prefix: str) -> Iterator[Any]:
    """A BigQuery emulator process for one bench run: ``CONN_ID`` pointed at it, ``dataset`` made; yields the
    BigQuery client; the process is stopped after."""
    from airflow_gemini_batch.emulator.gcp_processes import (
        connection_extras,
        emulator_env,
        start_bigquery_emulator,
        stop_process,
    )

    print("  ON THE BIGQUERY EMULATOR (bqemulator 1.4 / DuckDB, on this machine) - not BigQuery's figures")
    proc, emulator = start_bigquery_emulator(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        os.environ.update(emulator_env(emulator, None))
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "google_cloud_platform", "extra": connection_extras(None)}
        )
        client = _client()
        client.create_dataset(dataset, exists_ok=True)
        yield client
    finally:
        stop_process(proc, grace=10.0)


def read_floor(table: str) -> Any:
    from airflow_gemini_batch.hooks.bigquery import BigQueryClients

    clients = BigQueryClients(CONN_ID)
    client, read_client = clients.client, clients.read_client()

    def run() -> int:
        return client.list_rows(table).to_arrow(bqstorage_client=read_client).num_rows

    return run


def read_ours(table: str) -> Any:
    from airflow_gemini_batch.inputs.bigquery import BigQueryRowSource
    from airflow_gemini_batch.streaming import paused_gc

    # As in the floor, the connection, the hook and the REST client are made (and their modules imported)
    # before the timing; the Storage Read client is made inside the timed read, as the source makes it.
    source = BigQueryRowSource(CONN_ID, table=table)
    assert source.clients.client is not None
    from google.cloud import bigquery_storage_v1  # noqa: F401 - imported before the timing, as in the floor

    def run() -> int:
        with paused_gc():  # as build_shards, the product's only consumer of a source, runs
            count = sum(len(batch) for batch in source.batches())
        assert source.read_path == "storage", source.read_path
        return count

    return run


def load_floor(rows: int, table: str) -> Any:
    import orjson
    from google.cloud import bigquery

    from airflow_gemini_batch.results.rows import STORED_FIELDS
    from airflow_gemini_batch.sinks import table_sink

    client = _client()
    schema = table_sink(CONN_ID, table, key_column_type="INT64").schema()  # the same columns as ours
    assert client is not None

    def run() -> int:
        loaded_at = "2026-12-02T00:00:00.000000+00:00"
        with tempfile.TemporaryFile() as f:
            for chunk in result_rows(rows):
                for r in chunk:
                    row = dict(zip(STORED_FIELDS, r[: len(STORED_FIELDS)], strict=True))
                    row["loaded_at"], row["attempts"] = loaded_at, 1
                    f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            f.seek(0)
            config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
            client.load_table_from_file(f, table, job_config=config).result()
        return rows

    return run


def load_ours(rows: int, table: str) -> Any:
    from itertools import chain

    from airflow_gemini_batch.results.loading import LoadTotals, stream_to_sink
    from airflow_gemini_batch.results.rows import ShardReport
    from airflow_gemini_batch.sinks import table_sink

    sink = table_sink(CONN_ID, table, key_column_type="INT64")  # connection, hook, client: before the timing
    assert sink.clients.client is not None

    def run() -> int:
        # The operator's hot loop (chunking, outcome and token counts, cyclic GC paused), then the last load
        # job and the close, as GeminiBatchLoadResultsOperator runs them.
        sink.open()
        stream_to_sink(
            chain.from_iterable(result_rows(rows)), sink, LoadTotals(), ShardReport("batches/bench"), CHUNK
        )
        sink.close()
        return sink.rows_written

    return run


def seed(client: Any, table: str, n: int) -> None:
    import orjson
    from google.cloud import bigquery

    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("name", "STRING"),
              bigquery.SchemaField("category", "STRING"), bigquery.SchemaField("description", "STRING")]  # fmt: skip
    data = io.BytesIO()
    for i in range(n):
        row = {"id": i, "name": f"product {i}", "category": ("tools", "garden", "kitchen")[i % 3],
               "description": f"a sturdy, light and handy thing, number {i}"}  # fmt: skip
        data.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    data.seek(0)
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(data, table, job_config=config).result()


def _reads(sources: dict[int, str], full: int, small: int, repeats: int) -> None:
    reads = best_of(
        repeats,
        {
            "floor": ("bench.bigquery:read_floor", {"table": sources[full]}),
            "ours": ("bench.bigquery:read_ours", {"table": sources[full]}),
            "ours-small": ("bench.bigquery:read_ours", {"table": sources[small]}),
        },
    )
    print(format_row(f"read floor: list_rows().to_arrow() {full:,}", reads["floor"]))
    print(format_row(f"read ours: BigQueryRowSource {full:,}", reads["ours"], reads["floor"]))
    print(format_row(f"read ours: BigQueryRowSource {small:,}", reads["ours-small"]))
    rate = reads["floor"]["seconds"] / reads["ours"]["seconds"]
    print(f"  read rate: ours {rate:.2f}x the floor's (goal >= 0.8x)")


def main() -> None:
    full = int(os.environ.get("BENCH_ROWS", "1000000"))
    small = min(100_000, full)
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    parts = sys.argv[1:] or ["read", "load"]
    with emulated_bigquery(DATASET, "gemini-bench-bq-") as client:
        sources = {n: f"{client.project}.{DATASET}.src_{n}" for n in {full, small}}
        for n, table in sources.items():
            print(f"  seeding {table} with {n:,} rows ...", flush=True)
            seed(client, table, n)
        print(f"  (each case {repeats}x, interleaved; the fastest run of each counts)")
        if "read" in parts:
            _reads(sources, full, small, repeats)
        if "load" not in parts:
            return

        def fresh(label: str) -> str:
            return f"{client.project}.{DATASET}.{label}_{uuid.uuid4().hex[:8]}"

        loads: dict[str, dict[str, Any]] = {}
        for _ in range(repeats):  # a fresh destination per run, so every run loads into an empty table
            result = best_of(
                1,
                {
                    "floor": ("bench.bigquery:load_floor", {"rows": full, "table": fresh("floor")}),
                    "ours": ("bench.bigquery:load_ours", {"rows": full, "table": fresh("ours")}),
                    "ours-small": ("bench.bigquery:load_ours", {"rows": small, "table": fresh("small")}),
                },
            )
            for label, r in result.items():
                kept = loads.setdefault(label, r)
                kept["peak_mb"] = max(kept["peak_mb"], r["peak_mb"])
                kept["seconds"] = min(kept["seconds"], r["seconds"])
        print(format_row(f"load floor: NDJSON + one load job {full:,}", loads["floor"]))
        print(format_row(f"load ours: BigQueryTableSink, new table {full:,}", loads["ours"], loads["floor"]))
        print(format_row(f"load ours: BigQueryTableSink, new table {small:,}", loads["ours-small"]))
        print(
            f"  load time: ours {loads['ours']['seconds'] / loads['floor']['seconds']:.2f}x the floor's (goal <= 1.3x)"
        )


if __name__ == "__main__":
    main()
