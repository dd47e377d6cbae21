#!/usr/bin/env bash
# Astrid's main job on embedded defaults: `astrid run` over the bundled sample
# project. A session is created and mounted (astrid-fs), the kernel boots the
# pinned WebAssembly plugins, a few requests are piped in as a person would
# type them, the file tool edits the workspace through vfs handles, and the
# agent asks to commit: the approval policy says "ask", so the request waits
# for a person, who answers `y` (allow once) in astrid run's terminal -- the
# line after `commit` below, read by the same prompt a person types at. The
# kernel checks the approval token and the commit lands in the project.
# Safe to run again: set-up is idempotent and every run makes a new session
# (over a fresh copy of the sample project).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

demo=${ASTRID_DEMO_DIR:-${TMPDIR:-/tmp}/astrid-demo}
project="$demo/project"
mkdir -p "$demo"
rm -rf "$project"
cp -r scripts/demo/sample-project "$project"
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
y
REQUESTS

echo; echo "== the commit landed in the project:"
cat "$project/src/todo.txt"
cat "$project/NOTES.md"
echo; echo "== the approval, as the audit trail has it:"
python - "${ASTRID_HOME:-$HOME/.local/share/astrid}/audit.jsonl" <<'PY'
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
wanted = ("cap.ask", "cap.answer", "cap.decision", "fs.commit")
for e in [e for e in lines if e["event"] in wanted][-4:]:
    who = {"cap.ask": f"deferred: waits for a person ({e.get('reason', '')})",
           "cap.answer": f"answered {e.get('answer')} by {e.get('by')}",
           "cap.decision": f"{e.get('decision')} at stage {e.get('stage')} by {e.get('by')}",
           "fs.commit": f"committed: {e.get('ok')}"}[e["event"]]
    print(f"{e['ts']}  {e['event']:<12} {e['plugin']} {e.get('kind', '')} "
          f"{e.get('resource', '')}  {who}")
PY
echo
echo "Talk to it yourself with: astrid run --lower $project"
echo "(answer asks inline, or from another shell: astrid approvals / astrid approve ID)"
