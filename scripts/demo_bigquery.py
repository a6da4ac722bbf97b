"""``make demo-bigquery``: the BigQuery example DAG (``dags/example_bigquery.py``) end to end, offline.

Starts the Gemini Batch emulator, the BigQuery emulator and the GCS emulator (from the tool environment
``.venv-gcp-emulators``, through ``airflow_gemini_batch.emulator.gcp_processes``, as the tests do), points
``google_cloud_default`` at them (anonymous), stages the run on ``gs://test-bucket/gemini-batch`` when the GCS
staging path works, runs ``gemini_batch_bigquery_reviews`` with ``airflow dags test`` and prints what landed in
``gemini_batch_demo.review_answers``. The default ``make demo`` stays on SQLite.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import demo  # noqa: E402 - scripts/demo.py, beside this file

from airflow_gemini_batch.emulator.gcp_processes import (  # noqa: E402
    BUCKET,
    GCP_CONN_ID,
    PROJECT,
    connection_extras,
    emulator_env,
    start_bigquery_emulator,
    start_storage_emulator,
    stop_process,
)

DAG_ID = "gemini_batch_bigquery_reviews"
DATASET = "gemini_batch_demo"


def report(env: dict[str, str]) -> None:
    import os

    os.environ.update({k: v for k, v in env.items() if k.startswith(("BIGQUERY_", "STORAGE_", "GOOGLE_"))})
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials())
    table = f"{PROJECT}.{DATASET}.review_answers"
    counts = list(
        client.query(
            f"SELECT outcome, COUNT(*) AS n, COUNT(DISTINCT review_id) AS keys FROM `{table}` GROUP BY outcome"
        ).result()
    )
    print("\n============ Gemini batch BigQuery demo (emulators, offline) ============")
    for row in counts:
        print(f"{table}: outcome={row['outcome']} rows={row['n']} distinct keys={row['keys']}")
    for row in client.query(
        f"SELECT review_id, sentiment, score, topic FROM `{table}` ORDER BY review_id LIMIT 3"
    ).result():
        print(f"  {row['review_id']}: {row['sentiment']} ({row['score']}) {row['topic']}")
    print("=========================================================================")


def main() -> int:
    demo.DEMO.mkdir(exist_ok=True)
    demo.DAG_ID = DAG_ID
    work = Path(tempfile.mkdtemp(prefix="gemini-batch-demo-gcp-"))
    storage_proc, storage = start_storage_emulator(work)
    bq_proc = None
    try:
        bq_proc, bigquery = start_bigquery_emulator(work, storage.data_dir / ".cloudstorage")
        with demo.emulator() as base_url:
            env = demo.airflow_env(base_url)
            env.update(emulator_env(bigquery, storage))
            conn = {"conn_type": "google_cloud_platform", "extra": connection_extras(storage)}
            env[f"AIRFLOW_CONN_{GCP_CONN_ID.upper()}"] = json.dumps(conn)
            env["GEMINI_BATCH_GCP_CONN_ID"] = GCP_CONN_ID
            env["GEMINI_BATCH_BIGQUERY_DATASET"] = DATASET
            env.setdefault("GEMINI_BATCH_BIGQUERY_STAGING_PATH", f"gs://{BUCKET}/gemini-batch")
            demo.migrate_once(env)
            code = demo.run_dag(env)
            if code != 0:
                print(f"The DAG run failed (exit {code}); see .demo/last_run.log")
                return code
            report(env)
    finally:
        if bq_proc is not None:
            stop_process(bq_proc, grace=10.0)
        stop_process(storage_proc, grace=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
