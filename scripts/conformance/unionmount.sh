#!/usr/bin/env bash
# Run an already-checked-out unionmount-testsuite (github amir73il/unionmount-testsuite)
# test by test against kernel overlayfs, fuse-overlayfs or astrid-fs.
#
#   scripts/conformance/unionmount.sh SUITE_DIR [--fs astrid-fs|fuse-overlayfs|kernel] [--xdev]
#                                     [--ov=N] [--passthrough] [--io-uring|--no-io-uring] [--out DIR]
#                                     [--timeout SECS]
#                                     [TEST...]
#
# This script neither fetches nor builds the suite: SUITE_DIR is a work tree you made.
# Upstream ./run stops at the first failing test, so we call it once per test and
# report pass/fail for each, then totals. Must run as root (the suite mounts).
#
# Layout: all layers (lower, upper, work, mount point) live on a private tmpfs at
# $ASTRID_UM_BASE (default /tmp/astrid-unionmount/base), passed to the suite as
# UNIONMOUNT_BASEDIR, which implies --samefs. Nothing under /mnt, /base, /lower or
# /upper is touched. The tmpfs and any union left mounted are removed on exit.
#
# Modes: kernel    -> ./run --ov --samefs            (redirect_dir=on added by ./run when
#                                                     the module default is off)
#        fuse-*    -> ./run --ov --fuse=NAME --samefs [--xdev]
# --ov=N (layer recycling): ./run --ov=N ... runs every test twice, first with up to N
# layers, where each remount in the test turns the previous upper into the top lower
# (lowerdir=U1:L, then U2:U1:L, ...), then once more without recycling as --ov does.
# A test passes only if both runs pass; the log keeps both.
# --passthrough (astrid-fs only): every mount gets `-o passthrough` (through the suite's
# UNIONMOUNT_MNTOPTIONS), so upper files are served by FUSE passthrough
# (fuse/passthrough.py); the daemon falls back to its own path where the kernel refuses.
# --io-uring (astrid-fs only): every mount gets `-o io_uring` the same way (FUSE over
# io_uring, fuse/io_uring.py); /dev/fuse where the kernel does not offer it. That is
# also the default without the option; --no-io-uring (`-o no_io_uring`) asks for
# /dev/fuse.
# mount.fuse3 runs NAME from a fixed PATH, so for astrid-fs an `astrid-fs` program
# must be reachable in /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin.
#
# Output: one line per test "PASS name" / "FAIL name: last error line", then
# "N passed, M failed". Logs and summary.txt go to --out (default
# /tmp/astrid-conformance/unionmount-<fs>[-xdev]). Exit status 0 iff all passed.
set -uo pipefail

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 1 ] || usage
SUITE=$(cd "$1" 2>/dev/null && pwd) || { echo "unionmount: no such directory: $1" >&2; exit 2; }
shift
[ -x "$SUITE/run" ] && [ -d "$SUITE/tests" ] || {
    echo "unionmount: $SUITE is not a unionmount-testsuite work tree (no ./run, tests/)" >&2
    exit 2
}

FS=astrid-fs
XDEV=0
PASSTHROUGH=0
IO_URING=0
LAYERS=
OUT=
TIMEOUT=
SELECTED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --fs) FS=${2:?--fs needs a value}; shift 2 ;;
        --fs=*) FS=${1#--fs=}; shift ;;
        --xdev) XDEV=1; shift ;;
        --passthrough) PASSTHROUGH=1; shift ;;
        --io-uring) IO_URING=1; shift ;;
        --no-io-uring) IO_URING=2; shift ;;
        --ov=*) LAYERS=${1#--ov=}; shift ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "unionmount: unknown option $1" >&2; exit 2 ;;
        *) SELECTED+=("$1"); shift ;;
    esac
done

# Per-test timeout: --ov=N remounts after every rename (rename-mass-dir: 124 remounts,
# each starting a new astrid-fs daemon, 2.5-4 s on a loaded 2-core machine), so it
# gets 900 s unless --timeout says otherwise; 300 s otherwise.
[ -n "$TIMEOUT" ] || { [ -n "$LAYERS" ] && TIMEOUT=900 || TIMEOUT=300; }
case "$LAYERS" in
    '') OV=--ov ;;
    *[!0-9]*) echo "unionmount: --ov=N needs a number of layers (got $LAYERS)" >&2; exit 2 ;;
    *) OV=--ov=$LAYERS ;;
esac
case "$FS" in
    kernel|overlay) FS=kernel; RUNARGS=("$OV") ;;
    astrid-fs|fuse-overlayfs) RUNARGS=("$OV" "--fuse=$FS") ;;
    *) echo "unionmount: --fs must be astrid-fs, fuse-overlayfs or kernel (got $FS)" >&2; exit 2 ;;
esac
RUNARGS+=(--samefs)
[ "$XDEV" = 1 ] && RUNARGS+=(--xdev)
if [ "$PASSTHROUGH$IO_URING" != 00 ] && [ "$FS" != astrid-fs ]; then
    echo "unionmount: --passthrough and --io-uring are astrid-fs options (got --fs $FS)" >&2
    exit 2
fi

if [ "$(id -u)" != 0 ]; then
    echo "unionmount: must run as root (the suite mounts filesystems)" >&2
    exit 2
fi

if [ "$FS" != kernel ]; then
    FIXED_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    if ! PATH=$FIXED_PATH command -v "$FS" >/dev/null; then
        echo "unionmount: '$FS' is not on mount.fuse3's PATH ($FIXED_PATH);" \
             "install it or link it, e.g. ln -s /path/to/.venv/bin/$FS /usr/local/bin/$FS" >&2
        exit 2
    fi
fi

TAG=$FS
[ -n "$LAYERS" ] && TAG="$TAG-ov$LAYERS"
[ "$XDEV" = 1 ] && TAG="$TAG-xdev"
[ "$PASSTHROUGH" = 1 ] && TAG="$TAG-pt"
[ "$IO_URING" = 1 ] && TAG="$TAG-uring"
[ "$IO_URING" = 2 ] && TAG="$TAG-devfuse"
OUT=${OUT:-/tmp/astrid-conformance/unionmount-$TAG}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

BASE=${ASTRID_UM_BASE:-/tmp/astrid-unionmount/base}
mkdir -p "$BASE"
if ! mountpoint -q "$BASE"; then
    mount -t tmpfs astrid_um_base "$BASE" || { echo "unionmount: cannot mount tmpfs on $BASE" >&2; exit 1; }
    MOUNTED_BASE=1
else
    MOUNTED_BASE=0
fi
export UNIONMOUNT_BASEDIR=$BASE
export UNIONMOUNT_MNTPOINT=$BASE/m
unset UNIONMOUNT_LOWERDIR UNIONMOUNT_MNTOPTIONS
OPTS=rw
[ "$PASSTHROUGH" = 1 ] && OPTS="$OPTS,passthrough"
[ "$IO_URING" = 1 ] && OPTS="$OPTS,io_uring"
[ "$IO_URING" = 2 ] && OPTS="$OPTS,no_io_uring"
[ "$OPTS" = rw ] || export UNIONMOUNT_MNTOPTIONS=$OPTS

cleanup() {
    (cd "$SUITE" && ./run -c >/dev/null 2>&1)
    # anything still mounted below BASE (deepest first), then BASE itself
    grep -o " $BASE/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
    if [ "$MOUNTED_BASE" = 1 ]; then umount "$BASE" 2>/dev/null || umount -l "$BASE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The test list is the one upstream ./run builds: its `tests = [...]` list plus the
# directory-rename tests when redirects are on, or rename-exdev when they are off
# (--xdev; the kernel with redirects off would also take that branch, but ./run adds
# redirect_dir=on when the module default is off, so it never does here).
if [ ${#SELECTED[@]} -gt 0 ]; then
    TESTS=("${SELECTED[@]}")
else
    mapfile -t TESTS < <(python3 - "$SUITE/run" "$XDEV" <<'EOF'
import ast, sys
src = open(sys.argv[1]).read()
xdev = sys.argv[2] == "1"
tree = ast.parse(src)
base, exdev, redirect = [], [], []
for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "tests" for t in node.targets
    ) and isinstance(node.value, ast.List):
        base = [ast.literal_eval(e) for e in node.value.elts]
    if isinstance(node, ast.If) and "redirect_dir" in ast.unparse(node.test):
        for branch, acc in ((node.body, exdev), (node.orelse, redirect)):
            for stmt in branch:
                if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) \
                        and stmt.target.id == "tests":
                    acc.extend(ast.literal_eval(stmt.value))
if not base or not exdev or not redirect:
    sys.exit("cannot find the test list in " + sys.argv[1])
for t in base + (exdev if xdev else redirect):
    print(t)
EOF
)
    [ ${#TESTS[@]} -gt 0 ] || { echo "unionmount: could not read the test list from $SUITE/run" >&2; exit 1; }
fi

echo "unionmount-testsuite $(git -C "$SUITE" rev-parse --short HEAD 2>/dev/null || echo '?') :" \
     "./run ${RUNARGS[*]} <test>  (base $BASE, logs $OUT)" \
     "${UNIONMOUNT_MNTOPTIONS:+options $UNIONMOUNT_MNTOPTIONS}"
PASS=0
FAIL=0
FAILED=()
: >"$OUT/results.txt"
for t in "${TESTS[@]}"; do
    log="$OUT/$t.log"
    (cd "$SUITE" && timeout -k 10 "$TIMEOUT" ./run "${RUNARGS[@]}" "$t") >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        PASS=$((PASS + 1))
        line="PASS $t"
    else
        FAIL=$((FAIL + 1))
        FAILED+=("$t")
        why=$(grep -v '^\s*$' "$log" | tail -1)
        [ $rc -eq 124 ] && why="timeout after ${TIMEOUT}s"
        line="FAIL $t: $why"
    fi
    echo "$line"
    echo "$line" >>"$OUT/results.txt"
done

{
    echo "suite: unionmount-testsuite $(git -C "$SUITE" rev-parse HEAD 2>/dev/null || echo '?')"
    echo "fs: $FS"
    echo "command: ./run ${RUNARGS[*]} <test>"
    [ -n "${UNIONMOUNT_MNTOPTIONS:-}" ] && echo "mount options: $UNIONMOUNT_MNTOPTIONS"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "passed: $PASS"
    echo "failed: $FAIL"
    echo "total: $((PASS + FAIL))"
    [ $FAIL -gt 0 ] && echo "failing: ${FAILED[*]}"
} >"$OUT/summary.txt"

echo "($TAG)"
echo "unionmount: $PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
