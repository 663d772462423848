"""The README's commands and Python API example run as written (in a scratch folder)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import README, demo_command, readme_commands, scratch_folder


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), flags=re.S)


@pytest.mark.cli
def test_readme_commands_run(readme_outputs: Path) -> None:
    """`readme_outputs` ran every command (and fails naming the one that did not succeed); here,
    that they are the ones the README promises and wrote what it says."""
    commands = readme_commands()
    assert {"build", "compute", "figure"} <= {shlex.split(c)[1] for c in commands}, commands
    assert "--single-file site/report.html" in demo_command()
    assert (readme_outputs / "site" / "index.html").is_file()
    assert (readme_outputs / "site" / "report.html").is_file()
    assert (readme_outputs / "runs" / "demo" / "manifest.json").is_file()
    assert (readme_outputs / "docs" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [example] = [b for b in _python_blocks() if b.startswith("import reportgen\n")]
    scratch = scratch_folder(tmp_path)
    monkeypatch.chdir(scratch)
    exec(compile(example, "README.md", "exec"), {})
    assert (scratch / "report.html").is_file() and (scratch / "site-again" / "index.html").is_file()
