"""``GeminiBatchPlugin``: registers the monitoring page with Airflow (entry point ``airflow.plugins``).

Invariant: importing this module is cheap. Workers, the scheduler and the dag-processor all load entry-point
plugins; only the api-server needs the FastAPI app, so ``fastapi_apps`` imports it on first access.

The page is an *external view* with a ``url_route``: Airflow renders it in a same-origin iframe under its own
navigation (Browse → Gemini Batches), so the user's session cookie authenticates the page's API calls.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_gemini_batch.plugins.urls import PAGE_PATH, URL_PREFIX, URL_ROUTE


class GeminiBatchPlugin(AirflowPlugin):
    """The "Gemini Batches" page (nav: Browse) and its FastAPI app."""

    name = "gemini_batch"

    # Relative href (no leading slash): the UI resolves it against its <base href>, so a deployment under a
    # sub-path (``[api] base_url`` with a path) still finds the app.
    external_views = [
        {
            "name": "Gemini Batches",
            "href": URL_PREFIX.lstrip("/") + PAGE_PATH,
            "url_route": URL_ROUTE,
            "destination": "nav",
            "category": "browse",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Imported here, not at module level: see the module docstring.
        from airflow_gemini_batch.plugins.app import get_app

        return [{"app": get_app(), "url_prefix": URL_PREFIX, "name": "Gemini Batch monitor"}]
