#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, a venv in
# .venv with Astrid installed editable (and its test extras), and the
# mount helper link that `mount -t fuse.astrid-fs` needs.
# Safe to run twice: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

APT_PACKAGES=(gcc python3-dev python3-venv fuse3 libfuse3-dev pkg-config attr fuse-overlayfs rsync git sqlite3 hyperfine e2fsprogs mount)

sudo_cmd() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo_cmd apt-get -o DPkg::Lock::Timeout=600 update -qq
    sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
fi

# The node half of set-up (scripts/setup.d/4*.sh: s3rver, componentize-js; npm
# downloads) runs beside the Python half, which is mostly downloads too; its
# output is shown, and its failure fails set-up, once both are done. It runs
# in its own process group, stopped whole if the Python half fails: an npm
# left running would collide with the next set-up's (a half-written install).
node_log=$(mktemp)
set -m  # (job control for this one job: its own process group, id $!)
( for part in scripts/setup.d/4*.sh; do bash "$part" || exit 1; done ) >"$node_log" 2>&1 &
node_pid=$!
set +m
trap 'kill -- -"$node_pid" 2>/dev/null || true; rm -f "$node_log"' EXIT

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.astrid-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    echo "setup: installing astrid (editable) into .venv"
    # uv downloads in parallel and keeps a cache that outlives the venv (pip here
    # caches nothing between fresh clones); pip only installs uv itself.
    [ -x .venv/bin/uv ] || .venv/bin/pip install -q --disable-pip-version-check "uv>=0.5,<1"
    .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[test]"
    touch "$stamp"
fi

# The FUSE reply shim (astrid_fs/fuse/native/fuse_shim.c): lets the kernel cache
# directory listings, which pyfuse3 alone cannot ask for. Rebuilt when its
# source changes.
shim=astrid_fs/fuse/native/libastrid_fuse_shim.so
if [ ! -f "$shim" ] || [ astrid_fs/fuse/native/fuse_shim.c -nt "$shim" ]; then
    echo "setup: building $shim"
    gcc -O2 -shared -fPIC $(pkg-config --cflags fuse3) -o "$shim.tmp" astrid_fs/fuse/native/fuse_shim.c -ldl
    mv "$shim.tmp" "$shim"
fi
# Copy-up's threads in C (astrid_fs/overlay/native/copyup_threads.c; cthreads.py).
threads=astrid_fs/overlay/native/libastrid_copyup_threads.so
if [ ! -f "$threads" ] || [ astrid_fs/overlay/native/copyup_threads.c -nt "$threads" ]; then
    echo "setup: building $threads"
    gcc -O2 -shared -fPIC -pthread -o "$threads.tmp" astrid_fs/overlay/native/copyup_threads.c
    mv "$threads.tmp" "$threads"
fi

# Parts that need more than the above (plugin toolchains, test servers) each
# have an idempotent script here.
for part in scripts/setup.d/*.sh; do
    [ -e "$part" ] || continue
    case "$part" in scripts/setup.d/4*.sh) continue ;; esac  # the node half, above
    bash "$part"
done
node_rc=0
wait "$node_pid" || node_rc=$?
trap - EXIT
cat "$node_log"; rm -f "$node_log"
if [ "$node_rc" -ne 0 ]; then echo "setup: the node half (scripts/setup.d/4*.sh) failed" >&2; exit 1; fi

# mount(8) -> mount.fuse3 runs the program named after "fuse." with a fixed
# PATH that does not include our venv; a link in /usr/local/sbin and /usr/sbin
# makes `mount -t fuse.astrid-fs` (fstab, overlay test suites) find it.
if [ "$(id -u)" -eq 0 ]; then
    for d in /usr/local/sbin /usr/sbin; do
        if [ "$(readlink "$d/astrid-fs" 2>/dev/null)" != "$ROOT/.venv/bin/astrid-fs" ]; then
            ln -sf "$ROOT/.venv/bin/astrid-fs" "$d/astrid-fs"
        fi
    done
fi
