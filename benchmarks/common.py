"""What every benchmark shares: its options, result tables, and side-by-side timing.

Machines here are noisy (other jobs share the two cores), so a comparison is timed by
interleaving its candidates round by round (A B, B A, A B, ...) and reported as the median of the
per-round ratios, next to the median times.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_ROUNDS = 3
"""Fewest timed rounds of a comparison, whatever its time budget."""


@dataclass(frozen=True)
class Options:
    """How to run the benchmarks."""

    quick: bool
    """Tiny sizes, one or two repetitions: checks that everything runs, judges nothing."""
    work: Path
    """Scratch folder for models, runs and sites."""
    reps: int
    """Timed rounds per comparison."""
    threads: int | None
    """torch intra-op threads (here and in `reportgen build` subprocesses); None: torch's
    default, one per core. Quick mode uses 1: on a shared 2-core machine, two threads wait on
    each other at every small op while other jobs hold a core."""
    index_run: Path | None = None
    """Benchmark 10's run folder (a real run); None: a synthetic one of its size."""
    long_run: Path | None = None
    """A computed run whose long inputs' pages benchmark 9 measures too (None: synthetic only)."""

    def log(self, message: str) -> None:
        """Progress on stderr (the tables go to stdout)."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Table:
    """One benchmark's results: a title, columns, rows of cells, and notes under the table."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, notes as a list below it."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    budget: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate over `rounds` rounds, the order alternating each
    round so that neither always runs first; `warmup` untimed calls each before. With a
    `budget` (seconds), stop after the round that exceeds it, but not before MIN_ROUNDS."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
        spent = time.perf_counter() - began
        if budget is not None and r + 1 >= MIN_ROUNDS and spent > budget:
            break
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator / denominator (both timed in the same round)."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def ms(seconds: float) -> str:
    """Seconds as milliseconds, 3 significant digits."""
    return f"{seconds * 1000:.3g}"


def verdict(value: float, limit: float, at_most: bool, quick: bool) -> str:
    """`met` / `MISSED` against a target (`-` in quick mode, where nothing is judged)."""
    if quick:
        return "-"
    ok = value <= limit if at_most else value >= limit
    return "met" if ok else "MISSED"


def in_fresh_process(module: str, case: Mapping[str, Any], timeout: float) -> dict[str, Any] | str:
    """Run `python -m MODULE CASE` (the module's worker, which prints its result as JSON on its
    last line) offline, from the repository root, in a process of its own, so that a peak
    resident memory is the case's alone. The result, or "failed: <its last error line>"."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", module, json.dumps(case, default=str)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=timeout,
    )
    if done.returncode != 0:
        lines = (done.stderr.strip() or "failed").splitlines()
        return f"failed: {lines[-1][:120]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
