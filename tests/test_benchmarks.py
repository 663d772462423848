"""`python -m benchmarks --quick` (what CI runs) still runs every benchmark and writes nothing.

No timings are asserted: the quick mode only proves that each benchmark runs end to end (with
its equality check of attattr against the reference loop) and prints its table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("### 1. Compute", "### 2. Integrated gradients", "### 3. Browser", "### 4. Build")
TABLES += ("### 5a. Scale", "### 5b. Scale", "### 5c. Scale", "### 5d. Scale", "### 6. CSP")
TABLES += ("### 7. Scale-out",)


@pytest.mark.browser  # the one tier: it also computes, but needs Chromium
@pytest.mark.timeout(1800)  # every benchmark end to end: minutes, more on a loaded machine
def test_quick_mode_runs_every_benchmark_and_writes_nothing() -> None:
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for title in TABLES:
        assert title in done.stdout, f"no table '{title}' in:\n{done.stdout}"
    assert "MISSED" not in done.stdout, "quick mode judges no target"
    assert "| Ray: 2 actors × 1 thread |" in done.stdout
    assert "yes, byte for byte but the command" in done.stdout, "the Ray run equals the single"
    after = results.read_bytes() if results.exists() else None
    assert after == before, "--quick must not write RESULTS.md"
