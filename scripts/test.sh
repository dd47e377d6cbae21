#!/usr/bin/env bash
# Set up (idempotent), then run lint, types and the whole default test suite.
# Exit code 5 from pytest (no tests collected) counts as failure.
#
# pytest runs on ASTRID_TEST_WORKERS pytest-xdist workers (default 3: most tests
# wait on mounts, daemons and servers, so three keep two cores busy; `-n 0` in
# the arguments runs them in this process). mypy checks beside it and reports
# after it; any of ruff, mypy or pytest failing fails the run.
#
# Mounts serve FUSE over io_uring by default where the kernel offers it, so
# the default run (no arguments) then runs tests/fs a second time with
# ASTRID_FS_IO_URING=0: the /dev/fuse transport, which machines without it
# use, stays tested.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Bytecode for the project's own modules: the tests start the CLIs and daemons
# hundreds of times, and with PYTHONDONTWRITEBYTECODE set each start would
# compile them again.
python -m compileall -q -j 0 astrid_fs astrid_runtime tests >/dev/null
echo "== ruff"; ruff check astrid_fs astrid_runtime tests scripts
mypy_log=$(mktemp)
mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
echo "== pytest"
# Set up above installed every part the tests use: a test that finds one
# missing fails here instead of skipping (tests/support/mounts.py missing_part).
export ASTRID_REQUIRE_PARTS=1
set +e
python -m pytest -n "${ASTRID_TEST_WORKERS:-3}" --dist loadgroup --durations=30 "$@"
rc=$?
if [ "$#" -eq 0 ]; then
  echo "== pytest tests/fs over /dev/fuse (ASTRID_FS_IO_URING=0)"
  ASTRID_FS_IO_URING=0 python -m pytest -n "${ASTRID_TEST_WORKERS:-3}" --dist loadgroup tests/fs
  devfuse_rc=$?
  if [ "$rc" -eq 0 ]; then rc=$devfuse_rc; fi
fi
wait "$mypy_pid"
mypy_rc=$?
set -e
echo "== mypy (ran beside pytest)"; cat "$mypy_log"; rm -f "$mypy_log"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
if [ "$mypy_rc" -ne 0 ]; then echo "mypy failed: failing"; exit 1; fi
exit "$rc"
