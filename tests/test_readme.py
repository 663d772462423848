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


@pytest.fixture(scope="module")
def readme_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder where the Python API block, then the MLflow block, ran verbatim and in
    one namespace (as a reader pastes them), with MLflow's local default setup the README
    describes (./mlflow.db, no tracking URI set)."""
    import warnings

    import mlflow

    blocks = _python_blocks()
    [example] = [b for b in blocks if b.startswith("import reportgen\n")]
    [logging] = [b for b in blocks if b.startswith("import mlflow\n")]
    scratch = scratch_folder(tmp_path_factory.mktemp("readme-mlflow"))
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        for kind in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.simplefilter("ignore", kind)
        patch.chdir(scratch)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        mlflow.set_tracking_uri(None)  # the default of a fresh process (no URI set)
        namespace: dict[str, object] = {}
        exec(compile(example, "README.md", "exec"), namespace)
        exec(compile(logging, "README.md", "exec"), namespace)
        mlflow.set_tracking_uri(None)
    return scratch


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_python_example_then_its_mlflow_example_run(
    readme_mlflow: Path, tmp_path: Path
) -> None:
    """What the two blocks wrote: the report, a second site, and an MLflow run holding the
    single file and the run folder."""
    from mlflow.tracking import MlflowClient

    scratch = readme_mlflow
    assert (scratch / "report.html").is_file() and (scratch / "site-again" / "index.html").is_file()
    assert (scratch / "mlflow.db").is_file(), "MLflow 3's local default, as the README says"
    client = MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = client.download_artifacts(run.info.run_id, "reportgen", str(tmp_path / "dl"))
    html = (Path(logged) / "report.html").read_text("utf-8")
    assert html == (scratch / "report.html").read_text("utf-8")
    manifest = json.loads((Path(logged) / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["metric"] == "total"  # the build's run, as Settings(metric="total")
    assert [ln for ln in (Path(logged) / "run" / "entries.jsonl").read_text().splitlines() if ln]


@pytest.mark.browser
def test_the_logged_report_works_in_mlflows_own_ui(readme_mlflow: Path) -> None:
    """`mlflow server` on 127.0.0.1 over the README's ./mlflow.db, its UI in Chromium at the
    run's artifact: MLflow shows the report in an iframe with sandbox="allow-scripts"; there
    the report draws its grid, with no error and no request beyond MLflow's own server."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from browser import launch
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    scratch = readme_mlflow
    client = MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 300 s"
            time.sleep(1)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside: list[str] = []
            errors: list[str] = []
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((base, "blob:", "data:")) else outside.append(r.url)
                ),
            )
            page.on("pageerror", lambda e: errors.append(str(e)))
            artifact = "reportgen/report.html"
            page.goto(
                f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                f"/artifacts/{artifact}",
                timeout=240_000,
            )
            frame_element = page.wait_for_selector("iframe[sandbox]", timeout=240_000)
            assert frame_element.get_attribute("sandbox") == "allow-scripts"
            frame = frame_element.content_frame()
            assert frame is not None
            frame.wait_for_function(
                "() => window.reportgen && window.reportgen.view", timeout=120_000
            )
            title = frame.evaluate("() => document.title")
            assert (
                title
                == (scratch / "report.html")
                .read_text("utf-8")
                .split("<title>")[1]
                .split("</title>")[0]
            )
            box = frame.evaluate(
                "() => { const c = window.reportgen.view.container().querySelector('canvas');"
                " return c ? [c.width, c.height] : null; }"
            )
            assert box is not None and box[0] > 100 and box[1] > 100, box
            assert not errors, errors
            assert not outside, outside
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
