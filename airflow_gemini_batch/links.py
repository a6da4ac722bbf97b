"""Operator extra links: a button on our tasks' pages that opens the "Gemini Batches" page on their jobs.

Invariant: the link is built from the task instance key alone (dag, run, task, map index), so it needs no
XCom read, works for the submit operator, the sensor and the results operator alike (the page matches a job
to every task that submitted, waited for or loaded it), and is valid before the jobs even exist.

Airflow 3 evaluates ``get_link`` on the worker when the task finishes (also when it defers) and stores the
string in XCom under ``xcom_key``; the api-server shows that stored URL. Attach it with
``operator_extra_links = (GeminiBatchJobLink(),)`` on the operator class, not through a plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from airflow.sdk import BaseOperatorLink

from airflow_gemini_batch.plugins.urls import PAGE_PATH, URL_PREFIX, URL_ROUTE

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def airflow_base_url() -> str:
    """``[api] base_url`` without a trailing slash; empty means "same origin" (a root-relative link)."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def page_url(
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    job_id: str | None = None,
    base_url: str | None = None,
) -> str:
    """URL of the Gemini Batches page inside Airflow's UI, filtered to a task's jobs or one job.

    The UI mirrors a plugin iframe's path into its own URL as ``/plugin/<url_route><iframe path>``, and
    turns such a URL back into the iframe's source, so this deep link opens the page inside Airflow's chrome.

    :param base_url: Airflow's public URL; defaults to ``[api] base_url``.
    """
    base = airflow_base_url() if base_url is None else base_url.rstrip("/")
    # With Airflow under a sub-path, the iframe's own path starts with that sub-path too.
    sub_path = urlsplit(base).path.rstrip("/")
    page = f"{sub_path}{URL_PREFIX}{PAGE_PATH}"
    if job_id:
        return f"{base}/plugin/{URL_ROUTE}{page}jobs/{job_id}"
    query = urlencode({k: v for k, v in (("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id)) if v})
    return f"{base}/plugin/{URL_ROUTE}{page}" + (f"?{query}" if query else "")


class GeminiBatchJobLink(BaseOperatorLink):
    """ "Gemini batch jobs": the monitoring page filtered to the jobs of this task instance."""

    name = "Gemini batch jobs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return page_url(dag_id=ti_key.dag_id, run_id=ti_key.run_id, task_id=ti_key.task_id)
