#!/bin/sh
# Builds the GCP emulators' TOOL environment (.venv-gcp-emulators) from requirements/gcp-emulators.lock with the
# project's uv - never the product's environment. bqemulator needs Python 3.11+; without one this says plainly
# that the BigQuery/GCS tests will be skipped (and fails when GEMINI_BATCH_REQUIRE_GCP=1, as in CI).
# Offline trap: bqemulator downloads DuckDB's spatial extension at start; it is INSTALLed here once from the
# PyPI wheel (spatial and avro) into a HOME of the environment's own, which the test fixtures start it with.
set -eu
UV="$1"
VENV="$2"
LOCK=requirements/gcp-emulators.lock
PY=""
for cand in .venv/bin/python python3.13 python3.12 python3.11; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY="$(command -v "$cand")"
    break
  fi
done
if [ -z "$PY" ]; then
  msg="SKIPPED: the GCP emulators' environment (bqemulator needs Python 3.11+; none found on PATH). The BigQuery/GCS tests will be skipped."
  if [ "${GEMINI_BATCH_REQUIRE_GCP:-}" = "1" ]; then echo "$msg (GEMINI_BATCH_REQUIRE_GCP=1: failing)"; exit 1; fi
  echo "$msg"
  exit 0
fi
test -x "$VENV/bin/python" || "$UV" venv -q --python "$PY" "$VENV"
"$UV" pip sync -q --python "$VENV/bin/python" "$LOCK"
mkdir -p "$VENV/home"
HOME="$(cd "$VENV/home" && pwd)" "$VENV/bin/python" - <<'PY'
import pathlib, duckdb
for name in ("duckdb_extension_spatial", "duckdb_extension_avro"):
    module = __import__(name)
    files = list(pathlib.Path(module.__file__).parent.glob(f"extensions/v{duckdb.__version__}/*.duckdb_extension"))
    if not files:
        raise SystemExit(f"{name} ships no extension for duckdb {duckdb.__version__}")
    duckdb.sql(f"INSTALL '{files[0]}'")
duckdb.sql("LOAD spatial")
PY
touch "$VENV/.installed"
