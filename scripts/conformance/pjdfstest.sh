#!/usr/bin/env bash
# Run an already-built pjdfstest (github pjd/pjdfstest) inside a mounted filesystem.
#
#   scripts/conformance/pjdfstest.sh PJD_DIR MOUNTED_DIR [--out DIR] [--keep] [--timeout SECS]
#                                    [--mount [--passthrough] [--io-uring|--no-io-uring]] [TEST_PATH...]
#
# --mount: MOUNTED_DIR is an empty directory; mount a fresh astrid-fs there first (the
# mount helper, `mount -t fuse.astrid-fs`, over an empty lower in a temporary
# directory) and unmount it afterwards. --passthrough adds `-o passthrough` (FUSE
# passthrough for upper files) and fails unless the daemon's log says the kernel
# serves them. --io-uring adds `-o io_uring` (FUSE over io_uring, also the mount's
# default where the kernel offers it) and fails unless the daemon's ring threads
# (`astrid-ring*`) run; --no-io-uring adds `-o no_io_uring` (/dev/fuse).
#
# PJD_DIR is a pjdfstest work tree where `make pjdfstest` has already been run (this
# script neither fetches nor builds it). The suite runs as root with `prove -rv
# PJD_DIR/tests` (or the given TEST_PATHs, relative to PJD_DIR/tests) from a fresh
# directory MOUNTED_DIR/pjdfstest.XXXXXX, removed afterwards unless --keep.
#
# Prints the counts of `ok` and `not ok` assertions (a `not ok # TODO` is a tolerated
# deviation that prove counts as passing: reported apart, not as a failure) and
# prove's result, and writes
# to --out (default /tmp/astrid-conformance/pjdfstest-<fstype>):
#   prove.log     the full verbose TAP output
#   failures.txt  every `not ok` line (TODOs excluded), grouped by test file
#   summary.txt   counts, fstype, command, date
# --timeout (default 1800) bounds the whole prove run: a file system that hangs a
# request shows up as "prove: timed out" instead of blocking forever.
# Exit status 0 iff no assertion failed.
set -uo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
PJD=$(cd "$1" 2>/dev/null && pwd) || { echo "pjdfstest: no such directory: $1" >&2; exit 2; }
MNT=$(cd "$2" 2>/dev/null && pwd) || { echo "pjdfstest: no such directory: $2" >&2; exit 2; }
shift 2
OUT=
KEEP=0
MOUNT=0
PASSTHROUGH=0
IO_URING=0
TIMEOUT=1800
SELECTED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --mount) MOUNT=1; shift ;;
        --passthrough) PASSTHROUGH=1; shift ;;
        --io-uring) IO_URING=1; shift ;;
        --no-io-uring) IO_URING=2; shift ;;
        --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "pjdfstest: unknown option $1" >&2; exit 2 ;;
        *) SELECTED+=("$PJD/tests/$1"); shift ;;
    esac
done

[ -x "$PJD/pjdfstest" ] && [ -d "$PJD/tests" ] || {
    echo "pjdfstest: $PJD has no built ./pjdfstest binary and tests/ (build it first)" >&2
    exit 2
}
[ "$(id -u)" = 0 ] || { echo "pjdfstest: must run as root" >&2; exit 2; }
command -v prove >/dev/null || { echo "pjdfstest: prove (perl) not found" >&2; exit 2; }
[ "$PASSTHROUGH$IO_URING" = 00 ] || [ "$MOUNT" = 1 ] || {
    echo "pjdfstest: --passthrough and --io-uring need --mount (it mounts astrid-fs itself)" >&2
    exit 2; }

LAYERS=
DATA_PATH=
if [ "$MOUNT" = 1 ]; then
    [ -z "$(ls -A "$MNT")" ] || { echo "pjdfstest: --mount needs an empty directory: $MNT" >&2; exit 2; }
    LAYERS=$(mktemp -d /tmp/astrid-pjd-layers.XXXXXX)
    mkdir -p "$LAYERS/lower" "$LAYERS/upper" "$LAYERS/work"
    OPTS="lowerdir=$LAYERS/lower,upperdir=$LAYERS/upper,workdir=$LAYERS/work"
    [ "$PASSTHROUGH" = 1 ] && OPTS="$OPTS,passthrough"
    [ "$IO_URING" = 1 ] && OPTS="$OPTS,io_uring"
    [ "$IO_URING" = 2 ] && OPTS="$OPTS,no_io_uring"
    mount -t fuse.astrid-fs astrid-fs "$MNT" -o "$OPTS" || {
        echo "pjdfstest: mount -t fuse.astrid-fs failed (is astrid-fs on mount.fuse3's PATH?)" >&2
        rm -rf "$LAYERS"; exit 1; }
    DATA_PATH="daemon path"
    if [ "$PASSTHROUGH" = 1 ]; then
        : >"$MNT/.probe" && rm -f "$MNT/.probe"  # the daemon asks the kernel at the first open
        if grep -q "passthrough: upper files served by the kernel" "$LAYERS/work/astrid-fs.log"; then
            DATA_PATH=passthrough
        else
            echo "pjdfstest: the mount does not serve files by passthrough:" \
                 "$(grep -i passthrough "$LAYERS/work/astrid-fs.log" | tail -1)" >&2
            umount "$MNT"; rm -rf "$LAYERS"; exit 1
        fi
    fi
fi

if [ "$IO_URING" = 1 ]; then
    # FUSE over io_uring: the daemon's ring threads run once INIT asked for it
    ls "$MNT" >/dev/null
    pid=$(pgrep -f "astrid_fs.fuse.daemon.*\"mountpoint\": \"$MNT\"" | head -1)
    if [ -z "$pid" ] || ! grep -qs '^astrid-ring' /proc/"$pid"/task/*/comm; then
        echo "pjdfstest: the mount does not take requests over io_uring" >&2
        umount "$MNT"; rm -rf "$LAYERS"; exit 1
    fi
    DATA_PATH="$DATA_PATH, io_uring"
fi

FSTYPE=$(stat -f -c %T "$MNT" 2>/dev/null || echo unknown)
MTYPE=$(findmnt -n -o FSTYPE --target "$MNT" 2>/dev/null || echo "$FSTYPE")
OUT=${OUT:-/tmp/astrid-conformance/pjdfstest-${MTYPE//\//_}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d "$MNT/pjdfstest.XXXXXX") || {
    echo "pjdfstest: cannot create a directory in $MNT" >&2
    [ -z "$LAYERS" ] || { umount "$MNT"; rm -rf "$LAYERS"; }
    exit 1
}
# mktemp makes it 0700; tests that switch to uid 65534 must be able to search it,
# as they could at the root of a fresh mount
chmod 0755 "$WORK"
cleanup() {
    if [ "$KEEP" = 0 ]; then
        cd /
        # tests may leave immutable or unwritable entries; restore permissions first
        timeout 120 chmod -R u+rwx "$WORK" 2>/dev/null
        timeout 300 rm -rf "$WORK" || echo "pjdfstest: could not remove $WORK" >&2
    fi
    if [ -n "$LAYERS" ]; then
        cd /
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
        [ "$KEEP" = 1 ] || rm -rf "$LAYERS"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ ${#SELECTED[@]} -gt 0 ] || SELECTED=("$PJD/tests")
echo "pjdfstest $(git -C "$PJD" rev-parse --short HEAD 2>/dev/null || echo '?') in $WORK" \
     "(fs $MTYPE); logs in $OUT"
START=$(date +%s)
(cd "$WORK" && timeout -k 10 "$TIMEOUT" prove -rv "${SELECTED[@]}") >"$OUT/prove.log" 2>&1
PROVE_RC=$?
if [ $PROVE_RC -eq 124 ] || [ $PROVE_RC -eq 137 ]; then
    echo "pjdfstest: prove timed out after ${TIMEOUT}s (a hung request?); last test started:" \
         "$(grep -E '\.t \.+' "$OUT/prove.log" | tail -1)" | tee -a "$OUT/prove.log" >&2
fi
END=$(date +%s)

OK=$(grep -cE '^ok [0-9]+' "$OUT/prove.log")
# "not ok N # TODO ..." marks a known, tolerated deviation: prove counts it as a pass,
# and so do we (reported separately as todo).
NOTOK=$(grep -E '^not ok [0-9]+' "$OUT/prove.log" | grep -cv '# TODO')
TODO=$(grep -E '^not ok [0-9]+' "$OUT/prove.log" | grep -c '# TODO')
RESULT=$(grep -E '^Result: ' "$OUT/prove.log" | tail -1)
FILES=$(grep -E '^Files=' "$OUT/prove.log" | tail -1)

# `not ok` lines grouped under the test file that printed them (prove -v prints
# "PATH/tests/x/y.t .." before each file's TAP).
awk -v pjd="$PJD/tests/" '
    /\.t \.+ *$/ || /\.t \.\. / { f = $1; sub(pjd, "", f); next }
    /^not ok [0-9]+/ && !/# TODO/ { if (f != last) { print "== " f; last = f } print }
' "$OUT/prove.log" >"$OUT/failures.txt"
FAILED_FILES=$(grep -c '^== ' "$OUT/failures.txt")

{
    echo "suite: pjdfstest $(git -C "$PJD" rev-parse HEAD 2>/dev/null || echo '?')"
    echo "mounted dir: $MNT ($MTYPE)"
    [ -n "$DATA_PATH" ] && echo "astrid-fs mounted by this run ($OPTS), data path: $DATA_PATH"
    echo "command: cd $WORK && prove -rv ${SELECTED[*]}"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "seconds: $((END - START))"
    echo "ok: $OK"
    echo "not ok: $NOTOK"
    echo "not ok # TODO (tolerated, not counted as failures): $TODO"
    echo "test files with failures: $FAILED_FILES"
    echo "prove: $FILES"
    echo "prove: ${RESULT:-no result} (exit $PROVE_RC)"
} >"$OUT/summary.txt"

cat "$OUT/summary.txt"
grep '^== ' "$OUT/failures.txt" | sed 's/^== /  failing: /'
echo "pjdfstest: $OK passed, $NOTOK failed"
[ "$NOTOK" -eq 0 ]
