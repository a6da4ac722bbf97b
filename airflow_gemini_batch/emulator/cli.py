"""``gemini-batch-emulator`` / ``python -m airflow_gemini_batch.emulator``: serve the emulator (foreground).

Loopback only unless ``--host`` says otherwise (the emulator accepts any API key, so never expose it).
Prints exactly one line with the listening URL (port 0 → the real port), then serves until interrupted.

With ``--data-dir`` the metadata of files and jobs persists there (``state.json``, rewritten atomically on every
change), so the next start on the same dir finds the same files and jobs and finishes interrupted jobs.
Ctrl-C (SIGINT) and SIGTERM both shut down gracefully (uvicorn drains, workers stop) and exit with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_gemini_batch.emulator.app import create_app
from airflow_gemini_batch.emulator.server import bind_socket, uvicorn_server

if TYPE_CHECKING:
    from types import FrameType


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gemini-batch-emulator",
        description="Local emulator of the Gemini API Files + Batches endpoints.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where file bytes and the persisted file/job metadata live (default: a temp dir, not persisted)",
    )
    parser.add_argument("--pending-seconds", type=float, default=0.0, help="time a new job stays PENDING")
    parser.add_argument("--running-seconds", type=float, default=0.0, help="time a job stays RUNNING")
    parser.add_argument(
        "--max-concurrent-jobs",
        type=int,
        default=0,
        help="non-terminal jobs at once before a create gets 429 RESOURCE_EXHAUSTED (the service: 100; 0 = off)",
    )
    parser.add_argument(
        "--max-enqueued-tokens",
        type=int,
        default=0,
        help="estimated tokens (request bytes / 4) of one model's unfinished jobs before 429 (0 = off)",
    )
    parser.add_argument(
        "--bigquery-endpoint",
        default=None,
        help="BigQuery emulator URL (http://127.0.0.1:P) for Vertex batch prediction bq:// input and output",
    )
    parser.add_argument(
        "--gcs-endpoint",
        default=None,
        help="GCS emulator URL (http://127.0.0.1:P) for Vertex batch prediction gs:// input and output",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gemini-emulator-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(
        data_dir,
        pending_seconds=args.pending_seconds,
        running_seconds=args.running_seconds,
        persist=args.data_dir is not None,
        max_concurrent_jobs=args.max_concurrent_jobs,
        max_enqueued_tokens=args.max_enqueued_tokens,
        bigquery_endpoint=args.bigquery_endpoint,
        storage_endpoint=args.gcs_endpoint,
    )
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Gemini Batch emulator listening on http://{shown}:{port} (data dir {data_dir})", flush=True)
    server = uvicorn_server(app, args.log_level, args.access_log)
    # Why: uvicorn handles SIGTERM gracefully, then re-raises it with the handler that was installed before
    # it started; the default one would kill the process (status -15) before our clean-up below.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        app.state.emulator.shutdown()
    return 0


class _Terminated(Exception):
    """SIGTERM, turned into an exception so ``main`` can shut down like on Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


if __name__ == "__main__":
    sys.exit(main())
