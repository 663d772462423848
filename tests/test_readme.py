"""The README's commands and Python API example run as written (in a scratch folder)."""

from __future__ import annotations

import json
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
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_python_example_then_its_mlflow_example_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python API block, then the MLflow block, verbatim and in one namespace (as a reader
    pastes them), with MLflow's local default setup the README describes (./mlflow.db)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    blocks = _python_blocks()
    [example] = [b for b in blocks if b.startswith("import reportgen\n")]
    [logging] = [b for b in blocks if b.startswith("import mlflow\n")]
    scratch = scratch_folder(tmp_path)
    monkeypatch.chdir(scratch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    mlflow.set_tracking_uri(None)  # the default of a fresh process (no URI set)
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (scratch / "report.html").is_file() and (scratch / "site-again" / "index.html").is_file()
    exec(compile(logging, "README.md", "exec"), namespace)
    assert (scratch / "mlflow.db").is_file(), "MLflow 3's local default, as the README says"
    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = client.download_artifacts(run.info.run_id, "reportgen", str(tmp_path / "dl"))
    html = (Path(logged) / "report.html").read_text("utf-8")
    assert html == (scratch / "report.html").read_text("utf-8")
    manifest = json.loads((Path(logged) / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["metric"] == "total"  # the build's run, as Settings(metric="total")
    assert [ln for ln in (Path(logged) / "run" / "entries.jsonl").read_text().splitlines() if ln]
