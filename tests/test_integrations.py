"""Experiment logs against the real libraries: MLflow (local file store), W&B (offline)."""

from __future__ import annotations

import pytest

from reportgen.pipeline import Report

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def single(gpt2_run, tmp_path_factory):
    from reportgen.records import Run
    from reportgen.settings import Settings
    from reportgen.site import render_single_file

    path = tmp_path_factory.mktemp("single") / "report.html"
    return render_single_file(Run.open(gpt2_run), path, Settings())


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mlflow_logs_the_single_file_and_the_run_folder(gpt2_run, tmp_path, monkeypatch):
    import mlflow

    from reportgen.integrations.mlflow import log_report

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store of the issue
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_report(gpt2_run)
    with mlflow.start_run() as active:
        path = log_report(gpt2_run, include_run=True)
    assert path == "reportgen/report.html"
    local = mlflow.artifacts.download_artifacts(
        run_id=active.info.run_id, artifact_path="reportgen", dst_path=str(tmp_path / "dl")
    )
    html = (tmp_path / "dl" / "reportgen" / "report.html").read_text("utf-8")
    assert html.lower().startswith("<!doctype html>") and "reportgen" in html
    assert (tmp_path / "dl" / "reportgen" / "run" / "manifest.json").is_file()
    assert local


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_wandb_logs_html_offline(single, tmp_path, monkeypatch):
    import wandb

    from reportgen.integrations.wandb import log_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(RuntimeError, match="no active W&B run"):
        log_report(single)
    run = wandb.init(project="reportgen-test", dir=str(tmp_path), mode="offline")
    try:
        log_report(Report(None, single.parent, single), key="saliency")
    finally:
        run.finish()
    logged = list(tmp_path.rglob("media/html/saliency_*.html"))
    assert len(logged) == 1
    assert logged[0].read_text("utf-8") == single.read_text("utf-8"), "logged unchanged (no inject)"


def test_report_displays_inline_in_notebooks(single, tmp_path):
    html = Report(None, tmp_path, single)._repr_html_()
    assert html.startswith('<iframe sandbox="allow-scripts"') and 'srcdoc="' in html
    assert "<script" not in html.split('srcdoc="', 1)[1], "the document is attribute-escaped"
    plain = Report(None, tmp_path / "<b>site")._repr_html_()
    assert "&lt;b&gt;site" in plain
