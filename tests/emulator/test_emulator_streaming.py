"""Streaming invariants: a ~300 MB upload through the real SDK keeps the emulator process's RSS bounded
and lands intact on disk; a large responses file is processed and downloaded line by line.
Also: the CLI serves from a subprocess (``python -m airflow_gemini_batch.emulator``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import httpx
import psutil
from emulator_test_helpers import MODEL, gen_line, parse_jsonl, wait_done, write_jsonl
from google import genai
from google.genai import types

from airflow_gemini_batch.emulator import EmulatorControl
from airflow_gemini_batch.emulator.process import start_emulator_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MB = 1024 * 1024


@contextlib.contextmanager
def cli_server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The emulator in its own process, as ``python -m airflow_gemini_batch.emulator`` runs it."""
    proc, base_url = start_emulator_process(data_dir.parent / "emulator.log", "--data-dir", str(data_dir))
    try:
        assert base_url.startswith("http://127.0.0.1:"), base_url
        yield proc, base_url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_300mb_upload_keeps_emulator_rss_bounded(tmp_path: Path) -> None:
    """Measured on the emulator's own process: in-thread, RSS would mostly show the SDK client's buffers
    (the sync SDK upload alone peaks at ~100-200 MB of transient Python allocations)."""
    path = tmp_path / "big.bin"
    hasher = hashlib.sha256()
    block = os.urandom(MB)
    with path.open("wb") as fh:
        for i in range(300):
            chunk = block[i:] + block[:i]
            hasher.update(chunk)
            fh.write(chunk)
    with cli_server(tmp_path / "data") as (proc, base_url):
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=base_url))
        list(client.files.list())  # warm up the connection and the app
        server = psutil.Process(proc.pid)
        baseline = server.memory_info().rss
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            started = time.monotonic()
            uploaded = client.files.upload(file=str(path), config={"mime_type": "application/octet-stream"})
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            sampler.join()
            path.unlink()
            client.close()
        assert uploaded.name and uploaded.size_bytes == 300 * MB
        assert uploaded.sha256_hash == base64.b64encode(hasher.digest()).decode()
        assert (tmp_path / "data" / "files" / uploaded.name.removeprefix("files/")).stat().st_size == 300 * MB
    growth = (peak - baseline) / MB
    print(f"emulator RSS growth {growth:.1f} MB, upload {elapsed:.2f}s")
    assert growth < 100, f"emulator RSS grew {growth:.0f} MB during a 300 MB upload"


def test_large_file_batch_streams_through(client: genai.Client, tmp_path: Path) -> None:
    lines = [gen_line(f"k{i}", f"row {i} " + "q" * 500) for i in range(5000)]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    job = wait_done(client, client.batches.create(model=MODEL, src=uploaded.name or "").name or "")
    assert job.dest and job.dest.file_name
    target = tmp_path / "out.jsonl"
    client.files.download(file=job.dest.file_name, destination=str(target))
    out = parse_jsonl(target.read_bytes())
    assert [o["key"] for o in out] == [line["key"] for line in lines]


def test_cli_subprocess(tmp_path: Path) -> None:
    with cli_server(tmp_path) as (_, base_url):
        control = EmulatorControl(base_url)
        assert control.health()["ok"] is True
        r = httpx.get(f"{base_url}/v1beta/batches", headers={"x-goog-api-key": "k"})
        assert r.status_code == 200 and r.json() == {}
        control.configure(pending_seconds=5)
        assert control.config()["pending_seconds"] == 5
