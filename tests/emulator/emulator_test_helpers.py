"""Helpers shared by the emulator tests (a plain module: importable, unlike conftest)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from google import genai
from google.genai import types

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_gemini_batch.emulator import EmulatorServer

MODEL = "gemini-2.5-flash"


def make_client(emu: EmulatorServer, **http_kw: Any) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=emu.base_url, **http_kw))


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def gen_line(key: str, text: str, **request: Any) -> dict[str, Any]:
    return {"key": key, "request": {"contents": [{"parts": [{"text": text}], "role": "user"}], **request}}


def wait_done(client: genai.Client, name: str, timeout: float = 60.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state} after {timeout}s"
        time.sleep(0.02)


async def wait_done_async(client: genai.Client, name: str, timeout: float = 60.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = await client.aio.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state} after {timeout}s"
        await asyncio.sleep(0.02)


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
