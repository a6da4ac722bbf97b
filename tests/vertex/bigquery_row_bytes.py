"""Counting the row data a process's BigQuery clients receive: REST ``rows`` (query results, ``tabledata.list``)
and any Storage Read client opened through the product's seam.

How: every google-cloud-bigquery REST call goes through ``google.cloud._http.JSONConnection.api_request``; a
wrapper adds up the JSON size of the ``rows`` field of each answer (``jobs.query``, ``jobs.getQueryResults``,
``tabledata.list``) and keeps the rows themselves, so a test can tell data rows from the one-row answers of
counts and first keys. Storage Read clients are counted where the product builds them
(``BigQueryClients.read_client``): a bq:// → bq:// run must open none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest


@dataclass
class RowBytes:
    answers: list[list[dict[str, Any]]] = field(default_factory=list)  # the ``rows`` of each answer
    bytes: int = 0
    read_clients: int = 0

    @property
    def rows(self) -> int:
        return sum(len(a) for a in self.answers)


def count_row_bytes(monkeypatch: pytest.MonkeyPatch) -> RowBytes:
    from google.cloud._http import JSONConnection

    from airflow_gemini_batch.hooks.bigquery import BigQueryClients

    counted = RowBytes()
    api_request, read_client = JSONConnection.api_request, BigQueryClients.read_client

    def counting_api_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = api_request(self, *args, **kwargs)
        if isinstance(answer, dict) and answer.get("rows"):
            counted.answers.append(answer["rows"])
            counted.bytes += len(orjson.dumps(answer["rows"]))
        return answer

    def counting_read_client(self: Any) -> Any:
        counted.read_clients += 1
        return read_client(self)

    monkeypatch.setattr(JSONConnection, "api_request", counting_api_request)
    monkeypatch.setattr(BigQueryClients, "read_client", counting_read_client)
    return counted
