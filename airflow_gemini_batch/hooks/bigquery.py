"""BigQuery through apache-airflow-providers-google: the clients the BigQuery source and sink use, and table ids.

Invariants:

* Credentials are the ``google_cloud_platform`` connection's, through the provider's ``BigQueryHook``
  (key file, keyfile JSON, ADC, impersonation, anonymous - whatever the connection says, as for every Google
  operator). The REST client is ``BigQueryHook.get_client()`` (google-cloud-bigquery); the DB-API path of the
  hook is never used (it cannot stream, and it ignores ``BIGQUERY_EMULATOR_HOST``).
* The Storage Read client (google-cloud-bigquery-storage) gets the hook's credentials. One seam points it
  elsewhere: ``BIGQUERY_STORAGE_EMULATOR_HOST=host:port`` (the gRPC twin of the ``BIGQUERY_EMULATOR_HOST``
  google-cloud-bigquery honours) opens a plaintext channel with anonymous credentials, for an emulator.
* A table id reaches SQL only after :func:`parse_table_id` matched it (no backtick, quote, space or
  ``;`` can pass), and then inside backticks.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.sdk import BaseHook

from airflow_gemini_batch.exceptions import GeminiBatchInputError

if TYPE_CHECKING:
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
    from google.cloud.bigquery import Client
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient

GCP_CONN_TYPE = "google_cloud_platform"
STORAGE_EMULATOR_HOST = "BIGQUERY_STORAGE_EMULATOR_HOST"

# project (may be domain-scoped: example.com:proj), dataset, table; each part as BigQuery names allow, minus
# anything that could end a backtick-quoted identifier.
_PROJECT = r"(?:[A-Za-z0-9.-]+:)?[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]"
_DATASET = r"[A-Za-z0-9_]+"
_TABLE = r"[\w-]+"
_TABLE_ID = re.compile(rf"(?:(?P<project>{_PROJECT})\.)?(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})")


class TableId(NamedTuple):
    """A validated ``project.dataset.table``."""

    project: str
    dataset: str
    table: str

    def __str__(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def sql(self) -> str:
        """The id quoted for GoogleSQL (the parts were validated, so no backtick can be inside)."""
        return f"`{self}`"

    def sibling(self, table: str) -> TableId:
        return TableId(self.project, self.dataset, table)


def parse_table_id(text: str, default_project: str, what: str = "table") -> TableId:
    """``dataset.table`` or ``project.dataset.table`` (backticks around it allowed) → :class:`TableId`."""
    candidate = text.strip().strip("`") if isinstance(text, str) else ""
    match = _TABLE_ID.fullmatch(candidate)
    if not match:
        raise GeminiBatchInputError(
            f"Invalid BigQuery {what} {text!r}: give 'dataset.table' or 'project.dataset.table' (letters, digits, "
            "underscores; '-' in project and table names), without quotes, spaces or ';'."
        )
    return TableId(match["project"] or default_project, match["dataset"], match["table"])


def is_bigquery_connection(conn_id: str | None) -> bool:
    """True for a ``google_cloud_platform`` connection (the BigQuery source and sink serve those)."""
    if not conn_id:
        return False
    return BaseHook.get_connection(conn_id).conn_type == GCP_CONN_TYPE


class BigQueryClients:
    """The provider's hook for a connection, and the clients built from it (each once).

    :param conn_id: a ``google_cloud_platform`` connection.
    :param location: the jobs' location; default the connection's ``location`` extra.
    """

    def __init__(self, conn_id: str, location: str | None = None) -> None:
        self.conn_id = conn_id
        self._location = location

    @cached_property
    def hook(self) -> BigQueryHook:
        from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

        return BigQueryHook(gcp_conn_id=self.conn_id, location=self._location, use_legacy_sql=False)

    @property
    def project(self) -> str:
        return self.hook.project_id

    @property
    def location(self) -> str | None:
        return self._location or self.hook.location

    @cached_property
    def client(self) -> Client:
        return self.hook.get_client(project_id=self.project, location=self.location)

    def table_id(self, text: str, what: str = "table") -> TableId:
        return parse_table_id(text, self.project, what)

    def read_client(self) -> BigQueryReadClient:
        """A Storage Read API client with the connection's credentials (or on the emulator seam)."""
        from google.cloud.bigquery_storage_v1 import BigQueryReadClient

        target = os.environ.get(STORAGE_EMULATOR_HOST)
        if target:
            import grpc
            from google.auth.credentials import AnonymousCredentials
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            # Arrow record batches can exceed gRPC's default 4 MiB receive limit.
            channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
            transport = BigQueryReadGrpcTransport(channel=channel, credentials=AnonymousCredentials())
            return BigQueryReadClient(transport=transport)
        credentials: Any = self.hook.get_credentials()
        return BigQueryReadClient(credentials=credentials)
