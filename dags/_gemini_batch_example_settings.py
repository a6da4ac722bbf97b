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
from datetime import timedelta

WAREHOUSE_CONN_ID = os.environ.get("GEMINI_BATCH_WAREHOUSE_CONN_ID", "gemini_batch_warehouse")
POLL_INTERVAL = float(os.environ.get("GEMINI_BATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("GEMINI_BATCH_MODEL", "gemini-2.5-flash")

DEFAULT_ARGS = {
    "owner": "data-platform",
    "retries": int(os.environ.get("GEMINI_BATCH_RETRIES", "2")),
    "retry_delay": timedelta(minutes=5),
}
