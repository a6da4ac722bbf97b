"""E2E on a real CeleryExecutor deployment with TWO Celery workers, as two machines would run them.

api-server, scheduler, dag-processor, triggerer and two ``airflow celery worker`` processes; broker Redis, the
metadata DB and Celery's result backend a fresh PostgreSQL database, the warehouse another. Each worker has
its own working directory, its own TMPDIR and its own name, and consumes its own queue: the submit task is
pinned to worker A's queue, the sensor and the load task to worker B's. The load can only reconcile because
the key lists went to a shared ``staging_path`` (a ``file://`` ObjectStoragePath both workers reach) — the
default, a folder under the submitting worker's TMPDIR, is out of worker B's sight.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    REDIS_HOST,
    REDIS_PORT,
    SHARDS,
    Emulator,
    create_postgres_source,
    emulator_process,
    fresh_postgres_database,
    pg_connect,
)
from tests.e2e.deployment import REPO, Deployment
from tests.e2e.scenario import run_and_rerun

pytestmark = pytest.mark.timeout(900)

DAG_ID = "e2e_gemini_batch_celery"
#: A Redis database of its own; the queue names carry a per-session suffix on top.
REDIS_DB = 13


@dataclass
class Worker:
    name: str
    queue: str
    cwd: Path
    tmpdir: Path


@dataclass
class CelerySetup:
    deployment: Deployment
    emulator: Emulator
    warehouse_db: str
    staging: Path
    workers: dict[str, Worker]


@pytest.fixture(scope="module")
def celery(
    tmp_path_factory: pytest.TempPathFactory, redis_available: None, postgres_available: None
) -> Iterator[CelerySetup]:
    root = tmp_path_factory.mktemp("e2e-celery")
    suffix = uuid.uuid4().hex[:8]
    workers = {
        key: Worker(
            f"e2e-worker-{key}",
            f"e2e_{key}_{suffix}",
            root / f"worker-{key}" / "cwd",
            root / f"worker-{key}" / "tmp",
        )
        for key in ("a", "b")
    }
    staging = root / "shared" / "staging"
    staging.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        metadata_db = stack.enter_context(fresh_postgres_database("e2e_meta"))
        warehouse_db = stack.enter_context(fresh_postgres_database("e2e_wh"))
        create_postgres_source(warehouse_db)
        emulator = stack.enter_context(emulator_process(root / "emulator"))
        stack.callback(_forget_queues, [w.queue for w in workers.values()])
        deployment = Deployment(
            root,
            executor="CeleryExecutor",
            sql_alchemy_conn=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{metadata_db}",
            extra_env={
                "PYTHONPATH": str(REPO),
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{metadata_db}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": workers["a"].queue,
                "GEMINI_E2E_QUEUE_A": workers["a"].queue,
                "GEMINI_E2E_QUEUE_B": workers["b"].queue,
                "AIRFLOW_VAR_GEMINI_E2E_STAGING": staging.as_uri(),
                "AIRFLOW_CONN_GEMINI_BATCH_DEFAULT": json.dumps(
                    {"conn_type": "gemini_batch", "host": emulator.base_url, "password": "e2e-key"}
                ),
                "AIRFLOW_CONN_E2E_WAREHOUSE": json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": "127.0.0.1",
                        "port": 5432,
                        "login": "postgres",
                        "schema": warehouse_db,
                    }
                ),
            },
        )
        stack.enter_context(deployment)
        deployment.migrate()
        deployment.start_core()
        for w in workers.values():
            w.cwd.mkdir(parents=True)
            w.tmpdir.mkdir(parents=True)
            deployment.start(
                w.name, "celery", "worker", "--queues", w.queue, "--concurrency", "2",
                "--celery-hostname", f"{w.name}@%h", "--skip-serve-logs", "--without-gossip", "--without-mingle",
                cwd=w.cwd,
                env={
                    "TMPDIR": str(w.tmpdir),
                    "GEMINI_E2E_WORKER_NAME": w.name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_identity.hostname",
                },
            )  # fmt: skip
        deployment.wait_healthy()
        for w in workers.values():
            deployment.wait_log_line(w.name, "ready.")
        yield CelerySetup(deployment, emulator, warehouse_db, staging, workers)


def _forget_queues(queues: list[str]) -> None:
    """Delete this session's queues and kombu's bindings of them (``_kombu.binding*.<queue>``) from Redis."""
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=3)
        keys = [k for q in queues for k in client.scan_iter(match=f"*{q}*")]
        if keys:
            client.delete(*keys)
        client.close()


def _destination_rows(dbname: str) -> tuple[int, int, dict[str, int]]:
    conn = pg_connect(dbname)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT product_id) FROM e2e_descriptions")
        total, distinct = cur.fetchone()
        cur.execute("SELECT outcome, COUNT(*) FROM e2e_descriptions GROUP BY outcome")
        return total, distinct, dict(cur.fetchall())
    finally:
        conn.close()


def test_celery_two_workers_submit_on_one_load_on_the_other(celery: CelerySetup) -> None:
    a, b = celery.workers["a"], celery.workers["b"]
    outcome = run_and_rerun(
        celery.deployment, celery.emulator, DAG_ID, lambda: _destination_rows(celery.warehouse_db)
    )
    for tis in (outcome.first_tis, outcome.second_tis):
        where = {t: (ti["hostname"], ti["queue"]) for t, ti in tis.items()}
        assert where == {
            "submit": (a.name, a.queue),
            "wait": (b.name, b.queue),
            "load": (b.name, b.queue),
        }, where
    # The key lists the load reconciled against are on the shared storage, not in worker A's TMPDIR.
    key_lists = sorted(p.name for p in celery.staging.rglob("keys-*.jsonl"))
    assert key_lists == [f"keys-{i:05d}.jsonl" for i in range(SHARDS)], key_lists
    assert not list((a.tmpdir / "gemini-batch").rglob("*keys*")), "key lists were staged in worker A's TMPDIR"
