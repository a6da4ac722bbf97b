"""Where the "Gemini Batches" page lives: one copy of the routing constants, for the plugin, its app and links.

Invariant: importing this module is free (no Airflow, no FastAPI), so the operators' extra links can use it on
every worker without loading the plugin machinery.
"""

from __future__ import annotations

#: Where the api-server mounts the app. Must not start with /api/v2, /ui, /execution, /auth or /pluginsv2.
URL_PREFIX = "/gemini-batch"
#: The page's path inside the app (the app also serves ``/ui/jobs/<id>`` for the detail view).
PAGE_PATH = "/ui/"
#: Airflow mirrors the iframe's path into the browser URL as ``/plugin/<url_route><iframe path>``.
URL_ROUTE = "gemini-batches"
