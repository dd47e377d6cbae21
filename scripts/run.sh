#!/usr/bin/env bash
# Astrid's main job on embedded defaults: `astrid run` over the bundled sample
# project. A session is created and mounted (astrid-fs), the kernel boots the
# pinned WebAssembly plugins, a few requests are piped in as a person would
# type them, the file tool edits the workspace through vfs handles, and the
# session is unmounted and kept: its changes are shown with `astrid-fs diff`
# while the project itself stays untouched. Safe to run again: set-up is
# idempotent and every run makes a new session.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

demo=${ASTRID_DEMO_DIR:-${TMPDIR:-/tmp}/astrid-demo}
project="$demo/project"
mkdir -p "$demo"
[ -d "$project" ] || cp -r scripts/demo/sample-project "$project"
session="demo-$(date +%Y%m%d-%H%M%S)"

echo "== astrid run --lower $project --session $session"
astrid run --lower "$project" --session "$session" <<'REQUESTS'
help
ls
cat src/todo.txt
append src/todo.txt - review the session with astrid-fs diff
replace src/greet.py Hello "Hi there"
write NOTES.md Reviewed by Astrid.
note the demo ran
count the quick brown fox
commit
REQUESTS

echo; echo "== astrid-fs diff --stat $session"
astrid-fs diff --stat "$session"
echo; echo "== astrid-fs diff --patch $session"
astrid-fs diff --patch "$session"
echo; echo "== the project itself is unchanged:"; cat "$project/src/todo.txt"
echo
echo "The agent's 'commit' was denied: the default approval policy asks a person"
echo "(docs/approval.md). Land the session yourself with: astrid-fs commit $session"
echo "Talk to it yourself with: astrid run --lower $project"
