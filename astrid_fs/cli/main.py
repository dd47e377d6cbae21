"""`astrid-fs`: verb-first CLI over sessions (mount, status, diff, commit, ...).

Each verb group lives in its own module with a `register(subparsers)`
function; this module wires them, turns `AstridFsError` into one line on
stderr and its exit code, and also accepts the argument form that
mount.fuse3 uses (`astrid-fs SOURCE MOUNTPOINT -o lowerdir=..,upperdir=..`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from astrid_fs.cli import drivers as drivers_cli
from astrid_fs.cli import mount as mount_cli
from astrid_fs.cli import review as review_cli
from astrid_fs.errors import AstridFsError

EPILOG = """examples:
  astrid-fs mount --lower ~/project --session fix-bug /tmp/view
  astrid-fs status --json
  astrid-fs diff fix-bug --stat
  astrid-fs commit fix-bug src/
  astrid-fs umount /tmp/view
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astrid-fs",
        description="Copy-on-write session views of a project, served over FUSE.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    mount_cli.register(sub)
    review_cli.register(sub)
    drivers_cli.register(sub)
    return parser


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if mount_cli.is_mount_helper_form(args_list, _verbs(parser)):
            return mount_cli.run_mount_helper(args_list)
        args = parser.parse_args(args_list)
        result: int = args.func(args)
        return result
    except AstridFsError as e:
        print(f"astrid-fs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("astrid-fs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
