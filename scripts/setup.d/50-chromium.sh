#!/usr/bin/env bash
# Debian's chromium, headless, for the dashboard's browser test
# (tests/runtime/test_dashboard.py drives it over --remote-debugging-pipe).
# The test fails, never skips, when it is missing. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup(chromium): no apt-get; install Debian's chromium by hand" >&2
    exit 1
fi
echo "setup(chromium): installing Debian's chromium"
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium >/dev/null \
    || { apt-get -o DPkg::Lock::Timeout=600 update >/dev/null && DEBIAN_FRONTEND=noninteractive \
         apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium >/dev/null; }
