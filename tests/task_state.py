"""A stand-in for ``context["task_state_store"]``, which exists only inside a running task instance."""

from __future__ import annotations

import json
from typing import Any


class DictStateStore:
    """Stands in for ``context["task_state_store"]``: same ``get``/``set`` contract, values JSON round-tripped
    (as the real store does over the Execution API), kept across "tries" by reusing the instance."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("Cannot set value as None")
        self.data[key] = json.dumps(value)
