"""Lineage names (Assets and OpenLineage datasets) and the OpenLineage provider's extraction of our operators.

The listener path — events emitted by the provider's own listener in a real deployment, and a downstream DAG
triggered by the load's Asset — is proven in ``tests/e2e/test_local_executor.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_gemini_batch.lineage import (
    destination_alias_name,
    path_place,
    sql_source_place,
    table_place,
)
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator


@pytest.fixture
def conns(monkeypatch: pytest.MonkeyPatch, tmp_path):
    db = tmp_path / "wh.db"
    monkeypatch.setenv("AIRFLOW_CONN_LIN_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_LIN_PG",
        json.dumps({"conn_type": "postgres", "host": "db.example", "port": 6543, "schema": "shop"}),
    )
    gcp = {"conn_type": "google_cloud_platform", "extra": {"project": "lin-project", "is_anonymous": True}}
    monkeypatch.setenv("AIRFLOW_CONN_LIN_GCP", json.dumps(gcp))
    return db


def test_postgres_names_follow_the_provider_and_the_openlineage_spec(conns):
    place = table_place("lin_pg", "sales.orders")
    assert place is not None
    assert place.asset_uri == "postgres://db.example:6543/shop/sales/orders"
    assert (place.namespace, place.name) == ("postgres://db.example:6543", "shop.sales.orders")
    default_schema = table_place("lin_pg", "orders")
    assert default_schema is not None and default_schema.name == "shop.public.orders"
    assert default_schema.asset().uri == "postgres://db.example:6543/shop/public/orders"


def test_sqlite_gets_our_documented_scheme(conns):
    place = table_place("lin_sqlite", "answers")
    assert place is not None
    assert place.asset_uri == f"x-sqlite://localhost{conns}/answers"
    assert (place.namespace, place.name) == ("sqlite://localhost", f"{conns}.main.answers")
    assert place.asset().uri == place.asset_uri  # Airflow accepts it as it is


def test_bigquery_names_are_the_google_providers(conns):
    place = table_place("lin_gcp", "shop.reviews")  # no project: the connection's, as the load uses
    assert place is not None
    assert place.asset_uri == "bigquery://lin-project/shop/reviews"
    assert (place.namespace, place.name) == ("bigquery", "lin-project.shop.reviews")
    assert place.asset().uri == place.asset_uri  # the provider's sanitize_uri accepts it as it is
    other = table_place("lin_gcp", "`other-project.shop.answers`")
    assert other is not None and other.asset_uri == "bigquery://other-project/shop/answers"
    assert (other.namespace, other.name) == ("bigquery", "other-project.shop.answers")
    from airflow_gemini_batch.lineage import destination_place

    assert destination_place("lin_gcp", "results; DROP TABLE x", None) is None, "an invalid id is left out"


def test_a_bigquery_select_names_its_table_in_the_bigquery_dialect(conns):
    sql = "SELECT review_id, text FROM `other-project.shop.reviews` WHERE day = @day"
    place = sql_source_place("lin_gcp", sql)
    assert place is not None and (place.namespace, place.name) == ("bigquery", "other-project.shop.reviews")
    place = sql_source_place("lin_gcp", "SELECT * FROM `shop.reviews`")
    assert place is not None and place.asset_uri == "bigquery://lin-project/shop/reviews"


def test_paths_and_object_stores(tmp_path):
    local = path_place(str(tmp_path / "out"))
    assert (local.asset_uri, local.namespace, local.name) == (
        f"file://{tmp_path}/out", "file", f"{tmp_path}/out",
    )  # fmt: skip
    remote = path_place("s3://bucket/results/run1")
    assert (remote.asset_uri, remote.namespace, remote.name) == (
        "s3://bucket/results/run1", "s3://bucket", "results/run1",
    )  # fmt: skip
    gcs = path_place("gs://google_cloud_default@bucket/results/run1")  # the connection is not the place
    assert (gcs.asset_uri, gcs.namespace, gcs.name) == (
        "gs://bucket/results/run1", "gs://bucket", "results/run1",
    )  # fmt: skip


def test_object_storage_paths_name_the_same_places_as_their_uris(tmp_path):
    from airflow.sdk import ObjectStoragePath

    gcs = ObjectStoragePath("gs://bucket/results/run1", conn_id="google_cloud_default")
    assert path_place(gcs) == path_place("gs://bucket/results/run1")
    assert path_place(ObjectStoragePath(f"file://{tmp_path}/out")) == path_place(str(tmp_path / "out"))


def test_a_single_table_select_names_its_table_and_anything_else_none(conns):
    place = sql_source_place("lin_sqlite", "SELECT id, name FROM products WHERE price > 3")
    assert place is not None and place.name == f"{conns}.main.products"
    assert sql_source_place("lin_sqlite", "SELECT a.id FROM a JOIN b ON a.id = b.id") is None
    assert sql_source_place("lin_sqlite", "this is not sql (") is None


def test_the_load_declares_an_alias_unless_outlets_are_given():
    load = GeminiBatchLoadResultsOperator(task_id="load", manifest={}, destination_path="/tmp/x")
    assert [o.name for o in load.outlets] == [destination_alias_name(load.dag_id, "load")]
    from airflow.sdk import Asset

    own = Asset(uri="s3://b/k", name="mine")
    assert GeminiBatchLoadResultsOperator(
        task_id="load2", manifest={}, destination_path="/tmp/x", outlets=[own]
    ).outlets == [own]


def test_the_openlineage_extractor_manager_reads_our_operators(conns):
    """The provider's ExtractorManager (as its listener uses it) finds our facets methods and their output."""
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    submit = GeminiBatchSubmitOperator(
        task_id="submit", source_conn_id="lin_pg", sql="SELECT id, name FROM sales.products",
        prompt_template="Describe {name}",
    )  # fmt: skip
    submit._manifest = {"request_count": 4, "shards": [{"job_name": "batches/a"}, {"job_name": "batches/b"}]}
    load = GeminiBatchLoadResultsOperator(
        task_id="load", manifest={}, destination_conn_id="lin_sqlite", destination_table="answers"
    )
    load._summary = {
        "request_count": 4,
        "counts": {"succeeded": 3, "failed": 1, "invalid_output": 0, "missing": 0},
        "tokens": {"total": 40},
        "cost": {"batch": 0.001},
        "jobs": [{"job_name": "batches/a"}, {"job_name": "batches/b"}],
    }
    ti = SimpleNamespace(task_id="t", dag_id="d", run_id="r", try_number=1, map_index=-1)
    manager = ExtractorManager()
    for op in (submit, load):
        extractor = manager.get_extractor_class(op)
        assert extractor is not None and extractor.__name__ == "DefaultExtractor"
    got_submit = manager.get_extractor_class(submit)(submit).extract_on_complete(ti)
    got_load = manager.get_extractor_class(load)(load).extract_on_complete(ti)
    assert [(d.namespace, d.name) for d in got_submit.inputs] == [
        ("postgres://db.example:6543", "shop.sales.products")
    ]
    assert got_submit.run_facets["geminiBatch"].jobs == ["batches/a", "batches/b"]
    assert [(d.namespace, d.name) for d in got_load.outputs] == [
        ("sqlite://localhost", f"{conns}.main.answers")
    ]
    facet = got_load.run_facets["geminiBatch"]
    assert facet.counts["failed"] == 1 and facet.requestCount == 4 and facet.cost == {"batch": 0.001}
    # On failure the same places are reported, so a failed load still shows what it was writing.
    failed = manager.get_extractor_class(load)(load).extract_on_failure(ti)
    assert [d.name for d in failed.outputs] == [f"{conns}.main.answers"]


def test_the_extractor_names_bigquery_sources_and_destinations(conns):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    submit = GeminiBatchSubmitOperator(
        task_id="submit", source_conn_id="lin_gcp", source_table="shop.reviews", prompt_template="{text}"
    )
    load = GeminiBatchLoadResultsOperator(
        task_id="load", manifest={}, destination_conn_id="lin_gcp", destination_table="shop.answers"
    )
    ti = SimpleNamespace(task_id="t", dag_id="d", run_id="r", try_number=1, map_index=-1)
    manager = ExtractorManager()
    got_submit = manager.get_extractor_class(submit)(submit).extract_on_complete(ti)
    got_load = manager.get_extractor_class(load)(load).extract_on_failure(ti)
    assert [(d.namespace, d.name) for d in got_submit.inputs] == [("bigquery", "lin-project.shop.reviews")]
    assert [(d.namespace, d.name) for d in got_load.outputs] == [("bigquery", "lin-project.shop.answers")]
