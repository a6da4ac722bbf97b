"""Benchmark: the incremental skip check against a destination of 1 M answered rows, SQLite and PostgreSQL.

Compared in the same run, each case in a fresh process (bench/harness.py), over the same tables:

* floor — a bare SQL anti-join that finds the rows to send: ``SELECT COUNT(*) FROM src LEFT JOIN answers a
  ON a.key = src.key AND a.outcome = 'succeeded' AND a.request_fingerprint = src.fp WHERE a.key IS NULL``,
  where ``src`` holds every input key with its request fingerprint (what the submit side computes);
* floor 2 — the same anti-join, its input first bulk-loaded from the client into a TEMP table (SQLite: one
  ``executemany`` in one transaction; PostgreSQL: psycopg 3 ``COPY`` + ``ANALYZE``): the floor's input is
  already a table in the database, ours has to ship every key and fingerprint in, which this floor pays too;
* ours — :class:`~airflow_gemini_batch.inputs.incremental.ReuseCheck` (what the submit operator runs): the same
  keys and fingerprints in fetched batches of 10 000, one parameterised lookup per batch, the batch filtered,
  the reused rows' tokens summed; on PostgreSQL over psycopg 3, the driver the hook hands it.

The input batches are built before timing (they are what the encoder hands the check), so the timed part is
the check alone and the peak memory is what the check adds. 1 % of the rows have a changed fingerprint, and
1 % of the input keys are new (not in the destination), so both the reuse and the send paths run.

Goals: ours ≤ 1.5x the anti-join (the ratio to floor 2 is printed beside it, never instead), peak memory above the post-setup baseline ≤ 64 MB and flat between 100 k and
1 M rows. ``BENCH_ROWS`` scales the run (e.g. ``BENCH_ROWS=100000``); PostgreSQL runs when a server is
reachable at 127.0.0.1:5432 (trust, database ``test``).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import best_of, format_row

PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
BENCH_DIR = Path(tempfile.gettempdir()) / "gemini-batch-bench"
BATCH = 10_000
ANTI_JOIN = (
    'SELECT COUNT(*) FROM src LEFT JOIN {answers} a ON a."key" = src."key" AND a.outcome = \'succeeded\' '
    'AND a.request_fingerprint = src.fp WHERE a."key" IS NULL'
)
ANSWERS_DDL = (
    'CREATE TABLE {name} ("key" {key_type} PRIMARY KEY, outcome TEXT NOT NULL, prompt_tokens INTEGER, '
    "output_tokens INTEGER, thinking_tokens INTEGER, cached_tokens INTEGER, total_tokens INTEGER, "
    "request_fingerprint TEXT)"
)


def _fingerprint(i: int, changed: bool = False) -> str:
    return f"{i * 2654435761 % 2**64 + (1 if changed else 0):064x}"


def _answers(n: int):
    for i in range(n):
        yield (i, "succeeded", 40, 60, 0, 0, 100, _fingerprint(i))


def _inputs(n: int):
    """Input (key, fingerprint): keys 0..n-1 minus 1 % dropped, 1 % new keys, 1 % changed fingerprints."""
    for i in range(n):
        if i % 100 == 50:
            continue  # a row deleted from the source
        yield i, _fingerprint(i, changed=i % 100 == 7)
    for j in range(n // 100):
        yield n + j, _fingerprint(n + j)


def sqlite_db(n: int) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"incremental-{n}.db"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        conn.execute(ANSWERS_DDL.format(name="answers", key_type="INTEGER"))
        conn.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _answers(n))
        conn.execute('CREATE TABLE src ("key" INTEGER PRIMARY KEY, fp TEXT)')
        conn.executemany("INSERT INTO src VALUES (?, ?)", _inputs(n))
        conn.commit()
        conn.close()
        tmp.rename(path)
    return path


def pg_tables(n: int) -> str | None:
    """``answers_<n>`` and ``src_<n>`` in the test database (made once per row count); None without a server."""
    try:
        import psycopg2

        conn = psycopg2.connect(connect_timeout=3, **PG_DSN)
    except Exception as e:
        print(f"  (PostgreSQL skipped: {type(e).__name__})")
        return None
    answers = f"bench_answers_{n}"
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (answers,))
        if cur.fetchone()[0] is None:
            cur.execute(f"DROP TABLE IF EXISTS bench_src_{n}")
            cur.execute(ANSWERS_DDL.format(name=answers, key_type="BIGINT"))
            cur.execute(f'CREATE TABLE bench_src_{n} ("key" BIGINT PRIMARY KEY, fp TEXT)')
            for table, rows in ((answers, _answers(n)), (f"bench_src_{n}", _inputs(n))):
                with tempfile.TemporaryFile("w+") as buf:
                    for row in rows:
                        buf.write("\t".join(map(str, row)) + "\n")
                    buf.seek(0)
                    cur.copy_expert(f"COPY {table} FROM STDIN", buf)
            cur.execute(f"ANALYZE {answers}")
            cur.execute(f"ANALYZE bench_src_{n}")
    conn.close()
    return answers


class _Hook:
    """The two things ReuseCheck asks of a common-sql hook, over a bare driver connection."""

    def __init__(self, dialect_name: str, connect: Any) -> None:
        self.dialect_name = dialect_name
        self._connect = connect

    def get_conn(self) -> Any:
        return self._connect()


def _batches(n: int) -> list[tuple[list[bytes], list[bytes], list[str]]]:
    import orjson

    out = []
    rows = list(_inputs(n))
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        keys = [orjson.dumps(str(k)) for k, _ in part]
        out.append((list(keys), keys, [fp for _, fp in part]))
    return out


def ours(dialect: str, where: str, n: int) -> Any:
    from airflow_gemini_batch.inputs.incremental import ReuseCheck, ReuseDestination

    if dialect == "sqlite":
        hook = _Hook("sqlite", lambda: sqlite3.connect(where))
        table = "answers"
    else:
        import psycopg  # what PostgresHook.get_conn() returns with SQLAlchemy 2 (this project's lock)

        hook = _Hook("postgresql", lambda: psycopg.connect(**PG_DSN))
        table = where
    batches = _batches(n)

    def run() -> dict[str, int]:
        sent = 0
        with ReuseCheck(ReuseDestination("bench", table), hook=hook) as check:
            for lines, keys, fingerprints in batches:
                sent += len(check.filter(lines, keys, fingerprints)[1])
        return {"sent": sent, "reused": check.reused}

    return run


def floor(dialect: str, where: str, n: int) -> Any:
    if dialect == "sqlite":
        sql = ANTI_JOIN.format(answers="answers")

        def run() -> int:
            conn = sqlite3.connect(where)
            try:
                return conn.execute(sql).fetchone()[0]
            finally:
                conn.close()

        return run
    import psycopg2

    sql = ANTI_JOIN.format(answers=where).replace("FROM src", f"FROM bench_src_{n} src")

    def run_pg() -> int:
        conn = psycopg2.connect(**PG_DSN)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()

    return run_pg


def floor_shipped(dialect: str, where: str, n: int) -> Any:
    """Floor 2: the inputs (built before timing, as ours gets its batches) loaded into a TEMP table, then the
    anti-join. A TEMP table only: the destination's database is not written."""
    rows = list(_inputs(n))
    if dialect == "sqlite":
        sql = ANTI_JOIN.format(answers="answers").replace("FROM src", "FROM temp.src_in src")

        def run() -> int:
            conn = sqlite3.connect(where)
            try:
                conn.execute('CREATE TEMP TABLE src_in ("key" INTEGER PRIMARY KEY, fp TEXT)')
                with conn:
                    conn.executemany("INSERT INTO temp.src_in VALUES (?, ?)", rows)
                return conn.execute(sql).fetchone()[0]
            finally:
                conn.close()

        return run
    import psycopg

    sql = ANTI_JOIN.format(answers=where).replace("FROM src", "FROM pg_temp.src_in src")

    def run_pg() -> int:
        with psycopg.connect(**PG_DSN) as conn, conn.cursor() as cur:
            cur.execute('CREATE TEMP TABLE src_in ("key" BIGINT PRIMARY KEY, fp TEXT)')
            with cur.copy('COPY pg_temp.src_in ("key", fp) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute("ANALYZE pg_temp.src_in")
            cur.execute(sql)
            return cur.fetchone()[0]

    return run_pg


def _goal(ok: bool, text: str) -> str:
    return f"  [{'ok' if ok else 'MISSED'}] {text}"


def _compare(label: str, dialect: str, big: str, small: str, n: int, n_small: int, repeats: int) -> None:
    best = best_of(
        repeats,
        {
            "floor": ("bench.incremental:floor", {"dialect": dialect, "where": big, "n": n}),
            "shipped": ("bench.incremental:floor_shipped", {"dialect": dialect, "where": big, "n": n}),
            "ours": ("bench.incremental:ours", {"dialect": dialect, "where": big, "n": n}),
            "small": ("bench.incremental:ours", {"dialect": dialect, "where": small, "n": n_small}),
        },
    )
    base, shipped, ours_r, ours_small = best["floor"], best["shipped"], best["ours"], best["small"]
    assert ours_r["value"]["sent"] == base["value"] == shipped["value"], (ours_r, base, shipped)  # same rows
    print(label)
    print(format_row("floor: SQL anti-join", base))
    print(format_row("floor 2: load into TEMP + anti-join", shipped, base))
    print(format_row(f"ours: batched lookups ({n:,} rows)", ours_r, base))
    print(format_row(f"ours ({n_small:,} rows)", ours_small))
    ratio = ours_r["seconds"] / base["seconds"]
    print(_goal(ratio <= 1.5, f"time {ratio:.2f}x the anti-join (goal <= 1.5x)"))
    print(
        f"  time {ours_r['seconds'] / shipped['seconds']:.2f}x floor 2 (the anti-join with its input shipped in)"
    )
    print(
        _goal(
            ours_r["peak_mb"] <= 64 and abs(ours_r["peak_mb"] - ours_small["peak_mb"]) <= 16,
            f"peak +{ours_small['peak_mb']:.1f} MB at {n_small:,} rows, +{ours_r['peak_mb']:.1f} MB at {n:,} "
            "(goal <= 64 MB, flat)",
        )
    )
    print(f"  sent {ours_r['value']['sent']:,}, reused {ours_r['value']['reused']:,}")


def main() -> None:
    n = int(os.environ.get("BENCH_ROWS", "1000000"))
    small = max(n // 10, 1000)
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    print(f"Incremental skip check ({n:,} destination rows; memory also at {small:,}); every case {repeats}x")
    t = time.perf_counter()
    db, db_small = sqlite_db(n), sqlite_db(small)
    print(f"  (SQLite tables ready in {time.perf_counter() - t:.1f}s, cached in {BENCH_DIR})")
    _compare("SQLite", "sqlite", str(db), str(db_small), n, small, repeats)
    t = time.perf_counter()
    pg, pg_small = pg_tables(n), pg_tables(small)
    if pg and pg_small:
        print(f"  (PostgreSQL tables ready in {time.perf_counter() - t:.1f}s)")
        _compare("PostgreSQL", "postgresql", pg, pg_small, n, small, repeats)


if __name__ == "__main__":
    main()
