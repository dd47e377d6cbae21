#!/usr/bin/env bash
# Set up (idempotent), then run lint, types and the whole default test suite.
# Exit code 5 from pytest (no tests collected) counts as failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check astrid_fs astrid_runtime tests scripts
echo "== mypy"; mypy
echo "== pytest"
set +e
python -m pytest --durations=30 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit "$rc"
