"""The wheel carries the templates and the demo model, and a report builds from it alone."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
    )
    [built] = out.glob("reportgen-*.whl")
    return built


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "reportgen/templates/base.html",
        "reportgen/templates/assets/reportgen.js",
        "reportgen/demo_model/config.json",
        "reportgen/demo_model/model.safetensors",
        "reportgen/demo_model/README.md",
        "reportgen/cli.py",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "benchmarks/", "site/")) for n in names)


def test_installed_wheel_builds_a_report_with_the_demo_model(wheel, tmp_path):
    """A fresh venv (reusing this interpreter's dependencies) with only the wheel installed."""
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
    python = env / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps(
            {
                "segments": [
                    {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
                    {"name": "LAN", "text": "<CHI> my favorite animal is the"},
                ],
                "target": "horse",
            }
        )
        + "\n"
    )
    code = (
        "import reportgen, sys; from reportgen.cli import main;"
        "assert 'site-packages' in reportgen.__file__, reportgen.__file__; main()"
    )
    subprocess.run(
        [python, "-c", code, "build", str(inputs), "--out", str(tmp_path / "site"), "-q"],
        check=True,
        cwd=tmp_path,
    )
    assert (tmp_path / "site" / "examples" / "0001-1.html").is_file()
