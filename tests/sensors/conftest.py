"""Helpers for the trigger tests: create real batch jobs on the emulator through the hook (the real SDK)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

if TYPE_CHECKING:
    from collections.abc import Callable

MODEL = "models/gemini-2.5-flash"


def inline_requests(n: int, prefix: str = "k") -> list[dict[str, Any]]:
    return [
        {
            "contents": [{"role": "user", "parts": [{"text": f"say {prefix}{i}"}]}],
            "metadata": {"key": f"{prefix}{i}"},
        }
        for i in range(n)
    ]


@pytest.fixture
def make_jobs(gemini_conn: str) -> Callable[..., list[str]]:
    """``make_jobs(["a", "b"], requests=3)`` → job names, one inline job per display name."""

    def _make(display_names: list[str], requests: int = 2) -> list[str]:
        hook = GeminiBatchHook(gemini_conn)
        return [
            hook.create_job(model=MODEL, display_name=d, inline_requests=inline_requests(requests, d)).name
            for d in display_names
        ]

    return _make


@pytest.fixture
def register_dag(airflow_db: Any) -> Callable[[Any], None]:
    """``register_dag(dag)``: write a DAG built inside a test to the metadata DB, as the DAG processor would.

    ``dag.test()`` in Airflow 3.3 refuses a DAG that has no serialized version, and only finds DAGs through
    bundles; a DAG defined in a test function is in no bundle, so it is written here under the default one.
    """

    def _register(dag: Any) -> None:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.collection import update_dag_parsing_results_in_db
        from airflow.serialization.serialized_objects import LazyDeserializedDAG
        from airflow.utils.session import create_session

        with create_session() as session:
            DagBundlesManager().sync_bundles_to_db(session=session)
            session.flush()
            update_dag_parsing_results_in_db(
                "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
            )

    return _register
