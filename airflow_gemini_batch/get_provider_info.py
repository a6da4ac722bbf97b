"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point.

``package-name`` must equal the canonical distribution name, and the dict must validate against Airflow's
``provider_info.schema.json``; otherwise every ``airflow providers`` call fails (tests/test_provider_info.py).
The connection form is declarative (``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.2+ expects.
"""

from __future__ import annotations

from typing import Any

INTEGRATION = "Gemini Batch API"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-gemini-batch",
        "name": "Gemini Batch",
        "description": "Run Gemini API Batch Mode jobs from Airflow: warehouse rows in, answers back in tables.",
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://ai.google.dev/gemini-api/docs/batch-mode",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_gemini_batch.hooks.gemini"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_gemini_batch.operators.submit",
                    "airflow_gemini_batch.operators.results",
                    "airflow_gemini_batch.operators.batch",
                ],
            }
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_gemini_batch.sensors.job"]}
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_gemini_batch.triggers.job"]}
        ],
        "extra-links": ["airflow_gemini_batch.links.GeminiBatchJobLink"],
        "connection-types": [
            {
                "connection-type": "gemini_batch",
                "hook-class-name": "airflow_gemini_batch.hooks.gemini.GeminiBatchHook",
                "hook-name": "Gemini Batch",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"password": "API key", "host": "Base URL (optional)"},
                    "placeholders": {
                        "host": "https://generativelanguage.googleapis.com (leave empty for Google)",
                        "password": "Gemini API key",
                    },
                },
                "conn-fields": {
                    "api_version": {
                        "label": "API version",
                        "description": "REST version prefix, e.g. v1beta or v1. Empty: the SDK's default.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "timeout_seconds": {
                        "label": "HTTP timeout (s)",
                        "description": "Per-request timeout. Empty: no timeout.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
            }
        ],
    }
