"""The machine and software the numbers came from, as a Markdown section of RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from benchmarks.fixtures import ROOT

CHROMIUM = "/usr/bin/chromium"
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "safetensors",
    "altair",
    "vl-convert-python",
    "jinja2",
    "playwright",
    # the peers of benchmark 8 (`pip install ".[bench]"`)
    "captum",
    "inseq",
    "bertviz",
    "circuitsvis",
)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(fh.readline().split()[1])
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _output(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return done.stdout.strip() if done.returncode == 0 else "unavailable"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(load_at_start: str, allocator: str) -> str:
    """Machine, load, and versions (reportgen's commit included) as Markdown."""
    import torch

    commit = _output("git", "rev-parse", "--short", "HEAD")
    dirty = _output("git", "status", "--porcelain", "--untracked-files=no")
    lines = [
        "## Machine and versions",
        "",
        f"- CPU: {_cpu()}, {os.cpu_count()} cores; torch threads: {torch.get_num_threads()}; "
        f"memory: {_memory()}; GPU: none used",
        f"- allocator: {allocator} (`reportgen.engine.keep_freed_memory`, as the command line "
        "sets it before computing)",
        f"- load average (1/5/15 min) at start: {load_at_start}; at end: {load()}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- reportgen {_version('reportgen')} at commit {commit}"
        + (" (with uncommitted changes)" if dirty not in ("", "unavailable") else ""),
        "- " + ", ".join(f"{name} {_version(name)}" for name in PACKAGES),
        f"- Chromium: {_output(CHROMIUM, '--version')}",
        "",
    ]
    return "\n".join(lines)
