"""`python -m benchmarks --quick` (what CI runs) still runs every benchmark and writes nothing.

No timings are asserted: the quick mode only proves that each benchmark runs end to end (with
its equality check of attattr against the reference loop) and prints its table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("### 1. Compute", "### 2. Integrated gradients", "### 3. Browser", "### 4. Build")
TABLES += ("### 5a. Scale", "### 5b. Scale", "### 5c. Scale", "### 5d. Scale", "### 6. CSP")
TABLES += ("### 7. Scale-out",)
TABLES += ("### 8a. Peers", "### 8b. Peers", "### 8c. Peers", "### 8d. Peers", "### 8e. Peers")
TABLES += ("### 9a. Long inputs in the browser", "### 9b. Long-input targets")
TABLES += ("### 10. Index",)
HALF = ["compute", "attattr", "browser", "build", "scale"]
"""The benchmarks one of the two processes runs (about half the time); the other runs the rest."""


@pytest.mark.browser  # the one tier: it also computes, but needs Chromium
@pytest.mark.timeout(1800)  # every benchmark end to end: minutes, more on a loaded machine
def test_quick_mode_runs_every_benchmark_and_writes_nothing() -> None:
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    # Two halves at once, one torch thread each (quick mode), as the two cores allow: about
    # 2.5 minutes instead of 5 (the benchmarks' own worker processes are most of the time).
    halves = [HALF, [n for n in BENCHMARKS if n not in HALF]]
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks", "--quick", "--only", *names],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for names in halves
    ]
    outputs = [proc.communicate(timeout=1700) for proc in running]
    for proc, (_, err) in zip(running, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    stdout = "".join(out for out, _ in outputs)
    for title in TABLES:
        assert title in stdout, f"no table '{title}' in:\n{stdout}"
    # The peers were compared with reportgen before they were timed (a mismatch fails the run):
    # the hand-written baseline and Captum (a test dependency) always, not skipped.
    peers = stdout[stdout.index("### 8a.") :]
    for peer in ("hand-written", "Captum GxA", "Captum IG"):
        assert re.search(rf"{peer} \d\.\de[-+]\d\d", peers), f"{peer} was not compared"
    assert "not installed" not in peers.split("### 8d.")[0], "captum is a test dependency"
    assert "MISSED" not in stdout, "quick mode judges no target"
    assert "| Ray: 2 actors × 1 thread |" in stdout
    assert "yes, byte for byte but the command" in stdout, "the Ray run equals the single"
    after = results.read_bytes() if results.exists() else None
    assert after == before, "--quick must not write RESULTS.md"


@pytest.mark.unit
def test_a_partial_run_keeps_the_other_benchmarks_tables_and_the_notes(tmp_path) -> None:
    from benchmarks.__main__ import NOTES_HEADING, _results
    from benchmarks.common import Table

    old = tmp_path / "RESULTS.md"
    old.write_text(
        "# reportgen benchmarks\n\nheader\n\n## Machine\n\nold machine\n\n"
        "### 1. Compute: old\n\n| a |\n|---|\n| 1 |\n\n"
        "### 8a. Peers: old\n\n| b |\n|---|\n| 2 |\n\n"
        f"{NOTES_HEADING}\n\nby hand\n",
        "utf-8",
    )
    table = Table("8a. Peers: new", ["b"])
    table.add(3)
    text = _results([table], "cmd", "now", "load", "malloc", old, {"compute"})
    assert "### 1. Compute: old" in text and "| 1 |" in text, "compute's table is kept"
    assert "### 8a. Peers: new" in text and "### 8a. Peers: old" not in text
    assert text.index("### 1. Compute") < text.index("### 8a. Peers")
    assert text.endswith(f"{NOTES_HEADING}\n\nby hand\n")
    assert "kept from the previous file" in text
    full = _results([table], "cmd", "now", "load", "malloc", old, set())
    assert "### 1. Compute" not in full and "kept from the previous" not in full
