"""`astrid-fs`: verb-first CLI over sessions (mount, status, diff, commit, ...).

Each verb group lives in its own module with a `register(subparsers)`
function; this module wires them, gives every verb `--quiet` and `--json`,
parses options anywhere among the arguments (`commit S --dry-run README.md`,
as git does), turns `AstridFsError` into one line on stderr and its exit
code, and also accepts the argument form that mount.fuse3 uses
(`astrid-fs SOURCE MOUNTPOINT -o lowerdir=..,upperdir=..`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from astrid_fs import __version__
from astrid_fs.cli import drivers as drivers_cli
from astrid_fs.cli import mount as mount_cli
from astrid_fs.cli import review as review_cli
from astrid_fs.cli import sessions as sessions_cli
from astrid_fs.errors import AstridFsError

EPILOG = """examples:
  astrid-fs mount --lower ~/project --session fix-bug /tmp/view
  astrid-fs status --json
  astrid-fs diff fix-bug --stat
  astrid-fs commit fix-bug src/
  astrid-fs umount /tmp/view

exit codes:
  0  done
  1  failed (one line on stderr says why)
  2  bad usage: unknown option, session, path or snapshot
  3  conflicts: the project changed where the session did (see diff, resolve)
"""
EXIT_USAGE = 2
# What a shell reports for a program that SIGPIPE ended: a verb cut short
# because what read its output went away (see _Output).
EXIT_OUTPUT_GONE = 128 + 13


class _Output:
    """stdout for `astrid-fs diff | head`: once the reader of stdout is gone,
    what is left to print goes nowhere and the verb runs to its end (a commit
    is not cut short by its own output), with its own exit code and no
    traceback, here or at exit."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _reader_gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _reader_gone() -> None:
    """Point fd 1 at /dev/null: what stdout still holds (and the interpreter's
    flush at exit) then has somewhere to go."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    finally:
        os.close(null)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astrid-fs",
        description="Copy-on-write session views of a project, served over FUSE.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"astrid-fs {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing but errors (and --json output)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    mount_cli.register(sub)
    review_cli.register(sub)
    sessions_cli.register(sub)
    drivers_cli.register(sub)
    for verb in _subparsers(parser).values():
        _add_common(verb)
    return parser


def _add_common(verb: argparse.ArgumentParser) -> None:
    """Every verb takes --quiet and --json (whatever it already declares)."""
    known = {s for action in verb._actions for s in action.option_strings}
    if "--quiet" not in known:
        verb.add_argument("-q", "--quiet", action="store_true",
                          help="print nothing but errors (and --json output)")
    if "--json" not in known:
        verb.add_argument("--json", action="store_true", help="machine-readable output")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may come before, between or after positional arguments (the
    verb's own parser with `parse_intermixed_args`); after `--` everything
    is positional. Global options before the verb: --quiet, --version, -h."""
    verbs = _subparsers(parser)
    at = next((i for i, a in enumerate(argv) if a in verbs), None)
    if at is None or any(a not in ("-q", "--quiet") for a in argv[:at]):
        return parser.parse_args(argv)  # help, version, or a usage error
    verb = verbs[argv[at]]
    rest = argv[at + 1:]
    # (parse_intermixed_args takes `--` for one more positional: parse those plainly)
    args = verb.parse_args(rest) if "--" in rest else verb.parse_intermixed_args(rest)
    args.verb = argv[at]
    args.quiet = args.quiet or at > 0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    stdout = sys.stdout
    out = sys.stdout = _Output(stdout)
    try:
        return _run(args_list)
    finally:
        out.flush()  # here, not at exit: a reader gone by now is ours to hide
        sys.stdout = stdout


def _run(args_list: list[str]) -> int:
    try:
        parser = build_parser()
        if mount_cli.is_mount_helper_form(args_list, set(_subparsers(parser))):
            return mount_cli.run_mount_helper(args_list)
        args = parse(parser, args_list)
        result: int = args.func(args)
        return result
    except AstridFsError as e:
        print(f"astrid-fs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("astrid-fs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # written past _Output (a binary write): cut short
        _reader_gone()
        return EXIT_OUTPUT_GONE


if __name__ == "__main__":
    sys.exit(main())
