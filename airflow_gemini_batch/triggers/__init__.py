"""Triggers of the Gemini Batch provider: async waits that run in the Airflow triggerer."""

from __future__ import annotations
