"""``[core] hostname_callable`` of the e2e Celery workers: each reports the name it was given.

Two workers on one machine would both report the machine's FQDN as the task instance's ``hostname``; as two
machines would, each says who it is (``GEMINI_E2E_WORKER_NAME``), so the REST API shows which ran what.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("GEMINI_E2E_WORKER_NAME") or socket.getfqdn()
