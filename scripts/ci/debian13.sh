#!/usr/bin/env bash
# Run the README's test command on Debian 13 (trixie: libfuse 3.17, Python
# 3.13) from a Debian 12 machine: a debootstrap chroot, a fresh clone of
# this checkout's HEAD in it with ../shared beside it, as CI has them.
#
#   sudo scripts/ci/debian13.sh [CHROOT_DIR] [LOG]
#
# CHROOT_DIR (default /srv/deb13) is made once and reused; the clone in it is
# made afresh each run. The run happens in a private mount namespace whose
# chroot root is a mount point (tests use `unshare --propagation`), and
# nothing is left mounted afterwards. Exit status: the suite's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CHROOT=${1:-/srv/deb13}
LOG=${2:-$CHROOT.log}
SHARED=$(cd "$ROOT/../shared" 2>/dev/null && pwd) || {
    echo "debian13.sh: no ../shared beside $ROOT (CI has one)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "debian13.sh: run as root (chroot, mounts)" >&2; exit 2; }

if [ ! -x "$CHROOT/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    echo "debian13.sh: building the trixie chroot in $CHROOT"
    debootstrap --variant=minbase --include=ca-certificates,git,python3,python3-venv,sudo \
        trixie "$CHROOT" http://deb.debian.org/debian >"$CHROOT.debootstrap.log" 2>&1 || {
        echo "debian13.sh: debootstrap failed (see $CHROOT.debootstrap.log)" >&2; exit 1; }
fi
# The host's resolver and certificate authorities (a proxy's CA, if any).
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"

rm -rf "$CHROOT/ci"
mkdir -p "$CHROOT/ci/shared"
git clone -q "$ROOT" "$CHROOT/ci/main"
echo "debian13.sh: running .ci/run on $(git -C "$ROOT" rev-parse --short HEAD) (log: $LOG)"
cert=/etc/ssl/certs/ca-certificates.crt
rc=0
unshare -m --propagation private bash -c '
    set -e
    chroot=$1 shared=$2 cert=$3
    mount --rbind "$chroot" "$chroot"
    for fs in proc sys dev; do mount --rbind "/$fs" "$chroot/$fs"; done
    mount --bind -o ro "$shared" "$chroot/ci/shared"
    exec chroot "$chroot" /usr/bin/env -i HOME=/root LANG=C.UTF-8 CI=1 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        SSL_CERT_FILE="$cert" NODE_EXTRA_CA_CERTS="$cert" \
        bash -c "cd /ci/main && bash .ci/run"
' _ "$CHROOT" "$SHARED" "$cert" >"$LOG" 2>&1 || rc=$?
tail -n 4 "$LOG"
# FUSE mounts the tests made inside the chroot are the host's too: none may stay.
# (nothing left mounted is the usual case: grep then finds nothing, which is fine)
{ grep -o " $CHROOT/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
echo "debian13.sh: exit $rc"
exit "$rc"
