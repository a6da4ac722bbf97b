"""``gemini-batch-emulator`` / ``python -m airflow_gemini_batch.emulator``: serve the emulator (foreground).

Loopback only unless ``--host`` says otherwise (the emulator accepts any API key, so never expose it).
Prints exactly one line with the listening URL (port 0 → the real port), then serves until interrupted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import uvicorn

from airflow_gemini_batch.emulator.app import create_app
from airflow_gemini_batch.emulator.server import bind_socket, uvicorn_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gemini-batch-emulator",
        description="Local emulator of the Gemini API Files + Batches endpoints.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where file bytes live (default: temp dir)"
    )
    parser.add_argument("--pending-seconds", type=float, default=0.0, help="time a new job stays PENDING")
    parser.add_argument("--running-seconds", type=float, default=0.0, help="time a job stays RUNNING")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gemini-emulator-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(data_dir, pending_seconds=args.pending_seconds, running_seconds=args.running_seconds)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Gemini Batch emulator listening on http://{shown}:{port} (data dir {data_dir})", flush=True)
    server = uvicorn.Server(uvicorn_config(app, args.log_level, args.access_log))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
