"""The SIGKILL target: the submit operator in a process of its own, with a durable file-backed state store.

``python -m tests.reliability.kill_target '<json args>'`` submits like a worker does. The store writes each
record to disk before returning (as the real task state store commits it over the Execution API), so what
survives the kill is exactly what a real worker would leave behind. ``slow_key`` widens the window between
``create`` returning and the job (or cache) name being saved, so the test can land its SIGKILL inside it;
with ``slow_field`` it blocks instead at the first record of ``slow_key`` that carries that field. With
``batch`` (a dict of ``GeminiBatchOperator`` arguments) it runs that operator, not deferrable, instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from tests.reliability.helpers import context, submit_op


class FileStateStore:
    """``get``/``set`` over one JSON file, written atomically on every ``set``."""

    def __init__(self, path: str | Path, slow_key: str | None = None, slow_field: str | None = None) -> None:
        self.path = Path(path)
        self.slow_key = slow_key
        self.slow_field = slow_field

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._read().get(key, default)

    def set(self, key: str, value: Any) -> None:
        fields = (self.slow_field,) if self.slow_field else ("job_name", "name")
        if key == self.slow_key and isinstance(value, dict) and any(value.get(f) for f in fields):
            threading.Event().wait()  # blocks until the SIGKILL: created (a job, a cache), name not saved
        data = self._read()
        data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


def main() -> None:
    args = json.loads(sys.argv[1])
    store = FileStateStore(args["store"], args.get("slow_key"), args.get("slow_field"))
    if args.get("batch"):
        from airflow_gemini_batch.operators.batch import GeminiBatchOperator

        summary = GeminiBatchOperator(**args["batch"]).execute(context(store, task_id="batch"))  # type: ignore[arg-type]
        print(json.dumps(summary, default=str))
        return
    op = submit_op(args["conn_id"], args["sql"], Path(args["staging"]), **args.get("submit", {}))
    manifest = op.execute(context(store))  # type: ignore[arg-type]
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
