#!/usr/bin/env bash
# Build every shipped plugin (or the plugin dirs given) into plugins/NAME/NAME.wasm,
# then pin the rebuilt ones in plugins.lock with `astrid plugin install`.
#
#   scripts/build-plugins.sh                  build what changed, pin it
#   scripts/build-plugins.sh --force          rebuild everything
#   scripts/build-plugins.sh plugins/notes    just that one
#
# A plugin whose recorded inputs (NAME.inputs: sources, SDK, WIT, toolchain
# versions) match is left alone: componentize-py output is not byte-for-byte
# reproducible, so the committed Python components are the pinned ones and
# a fresh clone must not rebuild them. The C plugin builds reproducibly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.d/30-plugins.sh
.venv/bin/python -m astrid_runtime.scaffold.build "$@"

# Pin every shipped plugin whose component is not pinned as it now is.
for manifest in plugins/*/plugin.toml; do
    dir=$(dirname "$manifest")
    if ! .venv/bin/python - "$dir" <<'PY'
import sys
from pathlib import Path
from astrid_runtime.errors import KernelError
from astrid_runtime.lockfile import load_lockfile, read_verified
from astrid_runtime.manifest import load_manifest
manifest = load_manifest(Path(sys.argv[1]))
entry = load_lockfile(Path("plugins.lock")).get(manifest.name)
try:
    ok = (entry is not None and entry.version == manifest.version
          and entry.grants == manifest.asks and entry.limits == manifest.limits
          and read_verified(entry, manifest.component) != b"")
except KernelError:
    ok = False
sys.exit(0 if ok else 1)
PY
    then
        # Shipped plugins are the project's own: their scoped wildcards (notes.>) are reviewed here.
        .venv/bin/astrid --lockfile plugins.lock plugin install --allow-wildcards "$dir"
    fi
done
