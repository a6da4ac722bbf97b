"""Benchmark, ON THE GCS EMULATOR (gcp-storage-emulator, a Python server on this machine), not Cloud Storage.

How result files and key lists move to and from ``gs://`` through our code, against a bare gcsfs transfer of
the same bytes, in the same run, each case in a fresh process (bench/harness.py), against the same emulator:

* results floor - the finished ``results.jsonl`` bytes (made once beforehand) put with a bare gcsfs
  ``put_file`` (what a copy of the file cannot do with less);
* results ours - ``ObjectStorageSink`` onto ``gs://``: the rows serialised chunk by chunk into a hidden
  temporary object, then the server-side copy into place and the delete (:class:`~airflow_gemini_batch.storage.
  PendingFile`); the same rows onto the local disk are shown to tell serialising from moving;
* key list floor - a bare gcsfs ``get_file`` of a key list to the local disk;
* key list ours - :func:`~airflow_gemini_batch.storage.open_binary` on ``gs://``, read line by line (how the
  load reads key lists and the submit an ``input_path``).

Emulator figures compare our paths with gcsfs's on the same server; they are not Cloud Storage's throughput.
``BENCH_ROWS`` sets the result rows (default 200 000, ~90 MB of JSONL) and the key list has 5x as many keys;
``BENCH_REPEATS`` the runs per case (default 2; fastest time, highest peak kept).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import best_of, format_row

CONN_ID = "google_cloud_default"
CHUNK = 5_000


def result_rows(n: int) -> Iterator[list[Any]]:
    """``n`` result rows in chunks, keys as they travel (strings), generated on the fly."""
    from airflow_gemini_batch.results.rows import SUCCEEDED, ResultRow

    text = "A sturdy product, made to last, with a handle that stays cool and a lid that fits. " * 3
    for start in range(0, n, CHUNK):
        yield [
            ResultRow(
                str(i),
                SUCCEEDED,
                text,
                finish_reason="STOP",
                prompt_tokens=12,
                output_tokens=40,
                total_tokens=52,
                model_version="gemini-2.5-flash",
                job_name="batches/b",
            )
            for i in range(start, min(n, start + CHUNK))
        ]


def warm(uri: str) -> None:
    """Import Airflow and the provider and build the store's file system now, not inside the timing (it
    takes seconds, once per process, and is no part of moving bytes)."""
    from airflow_gemini_batch.storage import object_path

    obj = object_path(uri)
    obj.fs.exists(obj.path)


def results_ours(rows: int, folder: str) -> Any:
    from airflow_gemini_batch.sinks import ObjectStorageSink

    warm(folder)

    def run() -> int:
        sink = ObjectStorageSink(folder, "jsonl", integer_keys=True)
        sink.open()
        for chunk in result_rows(rows):
            sink.write(chunk)
        sink.close()
        return sink.rows_written

    return run


def results_floor(local: str, remote: str) -> Any:
    from airflow_gemini_batch.storage import object_path

    warm(remote)
    target = object_path(remote)
    fs = target.fs

    def run() -> int:
        fs.put_file(local, target.path)
        return int(fs.size(target.path))

    return run


def keys_ours(remote: str) -> Any:
    from airflow_gemini_batch.storage import open_binary

    warm(remote)

    def run() -> int:
        with open_binary(remote) as fh:
            return sum(1 for _ in fh)

    return run


def keys_floor(remote: str, local: str) -> Any:
    from airflow_gemini_batch.storage import object_path

    warm(remote)
    source = object_path(remote)
    fs = source.fs

    def run() -> int:
        fs.get_file(source.path, local)
        return os.path.getsize(local)

    return run


def main() -> None:
    from airflow_gemini_batch.emulator.gcp_processes import (
        connection_extras,
        emulator_env,
        start_storage_emulator,
        stop_process,
    )

    rows = int(os.environ.get("BENCH_ROWS", "200000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    print("  ON THE GCS EMULATOR (gcp-storage-emulator, on this machine) - not Cloud Storage's figures")
    work = Path(tempfile.mkdtemp(prefix="gemini-bench-gcs-"))
    proc, emulator = start_storage_emulator(work)
    try:
        os.environ.update(emulator_env(None, emulator))
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "google_cloud_platform", "extra": connection_extras(emulator)}
        )
        from airflow_gemini_batch.storage import copy_file

        base = f"gs://{CONN_ID}@{emulator.bucket}/bench-{uuid.uuid4().hex[:8]}"
        local_results = work / "local-results"
        results_ours(rows, str(local_results))()  # the same bytes, for the floor
        size = (local_results / "results.jsonl").stat().st_size
        keys_local = work / "keys.jsonl"
        keys_local.write_bytes(b"".join(b'"%d"\n' % i for i in range(5 * rows)))
        copy_file(keys_local, f"{base}/keys.jsonl")

        print(f"  results: {rows:,} rows, {size / 1e6:.0f} MB of JSONL; key list: {5 * rows:,} keys, "
              f"{keys_local.stat().st_size / 1e6:.0f} MB")  # fmt: skip
        cases = {
            "results floor (gcsfs put_file)": (
                "bench.gcs:results_floor",
                {"local": str(local_results / "results.jsonl"), "remote": f"{base}/floor/results.jsonl"},
            ),
            "results ours, local disk": (
                "bench.gcs:results_ours",
                {"rows": rows, "folder": str(work / "out")},
            ),
            "results ours, gs://": ("bench.gcs:results_ours", {"rows": rows, "folder": f"{base}/out"}),
            "key list floor (gcsfs get_file)": (
                "bench.gcs:keys_floor",
                {"remote": f"{base}/keys.jsonl", "local": str(work / "keys-copy.jsonl")},
            ),
            "key list ours (open_binary, lines)": ("bench.gcs:keys_ours", {"remote": f"{base}/keys.jsonl"}),
        }
        best = best_of(repeats, cases)
        floor = best["results floor (gcsfs put_file)"]
        for label in ("results floor (gcsfs put_file)", "results ours, local disk", "results ours, gs://"):
            print(format_row(label, best[label], None if label.startswith("results floor") else floor))
        floor = best["key list floor (gcsfs get_file)"]
        for label in ("key list floor (gcsfs get_file)", "key list ours (open_binary, lines)"):
            print(format_row(label, best[label], None if "floor" in label else floor))
    finally:
        stop_process(proc, grace=10.0)


if __name__ == "__main__":
    main()
