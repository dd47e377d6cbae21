#!/usr/bin/env bash
# Astrid's main job on embedded defaults: a session over the bundled sample
# project, mounted with astrid-fs, an edit landing in the session's upper
# layer while the project itself stays untouched. Idempotent set-up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

demo=${ASTRID_DEMO_DIR:-${TMPDIR:-/tmp}/astrid-demo}
project="$demo/project"
mnt="$demo/view"
mkdir -p "$demo" "$mnt"
[ -d "$project" ] || cp -r scripts/demo/sample-project "$project"
if mountpoint -q "$mnt"; then astrid-fs umount "$mnt"; fi

session="demo-$(date +%Y%m%d-%H%M%S)"
astrid-fs mount --lower "$project" --session "$session" "$mnt"
trap 'astrid-fs umount "$mnt" >/dev/null 2>&1 || true' EXIT

echo; echo "== the session's view ($mnt):"; ls -l "$mnt" "$mnt/src"
echo; echo "== an agent-style edit through the mount"
printf -- '- review the session with astrid-fs diff\n' >> "$mnt/src/todo.txt"
sed -i 's/Hello/Hi there/' "$mnt/src/greet.py"
cat "$mnt/src/todo.txt"
echo; echo "== what landed in the upper layer:"
upper="${ASTRID_HOME:-$HOME/.local/share/astrid}/sessions/$session/upper"
find "$upper" -type f | sed "s|^$upper/|  upper: |"
echo; echo "== the project itself is unchanged:"; cat "$project/src/todo.txt"
if astrid-fs diff --help >/dev/null 2>&1; then
    echo; echo "== astrid-fs diff $session"; astrid-fs diff "$session" || true
fi
echo; astrid-fs status
echo
echo "Session '$session' kept. Inspect it with: astrid-fs mount --lower $project --session $session $mnt"
