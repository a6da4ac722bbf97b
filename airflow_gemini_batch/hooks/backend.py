"""Which backend a connection (or a set of job names) speaks: the Gemini Developer API or Vertex AI.

Invariant: one rule, used by every stage. A ``google_cloud_platform`` connection means Vertex AI
(:class:`~airflow_gemini_batch.hooks.vertex.GeminiVertexBatchHook`), anything else the Developer API
(:class:`~airflow_gemini_batch.hooks.gemini.GeminiBatchHook`, a ``gemini_batch`` connection). Where job names
are known (the sensor, the triggers) they decide instead, without reading the connection: a trigger builds its
hook on the event loop, where a sync connection read can dead-lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.hooks.bigquery import is_bigquery_connection
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import is_vertex_job_name
from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook

if TYPE_CHECKING:
    from collections.abc import Iterable


def batch_hook(conn_id: str, job_names: Iterable[str] | None = None, **kwargs: Any) -> GeminiBatchHook:
    """The hook for ``conn_id``: Vertex AI when the jobs are Vertex jobs (or, with no names, when the
    connection is ``google_cloud_platform``), the Developer API otherwise."""
    names = list(job_names or ())
    # One rule for "a google_cloud_platform connection", shared with the BigQuery source and sink.
    vertex = any(is_vertex_job_name(n) for n in names) if names else is_bigquery_connection(conn_id)
    if vertex:
        return GeminiVertexBatchHook(gemini_conn_id=conn_id, **kwargs)
    return GeminiBatchHook(gemini_conn_id=conn_id, **kwargs)
