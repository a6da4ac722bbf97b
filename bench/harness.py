"""Run one benchmark case in a fresh subprocess and report its wall time and peak memory above baseline.

A fresh process per case keeps peaks independent: the baseline is the RSS after imports and setup, the peak is
the kernel's high-water mark (VmHWM) at the end, so ``peak_mb`` is what the measured code itself added.

Usage from a benchmark script::

    result = run_case("bench.build_inputs:floor", rows=1_000_000, db="/tmp/x.db")
    # -> {"seconds": 5.6, "peak_mb": 12.3, "value": <whatever the case returned, JSON>}

A case is a function ``case(**kwargs) -> Callable[[], Any]``: it does its setup and imports, then returns the
zero-argument callable that is timed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_case(target: str, **kwargs: Any) -> dict[str, Any]:
    # Write back what earlier cases left dirty now, not during this case's timing (they write hundreds of MB).
    os.sync()
    out = subprocess.run(
        [sys.executable, "-m", "bench.harness", target, json.dumps(kwargs)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark case {target} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(repeats: int, cases: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Run each case ``repeats`` times, interleaved (a, b, a, b: a slow spell of a shared machine hits both),
    keeping each case's fastest time and its highest peak. The fastest run is the one least disturbed by
    other work, which is what a ratio between two cases should compare."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, repeats)):
        for label, (target, kwargs) in cases.items():
            result = run_case(target, **kwargs)
            kept = best.setdefault(label, result)
            kept["peak_mb"] = max(kept["peak_mb"], result["peak_mb"])
            if result["seconds"] < kept["seconds"]:
                kept.update(seconds=result["seconds"], value=result["value"])
    return best


def format_row(name: str, result: dict[str, Any], floor: dict[str, Any] | None = None) -> str:
    ratio = f"{result['seconds'] / floor['seconds']:.2f}x floor" if floor else "floor"
    return f"  {name:<38} {result['seconds']:8.2f} s  ({ratio:>12})   peak +{result['peak_mb']:7.1f} MB"


def _main() -> None:
    target, kwargs = sys.argv[1], json.loads(sys.argv[2])
    module, func = target.split(":")
    timed = getattr(importlib.import_module(module), func)(**kwargs)
    _reset_peak()
    baseline_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    value = timed()
    seconds = time.perf_counter() - start
    peak_mb = max(0, _status_kb("VmHWM") - baseline_kb) / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "value": value}, default=str))


if __name__ == "__main__":
    _main()
