#!/usr/bin/env bash
# S3 test server and benchmark peers: npm `s3rver` into tests/.s3rver/
# (project-local, gitignored), Debian `s3fs` and `rclone` for scripts/bench/s3.py.
# Idempotent: installs only what is missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/../.."

S3RVER_VERSION=3.7.1
DIR=tests/.s3rver

sudo_cmd() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup(s3): installing nodejs and npm"
    sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update -qq
    sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm >/dev/null
fi

# Loading the package (not only reading its package.json) finds a half-written
# install (an aborted npm): its dependencies are missing, and it is redone.
have=$(node -e "try{require('./$DIR/node_modules/s3rver');console.log(require('./$DIR/node_modules/s3rver/package.json').version)}catch(e){}" 2>/dev/null || true)
if [ "$have" != "$S3RVER_VERSION" ]; then
    echo "setup(s3): installing s3rver $S3RVER_VERSION into $DIR"
    mkdir -p "$DIR"
    npm install --silent --no-audit --no-fund --prefix "$DIR" "s3rver@$S3RVER_VERSION" >/dev/null
fi

missing=()
for p in s3fs rclone; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup(s3): installing Debian packages: ${missing[*]}"
    sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update -qq
    sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi
