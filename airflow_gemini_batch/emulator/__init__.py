"""Local emulator of the Gemini Developer API's Files and Batches endpoints, for tests and demos.

The real ``google-genai`` SDK talks to it over real HTTP (``HttpOptions(base_url=server.base_url)``).
Answers are deterministic (see ``responder``) and failures are injectable at runtime (see ``control``).
Given a data dir, file and job metadata persist across restarts (see ``persist``), like the real service's.
"""

from __future__ import annotations

from airflow_gemini_batch.emulator.app import create_app
from airflow_gemini_batch.emulator.control import EmulatorControl
from airflow_gemini_batch.emulator.server import EmulatorServer

__all__ = ["EmulatorControl", "EmulatorServer", "create_app"]
