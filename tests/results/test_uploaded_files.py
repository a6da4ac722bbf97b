"""Deleting uploaded input files: only for finished jobs, the file each job names itself, a 404 is fine,
``keep_uploaded_files`` keeps them. Real SDK against the emulator."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.results.uploaded_files import delete_finished_shard_files, delete_uploaded_file
from tests.conftest import uploaded_files
from tests.polling import wait_until

log = logging.getLogger(__name__)


def _file_job(hook: GeminiBatchHook, tmp_path: Any, name: str) -> tuple[str, str]:
    path = tmp_path / f"{name}.jsonl"
    line = {"key": "k", "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}
    path.write_bytes(orjson.dumps(line) + b"\n")
    file_name = hook.upload_jsonl(path, display_name=name)
    job = hook.create_job(model="gemini-2.5-flash", display_name=name, file_name=file_name)
    return job.name, file_name


def test_a_finished_job_s_own_input_file_goes_even_when_the_manifest_does_not_name_it(
    gemini_conn, emulator, tmp_path
):
    hook = GeminiBatchHook(gemini_conn)
    emulator.control.hold_state("PENDING", match="later")
    earlier, earlier_file = _file_job(hook, tmp_path, "earlier")
    current, current_file = _file_job(hook, tmp_path, "later")
    assert hook.get_job(current).input_file == current_file  # inputConfig.fileName, as the service says
    shard = {"job_name": current, "file_name": None, "previous_jobs": [earlier]}
    pending = hook.get_job(current)
    assert delete_finished_shard_files(hook, {}, shard, pending, log) == 0  # not finished: kept
    assert delete_finished_shard_files(hook, {"keep_uploaded_files": True}, shard, pending, log) == 0
    emulator.control.release()
    done = wait_until(lambda: (job := hook.get_job(current)).done and job, what="finished")
    assert delete_finished_shard_files(hook, {"keep_uploaded_files": True}, shard, done, log) == 0
    assert sorted(uploaded_files(emulator)) == sorted([earlier_file, current_file])
    wait_until(lambda: hook.get_job(earlier).done, what="the earlier job finished")
    assert delete_finished_shard_files(hook, {}, shard, done, log) == 2
    assert uploaded_files(emulator) == []
    assert delete_finished_shard_files(hook, {}, shard, done, log) == 2  # again: 404s, still gone
    assert delete_uploaded_file(hook, "files/never-existed", log) is True
