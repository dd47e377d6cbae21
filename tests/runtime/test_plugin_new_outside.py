"""`astrid plugin new --lang python|c|js`, then the hint it prints, outside the repository.

"Outside" means: the package as pip installs it (its modules and package data,
laid out by setuptools' own `build_py` from a copy of the sources, so a file
missing from `package-data` is missing here too), first on `PYTHONPATH`, run
from a directory that is not a checkout, with the toolchains an installed
`astrid[plugins]` brings (this venv's). The C template builds and installs
for real (seconds); the Python and JavaScript templates resolve every build
input there (the installed SDK and WIT, componentize-js installed beside the
plugin as npm would); their full builds (minutes) run with ASTRID_SLOW=1.
Nothing here may rewrite the repository's own plugins.lock.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from astrid_runtime.lockfile import load_lockfile
from astrid_runtime.scaffold import scaffold_plugin
from astrid_runtime.scaffold.build import JS_TOOL_DIR, build_inputs, build_plugin
from tests.support.mounts import missing_part

ROOT = Path(__file__).resolve().parents[2]
JS_MODULES = JS_TOOL_DIR / "node_modules"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the package as installed (what a wheel would hold)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    for package in ("astrid_runtime", "astrid_fs"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "build"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                    "build_py", "--build-lib", str(site)], cwd=src, check=True,
                   capture_output=True, timeout=120)
    return site


def outside_env(site: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASTRID_COMPONENTIZE_JS", "ASTRID_LOCKFILE", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(site)
    env["ASTRID_HOME"] = str(home)
    # `astrid` and the toolchains of this venv; no componentize-js on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=600)


def run_answering(argv: list[str], cwd: Path, env: dict[str, str], answer: str
                  ) -> subprocess.CompletedProcess[str]:
    """`argv` with a terminal on stdin that types `answer` (a person at the prompt)."""
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode() + b"\n")
        return subprocess.run(argv, cwd=cwd, env=env, stdin=terminal, capture_output=True,
                              text=True, check=False, timeout=600)
    finally:
        os.close(terminal)
        os.close(controller)


def scaffold_outside(site: Path, work: Path, lang: str, name: str
                     ) -> tuple[dict[str, str], list[list[str]]]:
    """`astrid plugin new --lang LANG NAME` in `work`; (env, the hint's commands)."""
    work.mkdir(parents=True, exist_ok=True)
    env = outside_env(site, work / "home")
    where = run([sys.executable, "-c", "import astrid_runtime; print(astrid_runtime.__file__)"],
                work, env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    made = run(["astrid", "plugin", "new", "--lang", lang, name], work, env)
    assert made.returncode == 0, made.stderr
    first = made.stdout.splitlines()[0]
    commands = [shlex.split(part) for part in first.split("`")[1::2]]
    assert commands == [["astrid", "plugin", "build", name],
                        ["astrid", "plugin", "install", name]]
    return env, commands


def test_c_template_builds_and_installs_outside_the_repository(
        installed: Path, tmp_path: Path) -> None:
    lock_before = (ROOT / "plugins.lock").read_bytes()
    work = tmp_path / "elsewhere"
    env, (build, install) = scaffold_outside(installed, work, "c", "greeter")
    built = run(build, work, env)
    assert built.returncode == 0, built.stderr
    component = work / "greeter" / "greeter.wasm"
    # The installed SDK was compiled in, and it is the checkout's, byte for byte.
    assert "file sdk/c/astrid.c " in (work / "greeter" / "greeter.inputs").read_text()
    # The template asks for `greeter.>`: a person grants the wildcard at the prompt.
    pinned = run_answering(install, work, env, "y")
    assert pinned.returncode == 0, pinned.stderr
    assert "grant the wildcards subscribe greeter.>? [y/N]" in pinned.stdout
    entry = load_lockfile(work / "plugins.lock").get("greeter")
    assert entry is not None and entry.component == component.resolve()
    assert (ROOT / "plugins.lock").read_bytes() == lock_before
    # C builds reproducibly: the same template built in the checkout is the same component.
    here = build_plugin(scaffold_plugin("greeter", tmp_path / "checkout", "c"))
    assert here.component.read_bytes() == component.read_bytes()


def js_beside(work: Path) -> None:
    """componentize-js installed beside the plugin (`npm install --prefix WORK ...`)."""
    if not (JS_MODULES / ".bin" / "componentize-js").exists():
        missing_part("componentize-js (scripts/setup.d/45-js.sh)")
    (work / "node_modules").symlink_to(JS_MODULES)


@pytest.mark.parametrize("lang", ["python", "js"])
def test_python_and_js_templates_find_every_input_outside_the_repository(
        installed: Path, tmp_path: Path, lang: str) -> None:
    """The installed package carries the SDK and WIT the build needs, and finds the
    toolchain: the recorded inputs equal a build's in the checkout."""
    work = tmp_path / "elsewhere"
    env, _ = scaffold_outside(installed, work, lang, "greeter")
    if lang == "js":
        js_beside(work)
    script = ("import sys; from pathlib import Path; "
              "from astrid_runtime.scaffold.build import build_inputs; "
              "sys.stdout.write(build_inputs(Path('greeter')))")
    outside = run([sys.executable, "-c", script], work, env)
    assert outside.returncode == 0, outside.stderr
    here = build_inputs(scaffold_plugin("greeter", tmp_path / "checkout", lang))
    assert outside.stdout == here
    assert ("file sdk/astrid_sdk/plugin.py " if lang == "python"
            else "tool componentize-js==0.23.0") in here


def test_js_build_without_componentize_js_says_how_to_get_it(
        installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    env, (build, _) = scaffold_outside(installed, work, "js", "greeter")
    failed = run(build, work, env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1
    assert "componentize-js not found; install it beside the plugin with `npm install " \
           "--prefix" in failed.stderr
    assert not (work / "greeter" / "greeter.wasm").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ASTRID_SLOW") != "1",
                    reason="minutes of componentize-py/-js: ASTRID_SLOW=1 runs it")
@pytest.mark.parametrize("lang", ["python", "js"])
def test_python_and_js_templates_build_outside_the_repository(
        installed: Path, tmp_path: Path, lang: str) -> None:
    lock_before = (ROOT / "plugins.lock").read_bytes()
    work = tmp_path / "elsewhere"
    env, (build, _) = scaffold_outside(installed, work, lang, "greeter")
    if lang == "js":
        js_beside(work)
    built = run(build, work, env)
    assert built.returncode == 0, built.stderr
    assert (work / "greeter" / "greeter.wasm").stat().st_size > 1_000_000
    assert (ROOT / "plugins.lock").read_bytes() == lock_before
