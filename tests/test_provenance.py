"""What a report publishes of where it came from: paths relative to the working directory by
default (a report is shared), absolute ones only with --provenance full."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from reportgen.cli import app

pytestmark = pytest.mark.cli


def _build(tmp_path, model, *extra):
    inputs = tmp_path / "data" / "in.jsonl"
    inputs.parent.mkdir(exist_ok=True)
    inputs.write_text(json.dumps({"text": "<CHI> saw a dog", "target": "dog"}) + "\n")
    out = tmp_path / "out" / "site"
    result = CliRunner().invoke(
        app,
        [
            "build",
            str(inputs),
            "--out",
            str(out),
            "-m",
            str(model),
            "--ablate-k",
            "0",
            "-q",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_pages_publish_no_absolute_path_by_default(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = _build(tmp_path, tiny_models["gpt2"])
    private = [str(tmp_path), os.path.expanduser("~"), str(tiny_models["gpt2"])]
    for page in [site / "about.html", site / "index.html", *sorted((site / "examples").iterdir())]:
        html = page.read_text("utf-8")
        for secret in private:
            assert secret not in html, f"{page.name} publishes {secret}"
    about = (site / "about.html").read_text("utf-8")
    assert "reportgen build data/in.jsonl --out out/site" in about
    assert "…/models" in about or "…/" in about, "the model folder by its last parts"


def test_provenance_full_publishes_absolute_paths(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = _build(tmp_path, tiny_models["gpt2"], "--provenance", "full")
    about = (site / "about.html").read_text("utf-8")
    assert str(tiny_models["gpt2"]) in about
    assert str(tmp_path / "data" / "in.jsonl") in about


def test_the_api_records_the_equivalent_command(tiny_models, tmp_path, monkeypatch):
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("<CHI> saw a dog\n")
    run = compute(
        "in.txt", "run", Settings(model=str(tiny_models["gpt2"]), method="attattr", ablate_k=0)
    )
    command = run.info.command
    assert command.startswith("reportgen compute in.txt --out run --model ")
    assert "--method attattr --ablate-k 0" in command and str(tmp_path) not in command


def test_an_api_build_records_the_equivalent_build_command(tiny_models, tmp_path, monkeypatch):
    import shlex

    from markupsafe import escape

    from reportgen.pipeline import build, shown_path
    from reportgen.records import Run
    from reportgen.settings import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("<CHI> saw a dog\n")
    settings = Settings(
        model=tiny_models["gpt2"], ablate_k=0, metric="prediction", single_file="one.html",
        title="Mine", keys_as_rows=True,
    )  # fmt: skip
    report = build("in.txt", "site", settings)
    assert report.run is not None
    command = Run.open(report.run).info.command
    assert command == (
        f"reportgen build in.txt --out site --model {shlex.quote(shown_path(tiny_models['gpt2']))} "
        "--metric prediction --ablate-k 0 --single-file one.html --title Mine --keys-as-rows"
    ), command
    about = (tmp_path / "site" / "about.html").read_text("utf-8")
    assert f'<code class="rg-cmd">{escape(command)}</code>' in about
    assert "INPUTS stands for" not in about


def test_repeatable_options_are_recorded_once_per_value(tiny_models, tmp_path, monkeypatch):
    """--page-id and --link as given (each value after its option), and nothing for one not
    given: the recorded command runs as it reads."""
    import html
    import re
    import shlex

    monkeypatch.chdir(tmp_path)
    plain = _build(tmp_path, tiny_models["gpt2"])
    about = html.unescape((plain / "about.html").read_text("utf-8"))
    assert "--page-id" not in about and "--link" not in about
    links = ("--link", "Over training=compare/index.html", "--link", "Paper=https://a.b/c")
    site = _build(tmp_path, tiny_models["gpt2"], "--page-id", "1", *links, "--force")
    about = html.unescape((site / "about.html").read_text("utf-8"))
    [command] = re.findall(r"reportgen build [^<\n]*", about)
    argv = shlex.split(command)
    assert argv[argv.index("--page-id") + 1] == "1"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--link"] == [links[1], links[3]]
