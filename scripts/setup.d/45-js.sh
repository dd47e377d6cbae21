#!/usr/bin/env bash
# JavaScript plugins: npm `@bytecodealliance/componentize-js` (StarlingMonkey,
# ~12 MB components) into ext/js/ (git-ignored). Optional: skipped when npm is
# missing; only `astrid plugin new --lang js` plugins need it. (`jco componentize`
# 1.35 fails here and componentize-qjs panics in wit-component: FIELD-NOTES.)
# Idempotent: installs only when the pinned version is not there.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION="0.23.0"
# weval (a componentize-js dependency) asks for @napi-rs/lzma ^1.1.2; 1.5.x's
# native bindings require Node ^22.20 || >=25, so on Debian's Node 20 npm skips
# them (optional dependencies) and componentize-js fails with "Cannot find
# native binding". 1.4.5 (engines: node >= 10) is pinned beside it.
LZMA_VERSION="1.4.5"
DIR=ext/js
if ! command -v npm >/dev/null 2>&1; then
    echo "setup(js): npm not found; JavaScript plugins will not build (optional)"
    exit 0
fi
have=$(node -p "require('./$DIR/node_modules/@bytecodealliance/componentize-js/package.json').version" 2>/dev/null || true)
have_lzma=$(node -p "require('./$DIR/node_modules/@napi-rs/lzma/package.json').version" 2>/dev/null || true)
if [ "$have" != "$VERSION" ] || [ "$have_lzma" != "$LZMA_VERSION" ]; then
    echo "setup(js): installing @bytecodealliance/componentize-js@$VERSION into $DIR"
    mkdir -p "$DIR"
    npm install --silent --no-audit --no-fund --prefix "$DIR" \
        "@bytecodealliance/componentize-js@$VERSION" "@napi-rs/lzma@$LZMA_VERSION" >/dev/null
fi
