"""Benchmark 4: `reportgen build` at scale, on generated demo inputs.

Each build is the real command (`reportgen build INPUTS --metric flow:ENV->LAN --quiet`, the
README's example) in a fresh Python process, which reports its own peak resident memory
(`VmHWM`) when it exits; the wall time includes interpreter start and imports, as a user
sees it. Sizes alternate (small, large, small) so that drift in the machine's load shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import fixtures
from benchmarks.common import Options, Table, median, verdict

SECONDS_PER_1000 = 60.0
"""Target: 1,000 inputs built in at most this many seconds (2 cores)."""
MEMORY_GROWTH = 1.2
"""Target: peak memory at 10,000 inputs at most this times the peak at 1,000."""
RSS_MARK = "reportgen-benchmark peak_rss_kb="
WRAPPER = f"""
import sys
from reportgen.cli import app
try:
    app(prog_name="reportgen")
finally:
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so it would report
    # the benchmark runner's own peak.
    with open("/proc/self/status") as fh:
        kb = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    print("{RSS_MARK}" + kb, file=sys.stderr)
"""


def _inputs(folder: Path, n: int) -> Path:
    path = folder / f"inputs-{n}.jsonl"
    if not path.exists():
        rows = fixtures.demo_inputs(n, seed=n)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def build_once(inputs: Path, out: Path, model: Path, threads: int | None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one `reportgen build` in a fresh process."""
    args = [str(inputs), "--out", str(out), "--model", str(model)]
    args += ["--metric", "flow:ENV->LAN", "--quiet", "--force"]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, "build", *args],
        capture_output=True,
        text=True,
        cwd=fixtures.ROOT,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - start
    marks = [line for line in done.stderr.splitlines() if line.startswith(RSS_MARK)]
    if done.returncode != 0 or not marks:
        raise RuntimeError(
            f"reportgen build {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    return wall, int(marks[-1][len(RSS_MARK) :]) * 1024


def run(opts: Options) -> list[Table]:
    label, model = fixtures.demo_subject(opts.work, opts.quick)
    plan = [20] if opts.quick else [1000, 10_000, 1000, 1000]
    walls: dict[int, list[float]] = {}
    peaks: dict[int, list[int]] = {}
    for n in plan:
        opts.log(f"build: {n} inputs")
        wall, peak = build_once(_inputs(opts.work, n), opts.work / f"site-{n}", model, opts.threads)
        walls.setdefault(n, []).append(wall)
        peaks.setdefault(n, []).append(peak)
    table = Table(
        f"4. Build at scale: `reportgen build` on generated demo inputs ({label})",
        ["inputs", "wall (s)", "inputs/s", "peak RSS (MB)", "target", "met"],
    )
    small, large = min(walls), max(walls)
    for n in sorted(walls):
        wall, peak = median(walls[n]), max(peaks[n])
        target, met = "", ""
        if n == small:
            limit = SECONDS_PER_1000 * n / 1000
            target = f"≤ {limit:.0f} s"
            met = verdict(wall, limit, at_most=True, quick=opts.quick)
        if n == large and large != small:
            growth = peak / max(peaks[small])
            target = f"peak ≤ {MEMORY_GROWTH}× the peak at {small} (measured {growth:.2f}×)"
            met = verdict(growth, MEMORY_GROWTH, at_most=True, quick=opts.quick)
        table.add(n, f"{wall:.1f}", f"{n / wall:.1f}", f"{peak / 2**20:.0f}", target, met)
    runs = ", ".join(f"{n} ({len(walls[n])}×)" for n in sorted(walls))
    table.notes += [
        f"Builds in this order: {', '.join(map(str, plan))}; wall time is the median, peak RSS "
        f"the largest of a size's builds ({runs}).",
        "Command: `reportgen build inputs.jsonl --out SITE --model MODEL --metric "
        "flow:ENV->LAN --quiet --force` "
        "(defaults otherwise: attn-grad, batch 8, the ablation check with 8 random draws), in "
        "a fresh process each.",
    ]
    return [table]
