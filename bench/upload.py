"""Benchmark: uploading one large JSONL shard, ``GeminiBatchHook.upload_jsonl``, on both google-genai majors.

The emulator runs in this (parent) process; every case runs in a fresh child process (the interpreter of
``.venv`` for google-genai 2.x, of ``.venv-genai3`` for 3.x), so the peak memory is the client's alone. Compared
in the same run, per SDK:

* floor — the resumable protocol by hand over the SDK client's own ``httpx`` transport: one start request,
  then the file read in 8 MiB chunks, each POSTed and dropped (what an upload cannot do with less);
* SDK given the path — ``client.files.upload(file=<path>)``, what ``upload_jsonl`` did before it handed the
  SDK a reused-buffer reader (:mod:`airflow_gemini_batch.hooks.upload_chunks`);
* ours — ``GeminiBatchHook.upload_jsonl`` (what the submit stage runs).

Goal: peak RSS above the post-import baseline ≤ 64 MB on both majors, time ≈ the floor. (The floor is a
time floor: on 2.x its ``bytes`` chunks linger in ``httpx``'s reference cycles just as the SDK's do.) ``BENCH_UPLOAD_MB``
sets the shard size (default 1900, the real figure; e.g. ``BENCH_UPLOAD_MB=200`` for a quick run);
``BENCH_REPEATS`` the runs per case (fastest time, highest peak kept).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import format_row

ROOT = Path(__file__).resolve().parent.parent
INTERPRETERS = {
    "google-genai 2.x": ROOT / ".venv/bin/python",
    "google-genai 3.x": ROOT / ".venv-genai3/bin/python",
}
CHUNK = 8 * 1024 * 1024
API_KEY = "bench-key-not-a-secret"


def write_shard(path: Path, megabytes: int) -> int:
    """A real (not sparse) JSONL shard of about ``megabytes`` MB, one distinct request per line."""
    target = megabytes * 1024 * 1024
    filler = "lorem ipsum dolor sit amet " * 30
    line = '{"key":"k%d","request":{"contents":[{"role":"user","parts":[{"text":"%d ' + filler + '"}]}]}}\n'
    written = row = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            block = "".join([line % (i, i) for i in range(row, row + 10_000)])
            row += 10_000
            out.write(block)
            written += len(block)
    return path.stat().st_size


def _hook(base_url: str) -> Any:
    os.environ["AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"] = json.dumps(
        {"conn_type": "gemini_batch", "host": base_url, "password": API_KEY}
    )
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

    hook = GeminiBatchHook()
    hook.get_conn()  # client and connection pool built before the baseline
    return hook


def ours(path: str, base_url: str) -> Any:
    hook = _hook(base_url)
    return lambda: hook.upload_jsonl(path, display_name="bench-shard")


def sdk_path(path: str, base_url: str) -> Any:
    """The SDK given the path (what ``upload_jsonl`` did before the reused-buffer reader)."""
    from google.genai import types

    client = _hook(base_url).get_conn()
    config = types.UploadFileConfig(display_name="bench-sdk-path", mime_type="jsonl")
    return lambda: client.files.upload(file=path, config=config).name


def floor(path: str, base_url: str) -> Any:
    client = _hook(base_url).get_conn()
    size = os.path.getsize(path)

    def run() -> str:
        transport = client._api_client._httpx_client  # the closure keeps the client: collected, it closes it
        start = transport.post(
            f"{base_url}/upload/v1beta/files",
            headers={
                "x-goog-api-key": API_KEY,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
            },
            json={"file": {"displayName": "bench-floor", "mimeType": "jsonl"}},
        )
        url = start.headers["x-goog-upload-url"]
        offset = 0
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                last = offset + len(chunk) >= size
                response = transport.post(
                    url,
                    headers={
                        "x-goog-api-key": API_KEY,
                        "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                        "X-Goog-Upload-Offset": str(offset),
                    },
                    content=chunk,
                )
                offset += len(chunk)
                del chunk
                if last:
                    response.raise_for_status()
                    return str(response.json()["file"]["name"])

    return run


def run_case(python: Path, target: str, **kwargs: Any) -> dict[str, Any]:
    """``bench.harness.run_case`` under a given interpreter (one per SDK major)."""
    os.sync()
    out = subprocess.run(
        [str(python), "-m", "bench.harness", target, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {target} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sdk_version(python: Path) -> str:
    code = "from google.genai import version; print(version.__version__)"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    from airflow_gemini_batch.emulator import EmulatorServer

    megabytes = int(os.environ.get("BENCH_UPLOAD_MB", "1900"))
    repeats = int(os.environ.get("BENCH_REPEATS", "1"))
    work = Path(tempfile.mkdtemp(prefix="gemini-batch-bench-upload-"))
    try:
        shard = work / "shard.jsonl"
        size = write_shard(shard, megabytes)
        print(f"  shard: {size / 1e9:.2f} GB ({size} bytes)", flush=True)
        with EmulatorServer(data_dir=work / "emulator") as server:
            for label, python in INTERPRETERS.items():
                if not python.exists():
                    print(f"  {label}: {python} missing, skipped")
                    continue
                print(f"  {label} ({_sdk_version(python)}):", flush=True)
                results: dict[str, dict[str, Any]] = {}
                for _ in range(max(1, repeats)):
                    for case in ("floor", "sdk_path", "ours"):
                        result = run_case(
                            python, f"bench.upload:{case}", path=str(shard), base_url=server.base_url
                        )
                        server.control.reset()  # drop the uploaded copy: the disk holds one at a time
                        kept = results.setdefault(case, result)
                        kept["peak_mb"] = max(kept["peak_mb"], result["peak_mb"])
                        kept["seconds"] = min(kept["seconds"], result["seconds"])
                print(format_row("floor (8 MiB chunks, SDK transport)", results["floor"]), flush=True)
                for case, name in (
                    ("sdk_path", "SDK given the path (before)"),
                    ("ours", "ours (upload_jsonl)"),
                ):
                    print(format_row(name, results[case], results["floor"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
