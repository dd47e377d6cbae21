"""CLI verbs that review and land a session: diff, commit, discard,
snapshot, log, rollback. Each opens the session first, which finishes or
rolls back any commit a crash interrupted (the journal), then does its work.
Exit codes: 0 done, 1 failed (one line on stderr), 2 bad usage, 3 conflicts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from astrid_fs.cli.daemonlink import DaemonLink
from astrid_fs.cli.progress import Progress
from astrid_fs.errors import ConflictError, UsageError
from astrid_fs.review import diffview, journal
from astrid_fs.review.commit import (
    commit,
    describe,
    finish_interrupted,
    open_lowers,
    resolve_paths,
    session_changes,
)
from astrid_fs.review.discard import discard
from astrid_fs.review.journal import Steps
from astrid_fs.review.resolve import Outcome, resolve, update
from astrid_fs.review.selection import is_under
from astrid_fs.review.snapshot import (
    SnapshotInfo,
    finish_rollback,
    list_snapshots,
    rollback,
    snapshot,
    undo,
)
from astrid_fs.review.snapshot import describe as describe_snapshots
from astrid_fs.session import Session, open_session

_HELP = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the review verbs to the `astrid-fs` parser."""
    d = sub.add_parser("diff", help="show what a session changed", formatter_class=_HELP,
                       description="One line per change (A added, M modified, D deleted, "
                       "R renamed, T type changed, L symlink target, P mode, X xattrs, "
                       "O owner, U times; a '!' in column 2 marks a conflict).",
                       epilog="examples:\n  astrid-fs diff fix-bug\n"
                       "  astrid-fs diff fix-bug src/ --patch\n  astrid-fs diff fix-bug --json")
    d.add_argument("session")
    d.add_argument("paths", nargs="*", metavar="PATH", default=[],
                   help="only changes under these paths")
    fmt = d.add_mutually_exclusive_group()
    fmt.add_argument("--patch", "-p", action="store_true", help="unified diffs")
    fmt.add_argument("--stat", action="store_true", help="a summary per file")
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_diff)

    c = sub.add_parser("commit", help="land changes in the lower layer", formatter_class=_HELP,
                       description="Apply all changes, or those under PATHs, to the lower "
                       "layer through a crash-safe journal; landed changes leave the session.",
                       epilog="examples:\n  astrid-fs commit fix-bug\n"
                       "  astrid-fs commit fix-bug src/ README.md --dry-run")
    c.add_argument("session")
    c.add_argument("paths", nargs="*", metavar="PATH", default=[])
    c.add_argument("--dry-run", "-n", action="store_true", help="print the plan, change nothing")
    c.add_argument("--force", action="store_true",
                   help="commit even where the lower changed since the session copied it")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--verbose", "-v", action="store_true",
                   help=f"list every change (default: up to {LIST_LIMIT})")
    c.set_defaults(func=cmd_commit)

    x = sub.add_parser("discard", help="drop changes from a session", formatter_class=_HELP,
                       epilog="examples:\n  astrid-fs discard fix-bug build/\n"
                       "  astrid-fs discard fix-bug --all")
    x.add_argument("session")
    x.add_argument("paths", nargs="*", metavar="PATH", default=[])
    x.add_argument("--all", action="store_true", help="drop every change (needed without PATH)")
    x.set_defaults(func=cmd_discard)

    s = sub.add_parser("snapshot", help="record the session's changes as they are now",
                       epilog="example: astrid-fs snapshot fix-bug --name before-refactor")
    s.add_argument("session")
    s.add_argument("--name", default="", help="a name to roll back to (not a number)")
    s.set_defaults(func=cmd_snapshot)

    lg = sub.add_parser("log", help="list a session's snapshots",
                        epilog="example: astrid-fs log fix-bug --json")
    lg.add_argument("session")
    lg.add_argument("--json", action="store_true", help="machine-readable output")
    lg.set_defaults(func=cmd_log)

    r = sub.add_parser("rollback", help="restore the session to a snapshot",
                       epilog="example: astrid-fs rollback fix-bug 2")
    r.add_argument("session")
    r.add_argument("snapshot", metavar="N", help="snapshot number or name")
    r.set_defaults(func=cmd_rollback)

    rs = sub.add_parser("resolve", help="resolve conflicts: keep ours, take theirs, or merge",
                        formatter_class=_HELP,
                        description="For each conflict at or under PATH (all without PATH): "
                        "--ours keeps the session's version (the commit will overwrite the "
                        "project there), --theirs takes the project's (drops the session's "
                        "change), --merge merges text files three-way with git's conflict "
                        "markers (a file with markers stays in conflict until they are gone).",
                        epilog="examples:\n  astrid-fs resolve fix-bug README.md --merge\n"
                        "  astrid-fs resolve fix-bug build/ --theirs")
    rs.add_argument("session")
    rs.add_argument("paths", nargs="*", metavar="PATH", default=[])
    side = rs.add_mutually_exclusive_group(required=True)
    side.add_argument("--ours", dest="side", action="store_const", const="ours")
    side.add_argument("--theirs", dest="side", action="store_const", const="theirs")
    side.add_argument("--merge", dest="side", action="store_const", const="merge")
    rs.add_argument("--json", action="store_true", help="machine-readable output")
    rs.set_defaults(func=cmd_resolve)

    up = sub.add_parser("update", help="bring the project's changes into a session",
                        formatter_class=_HELP,
                        description="Merge every conflicting text file three-way (git's "
                        "markers where both sides changed the same lines) and make the "
                        "project as it is now the base of everything the session did not "
                        "change. Conflicts that cannot be merged are listed for resolve.",
                        epilog="example:\n  astrid-fs update fix-bug")
    up.add_argument("session")
    up.add_argument("paths", nargs="*", metavar="PATH", default=[])
    up.add_argument("--json", action="store_true", help="machine-readable output")
    up.set_defaults(func=cmd_update)

    u = sub.add_parser("undo", help="undo the last rollback, discard or commit --force",
                       formatter_class=_HELP,
                       description="Each of rollback, discard and commit --force first takes "
                       "an automatic snapshot (listed by `log`); undo rolls the session back "
                       "to the newest one. Undo twice to redo.",
                       epilog="example:\n  astrid-fs discard fix-bug --all\n"
                       "  astrid-fs undo fix-bug")
    u.add_argument("session")
    u.set_defaults(func=cmd_undo)


def open_and_recover(name: str, reading: bool = False) -> Session:
    """Open a session and finish whatever a crash interrupted in it. A verb
    that only reads (`reading`) goes on without recovery while another
    command holds the session (that command recovers first itself)."""
    session = open_session(name)
    try:
        with journal.locked(session):
            for line in finish_interrupted(session, _say_waiting, DaemonLink(session)):
                print(f"astrid-fs: {line}", file=sys.stderr)
            finish_rollback(session, DaemonLink(session))
    except journal.BusyError:
        if not reading:
            raise
    return session


def _say(args: argparse.Namespace, text: str) -> None:
    """A line for a person: not with --quiet, nor where --json prints."""
    if not args.quiet and not args.json:
        print(text)


def _warn(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"astrid-fs: {text}", file=sys.stderr)


def cmd_diff(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session, reading=True)
    with Progress("diff", args.quiet):
        changes = session_changes(session, DaemonLink(session))
        if args.paths:
            prefixes = resolve_paths(session, args.paths)
            changes = [c for c in changes if any(is_under(c.path, p) for p in prefixes)]
        upper, lower = str(session.upper), str(session.lower)
        lowers = open_lowers(session)
        # the old side of a change under a mounted source is the source's object
        remote = None if lowers is None else (
            lambda path: lowers.read(path, diffview.MAX_PATCH_BYTES))
        try:
            if args.json:
                out = diffview.as_json(changes)
            elif args.patch:
                out = diffview.patch(changes, upper, lower, remote)
            elif args.stat:
                out = diffview.stat_view(changes, upper, lower, remote=remote)
            else:
                out = diffview.porcelain(changes)
        finally:
            if lowers is not None:
                lowers.close()
    if not args.quiet or args.json:
        sys.stdout.write(out)
    return 0


def _say_waiting(project: str) -> None:
    print(f"astrid-fs: waiting for another commit to {project} to finish", file=sys.stderr,
          flush=True)


LIST_LIMIT = 50  # commit lists its changes up to this many (all with --verbose)


def cmd_commit(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    try:
        with Progress("commit", args.quiet) as progress:
            result = commit(session, args.paths, force=args.force, dry_run=args.dry_run,
                            steps=Steps.from_env(progress), on_wait=_say_waiting,
                            mount=DaemonLink(session))
    except ConflictError as e:
        if args.json:  # scripts get the list; the one line still goes to stderr
            print(json.dumps({"committed": [], "conflicts": [
                {"path": path, "why": why} for path, why in e.conflicts]}))
        raise
    changes = list(result.changes)
    for c in result.skipped:
        _warn(args, f"not committed (only holds a mount point): {c.path}")
    if result.warning is not None:
        _warn(args, result.warning)
    if result.kept is not None:
        _warn(args, f"the project's overwritten versions are kept in {result.kept}; "
              f"`astrid-fs undo {session.name}` restores the session as it was")
    if args.json:
        print(json.dumps({"dry_run": result.dry_run, "committed": [] if result.dry_run else [
            c.path for c in changes], "planned": [c.path for c in changes],
            "skipped": [c.path for c in result.skipped], "targets": list(result.targets),
            "forced": [c.path for c in changes if c.conflict],
            "kept": None if result.kept is None else str(result.kept),
            "warning": result.warning}))
        return 0
    if result.record is None:
        _say(args, "nothing to commit")
        return 0
    if args.quiet:
        return 0
    if len(changes) <= LIST_LIMIT or args.verbose or result.dry_run:
        sys.stdout.write(diffview.porcelain(changes))
    if result.dry_run:
        sys.stdout.write("plan:\n" + "".join(
            f"  {line}\n" for line in describe(result.record).splitlines()))
        print(f"dry run: {len(changes)} change(s) would be committed")
    else:
        print(f"committed {len(changes)} change(s) to {', '.join(result.targets)}")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    if not args.paths and not args.all:
        raise UsageError("discard needs PATH... or --all (which drops every change)")
    with Progress("discard", args.quiet):
        dropped = discard(session, [] if args.all else args.paths, mount=DaemonLink(session))
    if args.json:
        print(json.dumps({"discarded": [c.path for c in dropped]}))
    _say(args, f"discarded {len(dropped)} change(s)"
         + (f" (`astrid-fs undo {session.name}` brings them back)" if dropped else ""))
    return 0


def _snapshot_json(s: SnapshotInfo) -> dict[str, object]:
    return {"number": s.number, "name": s.name, "created": s.created, "changes": s.changes,
            "entries": s.entries, "copied": s.copied, "auto": s.auto, "reason": s.reason}


def cmd_snapshot(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    with Progress("snapshot", args.quiet):
        info = snapshot(session, args.name, mount=DaemonLink(session))
    if args.json:
        print(json.dumps(_snapshot_json(info)))
    label = f" ({info.name})" if info.name else ""
    _say(args, f"snapshot {info.number}{label}: {info.changes} change(s), {info.entries} "
         f"entries, {info.copied} copied, {info.entries - info.copied} shared")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session, reading=True)
    snaps = list_snapshots(session)
    if args.json:
        print(json.dumps([_snapshot_json(s) for s in snaps]))
    elif not args.quiet:
        sys.stdout.write(describe_snapshots(snaps) or "no snapshots\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    with Progress("rollback", args.quiet):
        snap = rollback(session, args.snapshot, mount=DaemonLink(session))
    if args.json:
        print(json.dumps({"rolled_back_to": _snapshot_json(snap)}))
    _say(args, f"rolled back session {session.name} to snapshot {snap.number} "
         f"(`astrid-fs undo {session.name}` goes back)")
    return 0


def _outcomes(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    """Print what became of each conflict; exit 3 while any is left."""
    left = [o for o in outcomes if o.result in ("markers", "kept")]
    if args.json:
        print(json.dumps({"resolved": [{"path": o.path, "result": o.result, "why": o.why}
                                       for o in outcomes]}))
    elif not args.quiet:
        for o in outcomes:
            print(f"{o.result:<8} {o.path}" + (f": {o.why}" if o.why else ""))
    return ConflictError.exit_code if left else 0


def cmd_resolve(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    return _outcomes(args, resolve(session, args.paths, args.side, DaemonLink(session)))


def cmd_update(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    with Progress("update", args.quiet):
        outcomes = update(session, args.paths, DaemonLink(session))
    if not outcomes:
        if args.json:
            print(json.dumps({"resolved": []}))
        _say(args, f"session {session.name} is up to date with {session.lower}")
        return 0
    return _outcomes(args, outcomes)


def cmd_undo(args: argparse.Namespace) -> int:
    session = open_and_recover(args.session)
    snap = undo(session, DaemonLink(session))
    if args.json:
        print(json.dumps({"undone_to": _snapshot_json(snap)}))
    _say(args, f"undid: session {session.name} is back at snapshot {snap.number} "
         f"({snap.reason}); undo again to redo")
    if snap.reason.startswith("before commit --force"):
        _say(args, "the project's overwritten versions are back in the session as changes: "
             f"`astrid-fs commit {session.name}` restores them")
    return 0
