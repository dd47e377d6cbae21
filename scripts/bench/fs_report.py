"""scripts/bench/fs.py, part 4: the table, the targets of issue 11 and the
docs/benchmarks.md section."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from fs_dataset import Sizes, fs_type
from fs_legs import ASTRID_LEGS, LEG_PATH, LEG_TITLE, LEGS, VARIANT_ENV
from fs_workloads import WORKLOADS

TIMES = "\u00d7"  # multiplication sign
LE = "\u2264"
SECTION = "## astrid-fs mount"
# The goals of issue 11, as ratio to native: ("abs", x) means at most x;
# ("below", leg) means below that leg's ratio in the same run ("at-most", leg: not above).
TARGETS: dict[str, tuple[str, float | str]] = {
    "read cold": ("abs", 1.2),
    "read warm": ("abs", 1.1),
    "write": ("abs", 1.5),
    "append upper": ("abs", 2.0),
    "copy-up": ("at-most", "kernel"),
    "git status first": ("abs", 2.0),
    "grep cold": ("below", "fuse-overlayfs"),
    "read parallel cold": ("below", "fuse-overlayfs"),
    "find cold": ("below", "fuse-overlayfs"),
    "stat cold": ("below", "fuse-overlayfs"),
    "find warm": ("abs", 1.2),
    "stat warm": ("abs", 1.2),
    "grep warm": ("abs", 1.2),
    "git status warm": ("abs", 1.2),
}


def fmt_time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}{TIMES}" if r < 10 else f"{r:.0f}{TIMES}"


def target_text(w: str) -> str:
    if w not in TARGETS:
        return ""
    kind, val = TARGETS[w]
    if kind == "abs":
        return f"{LE} {val}{TIMES}"
    word = "below" if kind == "below" else LE
    return f"{word} {LEG_TITLE[str(val)]}'s ratio"


def verdict(w: str, medians: dict[str, dict[str, float]], leg: str = "astrid-fs") -> str:
    native = medians.get("native", {}).get(w)
    if w not in TARGETS or w not in medians.get(leg, {}) or not native:
        return ""
    kind, val = TARGETS[w]
    ratio = medians[leg][w] / native
    if kind == "abs":
        return "met" if ratio <= float(val) else "missed"
    other = medians.get(str(val), {}).get(w)
    if other is None:
        return "?"
    bar = other / native
    return "met" if (ratio < bar if kind == "below" else ratio <= bar) else "missed"


def table(medians: dict[str, dict[str, float]], unavailable: dict[str, str]) -> str:
    legs = [leg for leg in (*LEGS, *VARIANT_ENV) if leg in medians or leg in unavailable]
    checked = [leg for leg in ASTRID_LEGS if leg in medians]
    head = ["workload"] + [LEG_TITLE[leg] for leg in legs] + ["target (astrid-fs)"] + \
        [f"met? ({LEG_PATH[leg]})" for leg in checked]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    native = medians.get("native", {})
    for w in WORKLOADS:
        if not any(w in medians.get(leg, {}) for leg in legs):
            continue
        row = [w]
        for leg in legs:
            if leg in unavailable:
                row.append("n/a")
                continue
            v = medians.get(leg, {}).get(w)
            if v is None:
                row.append("-")
            elif leg == "native" or w not in native:
                row.append(fmt_time(v))
            else:
                row.append(f"{fmt_time(v)} ({fmt_ratio(v / native[w])})")
        row += [target_text(w)] + [verdict(w, medians, leg) for leg in checked]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(medians: dict[str, dict[str, float]], unavailable: dict[str, str],
             sizes: Sizes, mode: str, base: Path, when: str | None = None,
             load: str | None = None, idle: str | None = None, rounds: int = 1) -> str:
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rounds_note = (f" in each of {rounds} rounds, the legs interleaved (native, kernel "
                   "overlayfs, ..., native, ...)" if rounds > 1 else "")
    out = [
        SECTION,
        "",
        f"`scripts/bench/fs.py --{mode}` on {when}: {sizes.label}{rounds_note}; "
        "median of the runs, "
        f"ratio to native in brackets. Native is {fs_type(base)} under `{base}`; "
        f"kernel {platform.release()}, {os.cpu_count()} cores, a shared machine "
        "(trust ratios more than absolutes). Overlays mount the data set as their lower "
        "layer with a fresh upper; kernel overlayfs with `redirect_dir=on`. "
        "Cold = after `echo 3 > /proc/sys/vm/drop_caches`; git status first = on a "
        "fresh mount, after dropping caches."
        + (f" Load average during the run: {load}." if load else "")
        + (f" Idle CPUs and memory: {idle}." if idle else ""),
        "",
        table(medians, unavailable),
        "",
    ]
    for leg, why in unavailable.items():
        out.append(f"{LEG_TITLE[leg]}: not available ({why}).")
        out.append("")
    if "astrid-fs-pt" in medians:
        out.append("astrid-fs has two data paths: the daemon path (the default: every read "
                   "and write of a file goes through the daemon) and `--passthrough` (FUSE "
                   "passthrough, fuse/passthrough.py: the kernel reads and writes files in "
                   "the upper layer itself; files still in the lower layer are read through "
                   "the daemon, so that an open reader follows a later copy-up). So `read` "
                   "(a lower file) does not change with passthrough; `write`, `copy-up` and "
                   "`append upper` do. With passthrough every open is an OPEN and a RELEASE "
                   "round trip (answered in C from the shim's table, but still one turn of "
                   "the daemon's request loop each), where the daemon path runs in no_open "
                   "mode and sends none: open-heavy reads (grep, git status) pay for that.")
        if "astrid-fs-pt-uring" in medians:
            out[-1] += (" `--passthrough --io-uring` serves requests over io_uring as well: "
                        "the shim's queue thread on the caller's CPU answers those OPENs "
                        "and RELEASEs, so each costs a round trip on one CPU.")
        out.append("")
    out.append("Run it: `sudo .venv/bin/python scripts/bench/fs.py --full --write-md` "
               "(`--quick` for small sizes).")
    out.append("")
    return "\n".join(out)


def write_section(doc: Path, section: str, header: str | None = None) -> None:
    """Replace `section` (from its heading to the next `## `) in `doc`, or
    add it; a new `doc` starts with `header`."""
    if doc.exists():
        text = doc.read_text()
    else:
        text = header or ("# Benchmarks\n\nMeasured numbers for Astrid's parts; each section "
                          "says how to reproduce it.\n")
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + ("\n" if start else "") + section + \
            ("\n" + tail if tail else "")
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip("\n") + "\n")
    os.replace(tmp, doc)
