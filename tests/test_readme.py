"""The README's commands and Python API example run as written (in a scratch folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text("utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _reportgen_commands() -> list[str]:
    """Every `reportgen ...` shell command of the README, continuation lines joined."""
    commands = []
    for block in _blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.startswith("reportgen "):
                commands.append(command.split("  #")[0].strip())
    return commands


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A working folder where `examples/` is the project's, and outputs land in tmp."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "docs").mkdir()
    return tmp_path


def test_readme_commands_run(scratch):
    commands = _reportgen_commands()
    assert len(commands) >= 3 and any(c.startswith("reportgen figure") for c in commands)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in dict.fromkeys(commands):
        done = subprocess.run(
            ["bash", "-c", command], cwd=scratch, capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert (scratch / "site" / "index.html").is_file()
    assert (scratch / "site" / "report.html").is_file()
    assert (scratch / "docs" / "figure.png").is_file()


def test_readme_python_example_runs(scratch, monkeypatch):
    [example] = [b for b in _blocks("python") if b.startswith("import reportgen\n")]
    monkeypatch.chdir(scratch)
    exec(compile(example, "README.md", "exec"), {})
    assert (scratch / "report.html").is_file() and (scratch / "site-again" / "index.html").is_file()
