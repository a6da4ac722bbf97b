"""``python -m airflow_gemini_batch.emulator`` runs the emulator CLI."""

from __future__ import annotations

import sys

from airflow_gemini_batch.emulator.cli import main

sys.exit(main())
