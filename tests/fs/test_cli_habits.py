"""Issue 10 item 8: the habits a git user brings. Options after paths, paths
from the current directory inside a mount, --quiet, --version, `rm`, --json on
every verb, documented exit codes, a refused non-empty mount point or empty
session name, and patches that `git apply` reads."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid_fs.cli.main import _subparsers, build_parser
from tests.support.mounts import ASTRID_FS, MountedSession, run_cli

Mount = Callable[..., MountedSession]


def _project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hi')\n")
    (root / "README.md").write_text("readme\n")
    (root / "gone.txt").write_text("bye\n")
    return root


def test_options_after_paths_and_double_dash(tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    (s.mnt / "README.md").write_text("new readme\n")
    done = s.cli("commit", s.name, "README.md", "--dry-run")
    assert "dry run: 1 change(s)" in done.stdout
    assert s.cli("commit", "--dry-run", s.name, "README.md").stdout == done.stdout
    s.cli("commit", "--", s.name, "README.md")  # the kernel's form: all positional
    assert (s.lower / "README.md").read_text() == "new readme\n"


def test_paths_from_the_current_directory_inside_the_mount(
        tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    (s.mnt / "src" / "app.py").write_text("print('bye')\n")
    (s.mnt / "README.md").write_text("changed\n")
    env = {**os.environ, "ASTRID_HOME": str(s.home)}
    done = subprocess.run([*ASTRID_FS, "commit", s.name, "app.py"], cwd=s.mnt / "src",
                          env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (s.lower / "src" / "app.py").read_text() == "print('bye')\n"
    assert (s.lower / "README.md").read_text() == "readme\n"
    up = subprocess.run([*ASTRID_FS, "diff", s.name, "../README.md"], cwd=s.mnt / "src",
                        env=env, capture_output=True, text=True, check=False, timeout=120)
    assert up.stdout == "M  README.md\n"


def test_quiet_version_json_everywhere(tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    version = run_cli("--version", home=s.home)
    assert version.stdout.startswith("astrid-fs ")
    (s.mnt / "new.txt").write_text("new\n")
    assert s.cli("snapshot", s.name, "-q").stdout == ""
    assert s.cli("-q", "commit", s.name, "new.txt").stdout == ""
    (s.mnt / "README.md").write_text("x\n")
    for argv in (["snapshot", s.name, "--name", "j"], ["log", s.name], ["diff", s.name],
                 ["status"], ["discard", s.name, "README.md"], ["undo", s.name],
                 ["rollback", s.name, "j"], ["commit", s.name, "--dry-run"], ["drivers"]):
        out = s.cli(*argv, "--json").stdout
        json.loads(out)  # one JSON document, nothing else
    for verb in _subparsers(build_parser()):
        help_text = run_cli(verb, "--help", home=s.home).stdout
        assert "--json" in help_text and "--quiet" in help_text, verb


def test_exit_codes_are_documented_and_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert "exit codes:" in run_cli("--help", home=home).stdout
    for argv in (["diff", "nope"], ["commit", "nope"], ["log", "nope"], ["rm", "nope"],
                 ["commit", "--no-such-option", "x"]):
        assert run_cli(*argv, home=home, check=False).returncode == 2, argv


def test_mount_refuses_a_non_empty_mount_point_and_an_empty_name(tmp_path: Path) -> None:
    home, lower, mnt = tmp_path / "home", _project(tmp_path / "project"), tmp_path / "mnt"
    home.mkdir()
    mnt.mkdir()
    (mnt / "precious.txt").write_text("mine\n")
    done = run_cli("mount", "--lower", str(lower), str(mnt), home=home, check=False)
    assert done.returncode == 2 and "not empty" in done.stderr
    (mnt / "precious.txt").unlink()
    done = run_cli("mount", "--lower", str(lower), "--session", "", str(mnt), home=home,
                   check=False)
    assert done.returncode == 2 and "invalid session name" in done.stderr
    assert not os.listdir(home / "sessions") if (home / "sessions").exists() else True


def test_rm_deletes_a_session(tmp_path: Path, mount_session: Mount) -> None:
    s = mount_session(_project(tmp_path / "project"))
    (s.mnt / "new.txt").write_text("new\n")
    refused = s.cli("rm", s.name, check=False)
    assert refused.returncode == 1 and "umount" in refused.stderr
    s.umount()
    refused = s.cli("rm", s.name, check=False)
    assert refused.returncode == 1 and "1 uncommitted change(s)" in refused.stderr
    assert s.cli("rm", s.name, "--force", "--json").stdout.strip() == json.dumps(
        {"removed": [s.name]})
    assert not s.root.exists()
    assert json.loads(s.cli("status", "--json").stdout)["sessions"] == []


def test_patches_apply_with_git(tmp_path: Path, mount_session: Mount) -> None:
    project = _project(tmp_path / "project")
    s = mount_session(project)
    (s.mnt / "src" / "app.py").write_text("print('hi')\nprint('more')\n")
    (s.mnt / "added.txt").write_text("added\n")
    (s.mnt / "gone.txt").unlink()
    os.rename(s.mnt / "README.md", s.mnt / "README.txt")
    patch = s.cli("diff", s.name, "--patch").stdout
    assert patch.startswith("diff --git ")
    clone = tmp_path / "clone"
    subprocess.run(["cp", "-a", str(project), str(clone)], check=True)
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    applied = subprocess.run(["git", "apply", "-"], cwd=clone, input=patch, text=True,
                             capture_output=True, check=False)
    assert applied.returncode == 0, applied.stderr
    for path in ("src/app.py", "added.txt", "README.txt"):
        assert (clone / path).read_text() == (s.mnt / path).read_text()
    assert not (clone / "gone.txt").exists() and not (clone / "README.md").exists()


@pytest.mark.parametrize("argv", [["commit", "S", "--dry-run", "a", "b"],
                                  ["commit", "--", "S", "-weird-name"]])
def test_intermixed_parse(argv: list[str]) -> None:
    from astrid_fs.cli.main import parse

    args = parse(build_parser(), argv)
    assert args.session == "S" and args.paths in (["a", "b"], ["-weird-name"])


def test_progress_bar_on_a_terminal_only(tmp_path: Path, mount_session: Mount) -> None:
    import pty

    s = mount_session(_project(tmp_path / "project"))
    for i in range(30):
        (s.mnt / f"n{i}.txt").write_text(f"{i}\n")
    # (a real terminal type: under the TERM=dumb some CIs set, no bar is drawn)
    env = {**os.environ, "ASTRID_HOME": str(s.home), "ASTRID_FS_PROGRESS_DELAY": "0",
           "COLUMNS": "100", "TERM": "xterm-256color"}
    main, sub = pty.openpty()
    proc = subprocess.Popen([*ASTRID_FS, "commit", s.name], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=sub, env=env, cwd="/")
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0
    assert b"commit" in seen and b"/" in seen, seen[-400:]  # the bar: "commit ... 12/48"
    off_tty = s.cli("commit", s.name)  # nothing left; and never a bar off a terminal
    assert "\x1b[" not in off_tty.stderr


def _closed_reader_run(s: MountedSession, *argv: str) -> subprocess.CompletedProcess[str]:
    """`astrid-fs ARGV | true`, the reader already gone: every write to
    stdout meets EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([*ASTRID_FS, *argv], stdout=w, stderr=subprocess.PIPE,
                              env={**os.environ, "ASTRID_HOME": str(s.home)}, text=True,
                              check=False, timeout=120)
    finally:
        os.close(w)


def test_a_reader_that_goes_away_cuts_no_verb_short(
        tmp_path: Path, mount_session: Mount) -> None:
    """`astrid-fs diff | head` and `astrid-fs commit | head -1`: once the
    reader is gone, no traceback (neither from a print nor from the flush at
    exit) and the verb still does its work, with its own exit code."""
    s = mount_session(_project(tmp_path / "project"))
    for i in range(2000):  # a diff bigger than a pipe holds
        (s.mnt / "src" / f"new{i}.py").write_text(f"x = {i}\n")
    (s.mnt / "README.md").write_text("changed\n")
    for argv in (("diff", s.name), ("diff", s.name, "--json"), ("status",)):
        done = _closed_reader_run(s, *argv)
        assert (done.returncode, done.stderr) == (0, ""), argv
    done = _closed_reader_run(s, "commit", s.name, "README.md")
    assert (done.returncode, done.stderr) == (0, "")
    assert (s.lower / "README.md").read_text() == "changed\n"


def test_a_missing_argument_names_only_what_is_required() -> None:
    """`astrid-fs diff` without a session said "the following arguments are
    required: session, PATH" (argparse counts a `*` positional without a
    default as required in that message), though PATH may be left out."""
    for verb, sub in _subparsers(build_parser()).items():
        optional = [a.metavar or a.dest for a in sub._actions
                    if not a.option_strings and a.nargs in ("*", "?")]
        if not optional:
            continue
        done = subprocess.run([*ASTRID_FS, verb], capture_output=True, text=True, check=False)
        assert done.returncode == 2, (verb, done.stderr)
        required = done.stderr.strip().splitlines()[-1].partition("required: ")[2]
        for name in optional:
            assert name not in required.split(", "), (verb, done.stderr)
