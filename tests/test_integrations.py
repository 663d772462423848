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
        logged_as = log_report(Report(None, single.parent, single), key="saliency")
    finally:
        run.finish()
    assert logged_as == "saliency", "returns what it logged, as the MLflow helper does"
    logged = list(tmp_path.rglob("media/html/saliency_*.html"))
    assert len(logged) == 1
    assert logged[0].read_text("utf-8") == single.read_text("utf-8"), "logged unchanged (no inject)"


def _srcdoc(html: str) -> str:
    return html.split('srcdoc="', 1)[1].split('"></iframe>', 1)[0]


def test_report_displays_inline_in_notebooks(single, gpt2_run, tmp_path):
    """The single file in a sandboxed srcdoc frame (attribute-escaped), sized by the script
    beside it; a report without a single file is rendered as one from its run folder, with the
    site's settings; with neither, the site's path (escaped)."""
    import html as html_module

    from reportgen.pipeline import render
    from reportgen.settings import Settings

    shown = Report(None, tmp_path, single)._repr_html_()
    assert shown.startswith('<iframe sandbox="allow-scripts"') and 'srcdoc="' in shown
    assert "<script" not in _srcdoc(shown), "the document is attribute-escaped"
    assert shown.endswith("</script>") and "reportgen" in shown.rsplit("<script>", 1)[1]
    report = render(gpt2_run, tmp_path / "site", Settings(title="A <b>notebook</b> title"))
    assert report.single_file is None
    inline = html_module.unescape(_srcdoc(report._repr_html_()))
    assert "<title>A &lt;b&gt;notebook&lt;/b&gt; title" in inline, "the site's own settings"
    assert 'id="rg-data"' in inline and not list(tmp_path.glob("site/*.html.*"))
    plain = Report(None, tmp_path / "<b>site")._repr_html_()
    assert "&lt;b&gt;site" in plain


def test_paths_may_be_str_or_path_and_come_back_as_paths(tmp_path):
    from pathlib import Path

    from reportgen.settings import Settings

    settings = Settings(single_file="r.html", templates="tpl", model=tmp_path / "m")
    assert settings.single_file == Path("r.html") and settings.templates == Path("tpl")
    assert settings.model == str(tmp_path / "m")
    assert settings.override(single_file="s.html").single_file == Path("s.html")
    report = Report("run", "site", "one.html")
    assert (report.run, report.site, report.single_file) == (
        Path("run"),
        Path("site"),
        Path("one.html"),
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_build_keeps_its_run_as_long_as_its_report(tiny_models, tmp_path, monkeypatch):
    """build() without run_dir: Report.run is a temporary run folder, there for log_report's
    include_run, and gone with the Report (no files leaked)."""
    import gc

    import mlflow

    import reportgen
    from reportgen.integrations.mlflow import log_report
    from reportgen.records import Run
    from reportgen.settings import Settings

    settings = Settings(model=str(tiny_models["gpt2"]), device="cpu", ablate_k=0)
    report = reportgen.build(["<CHI> saw a dog"], out=str(tmp_path / "site"), settings=settings)
    run = report.run
    assert run is not None and Run.open(run).ids == ("1",)
    about = (tmp_path / "site" / "about.html").read_text("utf-8")
    assert "reportgen build INPUTS --out " in about and "--ablate-k 0" in about
    assert "INPUTS stands for inputs that were given from Python as a list" in about
    assert "reportgen-run-" not in about, "not the temporary run folder"
    assert Run.open(run).info.model_path.endswith("gpt2")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as active:
        assert log_report(report, include_run=True) == "reportgen/report.html"
    client = mlflow.tracking.MlflowClient()
    names = {a.path for a in client.list_artifacts(active.info.run_id, "reportgen/run")}
    assert "reportgen/run/manifest.json" in names
    del report
    gc.collect()
    assert not run.exists(), "the temporary run goes with its Report"
