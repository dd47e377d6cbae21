"""The bench scripts' own logic (scripts/bench/): what they change on the
machine is put back, and what they write into the docs replaces only their
own section. The timings themselves are never asserted (shared, noisy
machines): the benches are run by hand."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"


def bench_module(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def buddy_orders() -> int:
    with open("/proc/buddyinfo") as f:
        return max(len(line.split()) - 4 for line in f)


@pytest.fixture
def reporting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """bench_host's page reporting switch pointed at a file of ours."""
    knob = tmp_path / "page_reporting_order"
    knob.write_text("9\n")
    monkeypatch.setattr(bench_module("bench_host"), "PAGE_REPORTING", knob)
    return knob


def test_page_reporting_is_off_during_the_run_and_put_back(reporting: Path) -> None:
    host = bench_module("bench_host")
    with host.free_page_reporting_off(warm=1 << 20) as said:
        # above the largest order the buddy allocator has: nothing is reported
        assert int(reporting.read_text()) > buddy_orders() - 1
        assert "off during the run (order 9 after)" in said
    assert reporting.read_text() == "9\n"


def test_page_reporting_is_put_back_when_the_run_fails(reporting: Path) -> None:
    host = bench_module("bench_host")
    with pytest.raises(KeyboardInterrupt), host.free_page_reporting_off(warm=0):
        assert reporting.read_text() != "9\n"
        raise KeyboardInterrupt
    assert reporting.read_text() == "9\n"


def test_page_reporting_kept_when_asked(reporting: Path) -> None:
    host = bench_module("bench_host")
    with host.steady_host(keep=True) as said:
        assert reporting.read_text() == "9\n"
        assert said.startswith("host: free page reporting to the host on (order 9, as asked)")
        assert "idle CPUs: cpuidle driver" in said
    assert reporting.read_text() == "9\n"


def test_no_page_reporting_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = bench_module("bench_host")
    monkeypatch.setattr(host, "PAGE_REPORTING", tmp_path / "absent")
    with host.free_page_reporting_off() as said:
        assert said == "no free page reporting to the host"


@pytest.mark.parametrize("script", ["fs", "kernel", "kv", "s3", "review", "nats_bridge",
                                    "page_cache"])
def test_every_bench_can_leave_page_reporting_alone(script: str) -> None:
    out = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "--keep-page-reporting" in out.stdout


def test_write_section_replaces_its_own_section_only(tmp_path: Path) -> None:
    report = bench_module("fs_report")
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## S3\n\ns3 numbers\n\n"
                   f"{report.SECTION}\n\nold table\n\n### a dated run\n\nold run\n\n"
                   "## Kernel\n\nkernel numbers\n")
    report.write_section(doc, f"{report.SECTION}\n\nnew table\n")
    text = doc.read_text()
    assert "old table" not in text and "old run" not in text
    assert text.index("s3 numbers") < text.index("new table") < text.index("kernel numbers")
    assert text.startswith("# Benchmarks\n\nintro\n\n## S3\n")
    assert text.endswith("## Kernel\n\nkernel numbers\n")
    assert not list(tmp_path.glob("*.tmp"))


def test_write_section_adds_itself_and_starts_a_new_page(tmp_path: Path) -> None:
    report = bench_module("fs_report")
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\n## S3\n\ns3 numbers\n")
    report.write_section(doc, f"{report.SECTION}\n\nnew table\n")
    assert doc.read_text() == ("# Benchmarks\n\n## S3\n\ns3 numbers\n\n"
                               f"{report.SECTION}\n\nnew table\n")
    page = tmp_path / "latest.md"
    report.write_section(page, f"{report.SECTION}\n\nt\n", header="# Latest\n")
    assert page.read_text() == f"# Latest\n\n{report.SECTION}\n\nt\n"


def test_copy_align_measures_each_offset_and_leaves_no_output_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy_align = bench_module("copy_align")
    assert copy_align.main(["--mib", "2", "--runs", "1", "--base", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms" in line]
    assert [row.split("|")[1].strip() for row in rows] == [str(o) for o in copy_align.OFFSETS]
    assert (tmp_path / "data").stat().st_size == 2 << 20
    for where in (Path("/dev/shm"), tmp_path):
        assert not (where / f"astrid-copy-align-{os.getpid()}").exists()


def test_copy_align_refuses_a_size_of_nothing(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "copy_align.py"), "--mib", "0",
                           "--base", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "copy_align: --mib and --runs must be at least 1"
    assert not (tmp_path / "data").exists()
