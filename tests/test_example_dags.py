"""The example DAGs in ``dags/`` import cleanly and run end to end against the emulator on a SQLite warehouse."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson
import pytest

from airflow_gemini_batch.emulator.responder import expected_embedding
from tests.conftest import REPO

EXAMPLE_DAG_IDS = {
    "gemini_batch_product_descriptions",
    "gemini_batch_review_sentiment",
    "gemini_batch_product_embeddings",
    "gemini_batch_bigquery_reviews",  # run against the BigQuery emulator in tests/reliability/test_rel_bigquery.py
    "gemini_batch_catalog_taglines",
    "gemini_batch_vertex_bigquery_reviews",  # run against the Vertex side in tests/reliability/test_rel_vertex.py
}


@pytest.fixture
def example_env(airflow_db, gemini_conn, monkeypatch, tmp_path):
    """What ``make demo`` sets: the warehouse connection, a short poll interval, no retries."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_BATCH_WAREHOUSE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
    )
    monkeypatch.setenv("GEMINI_BATCH_POLL_INTERVAL", "0.2")
    monkeypatch.setenv("GEMINI_BATCH_RETRIES", "0")
    return tmp_path / "warehouse.db"


def _dagbag():
    """Parsed the way the DAG processor parses a bundle (the bundle folder importable, as Airflow does)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    # The settings module reads the environment at import; another test's dag.test() may have parsed the
    # bundle (and cached it) under a different environment.
    sys.modules.pop("_gemini_batch_example_settings", None)
    return BundleDagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags")


def test_example_dags_import_without_errors(example_env):
    bag = _dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    for dag_id in EXAMPLE_DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert dag.catchup is False
        assert dag.default_args["retries"] == 0  # from GEMINI_BATCH_RETRIES; 2 by default


def _run(dag_id: str, register_dag):
    dag = _dagbag().get_dag(dag_id)
    register_dag(dag)
    run = dag.test()
    assert run.state == "success", f"{dag_id} ended {run.state}"
    return run


def _query(db: Path, sql: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_product_descriptions_end_to_end(example_env, emulator, register_dag):
    _run("gemini_batch_product_descriptions", register_dag)
    products = _query(
        example_env, "SELECT id, name, category, material, price_cents FROM products ORDER BY id"
    )
    assert len(products) == 3000
    out = dict(
        _query(example_env, "SELECT product_id, text FROM product_descriptions WHERE outcome = 'succeeded'")
    )
    assert len(out) == 3000 and sorted(out) == [p[0] for p in products]
    pid, name, category, material, price = products[41]
    assert category in out[pid]
    assert name in out[pid] and material in out[pid] and str(price) in out[pid]
    assert _query(example_env, "SELECT COUNT(*) FROM product_descriptions_errors") == [(0,)]
    assert len(emulator.control.jobs()) == 1


def test_review_sentiment_structured_output_into_typed_columns(example_env, emulator, register_dag):
    _run("gemini_batch_review_sentiment", register_dag)
    rows = _query(
        example_env,
        "SELECT review_id, outcome, sentiment, score, topic, json_value FROM review_sentiment ORDER BY review_id",
    )
    assert len(rows) == 500
    for review_id, outcome, sentiment, score, topic, json_value in rows:
        assert outcome == "succeeded", review_id
        value = orjson.loads(json_value)
        assert sentiment in {"positive", "neutral", "negative"} and sentiment == value["sentiment"]
        assert isinstance(score, float) and 0 <= score <= 1 and score == value["score"]
        assert isinstance(topic, str) and topic == value["topic"]


def test_product_embeddings_vectors_per_key(example_env, emulator, register_dag):
    _run("gemini_batch_product_embeddings", register_dag)
    rows = _query(example_env, "SELECT sku, outcome, embedding FROM catalog_embeddings ORDER BY sku")
    titles = dict(_query(example_env, "SELECT sku, title FROM catalog"))
    assert len(rows) == 400
    for sku, outcome, embedding in rows:
        vector = orjson.loads(embedding)
        assert outcome == "succeeded" and len(vector) == 256
        assert vector == pytest.approx(expected_embedding(titles[sku], 256))
    assert [j["kind"] for j in emulator.control.jobs()] == ["embed"]


def test_catalog_taglines_one_task_with_a_retry_round(example_env, emulator, register_dag):
    """The all-in-one operator: 5 % of the first job's rows fail with 503, the second round answers them."""
    from airflow_gemini_batch.emulator.faults import fails_by_fraction

    emulator.control.set_job_behaviour(fail_fraction=0.05, fail_status=503, count=1)
    _run("gemini_batch_catalog_taglines", register_dag)
    rows = dict(_query(example_env, "SELECT id, attempts FROM catalog_taglines WHERE outcome = 'succeeded'"))
    doomed = {i for i in range(1, 501) if fails_by_fraction(str(i), 0.05)}
    assert doomed and rows == {i: 2 if i in doomed else 1 for i in range(1, 501)}
    assert len(emulator.control.jobs()) == 2
