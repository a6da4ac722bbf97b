"""Benchmark: 1 M result lines → SQLite and PostgreSQL through the operator's own parse + reconcile + sink path.

Compared in the same run with the floor: the same final tuples, prepared beforehand, written with a bare
``executemany`` (SQLite) or a bare ``COPY`` (PostgreSQL) into a table with the same DDL. Peak memory above the
post-setup baseline is measured at 100 k and at the full size (goal: ≤ 64 MB and flat). Goal for time: ≤ 1.5x
the floor. No HTTP: the responses file is generated locally, shaped as the emulator writes it.

Not like for like on SQLite, and said so in the output: the floor binds all 16 values of every tuple, as a plain
loader would, while our sink binds only the values that vary (columns NULL in a whole chunk are left out, the
job name and ``loaded_at`` are literals: :mod:`airflow_gemini_batch.sinks.table`). With these lines (one failed
line in 500, so every chunk has error codes; no thinking or cached token counts, as from a model without
thinking) a chunk binds 10 of its 16 values; with thinking tokens, 11. So the SQLite run also times a second,
informational floor: a bare ``executemany`` of the tuples exactly as our sink narrows them, which shows what the
parse + reconcile + bookkeeping itself costs.

``BENCH_ROWS`` scales the full size down (e.g. ``BENCH_ROWS=200000 python -m bench load_results``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.harness import best_of, format_row

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
CHUNK = 5_000


def _line(i: int) -> bytes:
    text = (
        f"echo: Write a one-paragraph product description for product {i} in category {('tools', 'garden', 'kitchen')[i % 3]}. "
        * 2
    )
    prompt_tokens, out_tokens = 31 + i % 7, len(text) // 4
    return orjson.dumps(
        {
            "key": i,
            "response": {
                "candidates": [
                    {
                        "content": {"parts": [{"text": text}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": out_tokens,
                    "totalTokenCount": prompt_tokens + out_tokens,
                },
                "modelVersion": "gemini-2.5-flash",
                "responseId": f"resp-{i:012d}",
            },
        }
    )


def generate(rows: int) -> dict[str, str]:
    """Responses JSONL (one line in 500 an error, as in real batches) + key list; cached per size."""
    folder = Path(tempfile.gettempdir()) / "gemini-bench-results" / str(rows)
    responses, keys = folder / "responses.jsonl", folder / "keys.jsonl"
    if not responses.exists():
        folder.mkdir(parents=True, exist_ok=True)
        error = b'"error":{"code":500,"message":"Internal error"}}'
        with open(str(responses) + ".tmp", "wb") as out, open(keys, "wb") as key_out:
            for i in range(rows):
                out.write((b'{"key":%d,' % i + error if i % 500 == 250 else _line(i)) + b"\n")
                key_out.write(b"%d\n" % i)
        os.replace(str(responses) + ".tmp", responses)
    return {"responses": str(responses), "keys": str(keys)}


class _SqliteHook:
    dialect_name = "sqlite"
    placeholder = "?"

    def __init__(self, path: str) -> None:
        self.path = path

    def get_conn(self) -> Any:
        import sqlite3

        return sqlite3.connect(self.path)


class _PgHook:
    dialect_name = "postgresql"
    placeholder = "%s"

    def get_conn(self) -> Any:
        import psycopg

        return psycopg.connect(PG_DSN)


def _hook(db: str) -> Any:
    return _PgHook() if db == "postgres" else _SqliteHook(db)


def _fresh(db: str, table: str) -> None:
    """Every run starts from nothing: a new SQLite file, or no such table on PostgreSQL (untimed setup)."""
    if db == "postgres":
        _drop_pg(table)
    else:
        Path(db).unlink(missing_ok=True)


# ---- cases (run in fresh subprocesses by bench.harness) ------------------------------------------------------


def ours(rows: int, db: str, table: str) -> Any:
    """The operator's path: iter_file_rows (orjson + classify + reconcile) → stream_to_sink → table sink."""
    from airflow_gemini_batch.results.loading import LoadTotals, stream_to_sink
    from airflow_gemini_batch.results.parsing import ResultParser, ShardReport, iter_file_rows
    from airflow_gemini_batch.results.reconcile import KeyReconciler
    from airflow_gemini_batch.sinks import table_sink

    files = generate(rows)
    _fresh(db, table)
    hook = _hook(db)
    hook.get_conn().close()  # warm the driver's imports, as the floor's setup does
    sink = table_sink("bench", table, key_column_type="INTEGER", hook=hook)

    def run() -> dict[str, Any]:
        totals, report = LoadTotals(), ShardReport(job_name="batches/bench")
        keys = KeyReconciler(files["keys"])
        sink.open()
        stream_to_sink(
            iter_file_rows(files["responses"], ResultParser(), keys, report), sink, totals, report, CHUNK
        )
        sink.close()
        return {"rows": totals.rows, "counts": totals.counts}

    return run


def _final_tuples(rows: int, db: str) -> list[tuple]:
    """The exact tuples the sink binds, prepared outside the timed part (what the floor writes)."""
    from datetime import datetime, timezone

    from airflow_gemini_batch.results.parsing import N_STORED, ResultParser, ShardReport, iter_file_rows
    from airflow_gemini_batch.results.reconcile import KeyReconciler

    files = generate(rows)
    # What both table sinks bind for loaded_at: ISO 8601 text (PostgreSQL parses it into TIMESTAMPTZ); then
    # the load's attempts (1).
    loaded_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    rows_iter = iter_file_rows(
        files["responses"], ResultParser(), KeyReconciler(files["keys"]), ShardReport("b")
    )
    return [(*r[:N_STORED], loaded_at, 1) for r in rows_iter]


def floor(rows: int, db: str, table: str) -> Any:
    from airflow_gemini_batch.sinks.schema import TableLayout

    tuples = _final_tuples(rows, db)
    dialect = "postgresql" if db == "postgres" else "sqlite"
    layout = TableLayout(table, dialect, key_column_type="INTEGER")
    cols = ", ".join(f'"{c}"' for c, _ in layout.columns())
    _fresh(db, table)
    hook = _hook(db)
    hook.get_conn().close()  # warm the driver's imports, as the sink's setup does

    def run() -> int:
        conn = hook.get_conn()  # connecting is timed on both sides
        cur = conn.cursor()
        cur.execute(layout.create_sql())
        if db == "postgres":
            with cur.copy(f"COPY {layout.qualified} ({cols}) FROM STDIN") as copy:
                for t in tuples:
                    copy.write_row(t)
        else:
            cur.executemany(
                f"INSERT INTO {layout.qualified} ({cols}) VALUES ({', '.join('?' * len(tuples[0]))})", tuples
            )
        conn.commit()
        conn.close()
        return len(tuples)

    return run


def narrow_floor(rows: int, db: str, table: str) -> Any:
    """SQLite only: a bare ``executemany`` of the tuples as our sink narrows them (all-NULL columns left out,
    the constant job name, ``loaded_at`` and ``attempts`` as literals), in one statement for the whole load."""
    import sqlite3

    from airflow_gemini_batch.sinks.schema import TableLayout

    tuples = _final_tuples(rows, db)
    layout = TableLayout(table, "sqlite", key_column_type="INTEGER")
    names = [c for c, _ in layout.columns()]
    constant = {14, 15, 16}  # job name, loaded_at, attempts: the same in every tuple here
    kept = [i for i in range(len(names)) if i not in constant and any(t[i] is not None for t in tuples)]
    narrowed = [tuple(t[i] for i in kept) for t in tuples]
    columns = ", ".join(f'"{names[i]}"' for i in [*kept, *sorted(constant)])
    values = ", ".join(["?"] * len(kept) + [f"'{tuples[0][i]}'" for i in sorted(constant)])
    _fresh(db, table)

    def run() -> int:
        conn = sqlite3.connect(db)
        conn.execute(layout.create_sql())
        conn.executemany(f"INSERT INTO {layout.qualified} ({columns}) VALUES ({values})", narrowed)
        conn.commit()
        conn.close()
        return len(narrowed)

    return run


# ---- main ---------------------------------------------------------------------------------------------------


def _pg_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_DSN).close()
        return True
    except Exception:
        return False


def _drop_pg(*tables: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for t in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{t}", "{t}_errors"')


def main() -> None:
    full = int(os.environ.get("BENCH_ROWS", "1000000"))
    small = min(100_000, full)
    print(f"generating {full:,} result lines (cached in the temp dir) ...", flush=True)
    generate(full)
    generate(small)
    work = Path(tempfile.mkdtemp(prefix="gemini-bench-load-"))
    targets = ["sqlite"] + (["postgres"] if _pg_reachable() else [])
    if "postgres" not in targets:
        print("  (PostgreSQL not reachable at 127.0.0.1:5432: PostgreSQL rows skipped)")
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    print(f"  (each case {repeats}x, interleaved; the fastest run of each counts)")
    for target in targets:
        print(f"\n  -> {target}")
        cases = {}
        runs = [("floor", "floor", full), ("ours", "ours", full), ("ours-small", "ours", small)]
        if target == "sqlite":
            runs.append(("floor-narrow", "narrow_floor", full))
        for label, fn, n in runs:
            table = f"bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            db = "postgres" if target == "postgres" else str(work / f"{table}.db")
            cases[label] = (f"bench.load_results:{fn}", {"rows": n, "db": db, "table": table})
        try:
            results = best_of(repeats, cases)
        finally:
            for _, kwargs in cases.values():
                _fresh(kwargs["db"], kwargs["table"])
        print(
            format_row(
                f"floor ({'COPY' if target == 'postgres' else 'executemany'}) {full:,}", results["floor"]
            )
        )
        print(format_row(f"parse+reconcile+upsert {full:,}", results["ours"], results["floor"]))
        print(format_row(f"parse+reconcile+upsert {small:,}", results["ours-small"]))
        if "floor-narrow" in results:
            narrow = results["floor-narrow"]
            print(format_row(f"floor, binding as ours does {full:,}", narrow))
            print(
                f"  (not like for like: our sink binds only the values that vary, the floor all 16; against a "
                f"floor that binds as ours does: {results['ours']['seconds'] / narrow['seconds']:.2f}x)"
            )
        ratio = results["ours"]["seconds"] / results["floor"]["seconds"]
        peaks = (results["ours-small"]["peak_mb"], results["ours"]["peak_mb"])
        print(
            f"  goals: time {ratio:.2f}x floor (<= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}); "
            f"memory +{peaks[0]:.1f} MB at {small:,} / +{peaks[1]:.1f} MB at {full:,} "
            f"(<= 64 MB: {'met' if max(peaks) <= 64 else 'NOT met'})"
        )
    for f in work.glob("*"):
        f.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
