"""The Airflow UI plugin: a "Gemini Batches" page that monitors the batch jobs our operators recorded.

Kept empty on purpose: task workers load every ``airflow.plugins`` entry point, so importing this package must
not pull in FastAPI, the metadata-DB queries or the Gemini SDK. Only the api-server builds the app.
"""

from __future__ import annotations
