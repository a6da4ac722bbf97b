"""Settings shared by the example DAGs, from environment variables so the same files run in the demo,
under ``make airflow`` and in a real deployment.

- ``GEMINI_BATCH_WAREHOUSE_CONN_ID``: the common-sql connection of the warehouse (default
  ``gemini_batch_warehouse``; ``make demo`` points it at an embedded SQLite file).
- ``GEMINI_BATCH_POLL_INTERVAL``: seconds between status polls (default 60; the demo uses 2).
- ``GEMINI_BATCH_MODEL``: the model (default ``gemini-2.5-flash``).
- ``GEMINI_BATCH_RETRIES``: task retries (default 2; the demo uses 0 so a failure shows at once).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

WAREHOUSE_CONN_ID = os.environ.get("GEMINI_BATCH_WAREHOUSE_CONN_ID", "gemini_batch_warehouse")
POLL_INTERVAL = float(os.environ.get("GEMINI_BATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("GEMINI_BATCH_MODEL", "gemini-2.5-flash")

DEFAULT_ARGS = {
    "owner": "data-platform",
    "retries": int(os.environ.get("GEMINI_BATCH_RETRIES", "2")),
    "retry_delay": timedelta(minutes=5),
}


def seed_table_once(
    table: str, ddl: str, fields: Sequence[str], rows: Callable[[], Iterable[tuple[Any, ...]]]
) -> int:
    """Create and fill an example source table when it is absent or empty (deterministic rows, so reruns see
    the same input and re-attach to their jobs); return its row count."""
    from airflow.sdk import BaseHook

    hook = BaseHook.get_hook(WAREHOUSE_CONN_ID)
    hook.run(ddl)
    if hook.get_first(f"SELECT COUNT(*) FROM {table}")[0] == 0:
        hook.insert_rows(table, rows(), target_fields=list(fields), commit_every=1000, executemany=True)
    return hook.get_first(f"SELECT COUNT(*) FROM {table}")[0]
