"""``python -m bench``: run every benchmark script in this folder (``bench/<name>.py`` with a ``main()``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

SKIP = {"harness", "__main__"}


def main() -> None:
    only = set(sys.argv[1:])
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name in SKIP or info.name.startswith("_") or (only and info.name not in only):
            continue
        print(f"\n=== bench/{info.name}.py ===", flush=True)
        importlib.import_module(f"bench.{info.name}").main()


if __name__ == "__main__":
    main()
