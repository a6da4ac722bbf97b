"""Run the emulator's CLI in a process of its own and learn where it listens (demo, benchmarks, tests).

Invariants: the port is chosen by the OS (``--port 0``), so nothing races for a port; the child's output goes
to a log file, never to a pipe nobody reads (a full pipe would stall it); a child that exits or stays silent
past the timeout is killed and reported with the tail of its log.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_LISTENING = re.compile(r"listening on (http://\S+)")


def start_emulator_process(
    log: Path, *args: str, timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m airflow_gemini_batch.emulator --port 0 *args``; return the process and its base URL.

    The caller owns the process (``terminate()`` it); SIGTERM and Ctrl-C stop it cleanly, with its state kept
    when ``--data-dir`` is given.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_gemini_batch.emulator", "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            return proc, match.group(1)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(
        f"The Gemini Batch emulator did not start; its log ({log}):\n{log.read_text(errors='replace')[-2000:]}"
    )
