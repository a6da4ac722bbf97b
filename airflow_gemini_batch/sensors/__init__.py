"""Sensors of the Gemini Batch provider."""

from __future__ import annotations
