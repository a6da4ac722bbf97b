"""``GeminiBatchHook.upload_jsonl`` through the SDK's resumable upload: the emulator stores the exact bytes.

The upload feeds the SDK a reused-buffer reader (:mod:`airflow_gemini_batch.hooks.upload_chunks`); these
tests read the stored file back from the emulator's store and compare it with the source, byte for byte, on
whichever google-genai major runs them (2.x in ``.venv``, 3.x in ``.venv-genai3``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.upload_chunks import CHUNK_BYTES
from airflow_gemini_batch.submit.submission import CreateRetry, upload_with_retry


def _stored_bytes(emulator, file_name: str) -> bytes:
    return emulator.emulator.files.get(file_name.removeprefix("files/")).path.read_bytes()


def _write(path: Path, size: int) -> bytes:
    # Distinct bytes at every offset, so a chunk sent twice, dropped or out of order cannot go unnoticed.
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))[:size]
    path.write_bytes(data)
    return data


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_BYTES, 2 * CHUNK_BYTES + 12_345],
    ids=["empty", "one-byte", "one-chunk", "three-chunks-uneven"],
)
def test_upload_stores_the_same_bytes(gemini_conn, emulator, tmp_path, size):
    data = _write(tmp_path / "shard.jsonl", size)

    file_name = GeminiBatchHook(gemini_conn).upload_jsonl(tmp_path / "shard.jsonl", display_name="shard")

    stored = _stored_bytes(emulator, file_name)
    assert len(stored) == size
    assert stored == data
    assert emulator.emulator.files.get(file_name.removeprefix("files/")).display_name == "shard"


def test_an_upload_retried_after_a_failed_chunk_stores_the_same_bytes(gemini_conn, emulator, tmp_path):
    # The SDK ends the session on a failed chunk; the submission's retry starts the upload again from byte 0.
    data = _write(tmp_path / "shard.jsonl", CHUNK_BYTES + 777)
    emulator.control.inject_fault("files.upload_chunk", status=503, count=1)
    hook = GeminiBatchHook(gemini_conn)

    file_name = upload_with_retry(
        hook, tmp_path / "shard.jsonl", "retried", CreateRetry(3, base_seconds=0.01)
    )

    assert _stored_bytes(emulator, file_name) == data
    assert len(hook.get_conn().files.list()) == 1  # the failed attempt left no finished file behind


def test_upload_accepts_a_str_path_and_leaves_the_file_closed(gemini_conn, emulator, tmp_path):
    data = _write(tmp_path / "shard.jsonl", 4096)
    before = set(os.listdir(f"/proc/{os.getpid()}/fd"))

    file_name = GeminiBatchHook(gemini_conn).upload_jsonl(str(tmp_path / "shard.jsonl"), display_name="str")

    assert _stored_bytes(emulator, file_name) == data
    opened = {
        os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
        for fd in set(os.listdir(f"/proc/{os.getpid()}/fd")) - before
        if os.path.exists(f"/proc/{os.getpid()}/fd/{fd}")
    }
    assert str(tmp_path / "shard.jsonl") not in opened
