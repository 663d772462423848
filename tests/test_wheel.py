"""The wheel carries the templates and the demo model, and a report builds from it alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e

# Run in the new environment: where reportgen and one of its dependencies come from.
WHERE = """
import json, sys, sysconfig
import reportgen, typer
print(json.dumps({
    "reportgen": reportgen.__file__,
    "typer": typer.__file__,
    "site_packages": sysconfig.get_paths()["purelib"],
    "prefix": sys.prefix,
}))
"""


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


def wheel_venv(env: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel, which sees the running interpreter's dependencies.

    Not `system_site_packages`: that would inherit the *base* interpreter's packages, which on
    a clean machine (CI's) hold none of reportgen's. Instead a .pth file adds this interpreter's
    site-packages after the venv's own. Only directories are added (.pth files inside them are
    not processed), so the source tree's editable install stays out of it."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "_running_interpreter.pth").write_text("\n".join(ours) + "\n", "utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    return python


def test_installed_wheel_builds_a_report_with_the_demo_model(wheel, tmp_path):
    env = tmp_path / "venv"
    python = wheel_venv(env, wheel)
    assert "include-system-site-packages = false" in (env / "pyvenv.cfg").read_text()

    # Nothing but the venv decides what is imported (not a PYTHONPATH pointing at a source tree).
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    found = json.loads(
        subprocess.run(
            [python, "-c", WHERE],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            env=clean,
        ).stdout
    )
    package = Path(found["reportgen"]).parent
    assert package == Path(found["site_packages"]) / "reportgen", found
    assert Path(found["prefix"]) == env, found
    assert (package / "templates" / "base.html").is_file()
    assert (package / "demo_model" / "model.safetensors").is_file()
    running = Path(sysconfig.get_paths()["purelib"])
    assert Path(found["typer"]).is_relative_to(running), "dependencies come from this interpreter"

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
    # The command as installed by the wheel (its console script), from a neutral folder.
    subprocess.run(
        [env / "bin" / "reportgen", "build", str(inputs), "--out", str(tmp_path / "site"), "-q"],
        check=True,
        cwd=tmp_path,
        env=clean,
    )
    assert (tmp_path / "site" / "examples" / "0001-1.html").is_file()
    about = (tmp_path / "site" / "about.html").read_text("utf-8")
    assert "reportgen/demo_model" in about, "the wheel's own demo model"
