"""Benchmark, ON THE BIGQUERY EMULATOR (bqemulator: DuckDB behind the REST and Storage Read APIs), not BigQuery:
the incremental check against a BigQuery destination of 1 M answered rows.

Compared in the same run, each case in a fresh process (bench/harness.py), against the same table:

* floor - a bare ``client.list_rows(table, selected_fields=...).to_arrow(bqstorage_client=...)`` of the
  columns the check reads on a first try (key, ``request_fingerprint``, the token columns) through the Storage
  Read API: the whole read in memory as Arrow, nothing done with it;
* ours - :class:`~airflow_gemini_batch.inputs.incremental_bigquery.BigQueryReuseCheck` as the submit operator
  runs it: open (the restricted Storage Read session streamed into the temporary SQLite mirror), every input
  batch of 10 000 keys and fingerprints filtered against it, close (the file deleted).

The input batches are built before timing (they are what the encoder hands the check). 1 % of the rows have a
changed fingerprint and 1 % of the destination rows did not succeed, so both the reuse and the send paths
run. Reported: time against the floor (and how much of ours the mirror's build took), peak memory above the
post-setup baseline (goal: bounded whatever the table's size, where the floor's grows with it; on the emulator
the Storage Read client's own warm-up buffers set it, as for the BigQuery source). ``BENCH_ROWS`` scales the
run (default 1 000 000; the small size is min(100 000, BENCH_ROWS)); ``BENCH_REPEATS`` (default 2).
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

from bench.bigquery import emulated_bigquery
from bench.harness import best_of, format_row

CONN_ID = "google_cloud_default"
DATASET = "bench_incremental"
BATCH = 10_000
#: What the check reads on a first try (no own jobs to exclude, so no job_name): what the floor reads too.
FIELDS = ("key", "request_fingerprint", "prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens")


def _fingerprint(i: int, changed: bool = False) -> str:
    return f"{i * 2654435761 % 2**64 + (1 if changed else 0):064x}"


def seed(client: Any, table: str, n: int) -> None:
    """``n`` answers as the BigQuery sink stores them (the check's columns plus a text one it must not read)."""
    import orjson
    from google.cloud import bigquery

    types = {"key": "INT64", "outcome": "STRING", "text": "STRING", "request_fingerprint": "STRING",
             "job_name": "STRING"}  # fmt: skip
    schema = [
        bigquery.SchemaField(c, types.get(c, "INT64"))
        for c in (*FIELDS, "total_tokens", "job_name", "outcome", "text")
    ]
    data = io.BytesIO()
    for i in range(n):
        row = {"key": i, "outcome": "failed" if i % 100 == 3 else "succeeded", "request_fingerprint": _fingerprint(i),
               "prompt_tokens": 40, "output_tokens": 60, "thinking_tokens": 0, "cached_tokens": 0,
               "total_tokens": 100, "job_name": "batches/bench", "text": f"A sturdy product number {i}, made to last."}  # fmt: skip
        data.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    data.seek(0)
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(data, table, job_config=config).result()


def floor(table: str) -> Any:
    from airflow_gemini_batch.hooks.bigquery import BigQueryClients

    clients = BigQueryClients(CONN_ID)
    client, read_client = clients.client, clients.read_client()
    fields = [f for f in client.get_table(table).schema if f.name in FIELDS]

    def run() -> int:
        return client.list_rows(table, selected_fields=fields).to_arrow(bqstorage_client=read_client).num_rows

    return run


def ours(table: str, rows: int) -> Any:
    import orjson

    from airflow_gemini_batch.inputs.incremental import ReuseDestination
    from airflow_gemini_batch.inputs.incremental_bigquery import BigQueryReuseCheck

    batches = []
    for start in range(0, rows, BATCH):
        keys = range(start, min(rows, start + BATCH))
        batches.append(
            (
                [b""] * len(keys),  # the request lines: only picked out, never read
                [orjson.dumps(str(i)) for i in keys],
                [_fingerprint(i, changed=i % 100 == 7) for i in keys],
            )
        )
    check = BigQueryReuseCheck(ReuseDestination(CONN_ID, table, destination_key_column="key"))
    assert (
        check.clients.client is not None
    )  # connection, hook and REST client before the timing, as the floor's
    from google.cloud import bigquery_storage_v1  # noqa: F401 - imported before the timing, as in the floor

    def run() -> dict[str, Any]:
        sent = 0
        started = time.perf_counter()
        with check:
            opened = time.perf_counter()
            for lines, keys, fingerprints in batches:
                sent += len(check.filter(lines, keys, fingerprints)[1])
        assert check.read_path == "storage", check.read_path
        return {"reused": check.reused, "sent": sent, "mirror_seconds": opened - started}

    return run


def main() -> None:
    full = int(os.environ.get("BENCH_ROWS", "1000000"))
    small = min(100_000, full)
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    with emulated_bigquery(DATASET, "gemini-bench-bq-inc-") as client:
        tables = {n: f"{client.project}.{DATASET}.answers_{n}" for n in {full, small}}
        for n, table in tables.items():
            print(f"  seeding {table} with {n:,} answers ...", flush=True)
            seed(client, table, n)
        print(f"  (each case {repeats}x, interleaved; the fastest run of each counts)")
        results = best_of(
            repeats,
            {
                "floor": ("bench.incremental_bigquery:floor", {"table": tables[full]}),
                "floor-small": ("bench.incremental_bigquery:floor", {"table": tables[small]}),
                "ours": ("bench.incremental_bigquery:ours", {"table": tables[full], "rows": full}),
                "ours-small": ("bench.incremental_bigquery:ours", {"table": tables[small], "rows": small}),
            },
        )
        expected_sent = sum(1 for i in range(full) if i % 100 in (3, 7))
        value = results["ours"]["value"]
        assert (value["reused"], value["sent"]) == (full - expected_sent, expected_sent), value
        print(format_row(f"floor: bare read, check's columns {full:,}", results["floor"]))
        print(format_row(f"floor: bare read, check's columns {small:,}", results["floor-small"]))
        print(format_row(f"ours: BigQueryReuseCheck {full:,}", results["ours"], results["floor"]))
        print(format_row(f"ours: BigQueryReuseCheck {small:,}", results["ours-small"]))
        print(
            f"  time: ours {results['ours']['seconds'] / results['floor']['seconds']:.2f}x the floor's; of it the "
            f"mirror (open) {value['mirror_seconds']:.2f} s, the lookups the rest"
        )


if __name__ == "__main__":
    main()
