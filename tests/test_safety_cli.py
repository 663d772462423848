"""The command line fails before the work: bad inputs and outputs that must not be written exit
2 with one line naming them, before any model loads, and nothing is written."""

from __future__ import annotations

import json
import time

import pytest
from conftest import error_lines
from typer.testing import CliRunner

from reportgen.cli import app

pytestmark = pytest.mark.cli

runner = CliRunner()


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every check must come before it."""
    import reportgen.engine

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(reportgen.engine, "load_model", refuse)


@pytest.mark.parametrize(
    "line,fragment",
    [
        ('{"text": "a", "meta": {"score": NaN}}', "in.jsonl:5001: NaN is not valid JSON"),
        ('{"text": "a\\ud800"}', 'in.jsonl:5001: "text" holds a lone surrogate (\\ud800)'),
        ('{"text": "a", "meta": {"n": ' + "9" * 5000 + "}}", "in.jsonl:5001: invalid JSON"),
        ('{"text": "a", "meta": ' + "[" * 5000 + "]" * 5000 + "}", "in.jsonl:5001: JSON nested"),
    ],
    ids=["nan", "surrogate", "huge-int", "deep"],
)
def test_a_bad_line_in_10000_exits_2_before_the_model_loads(tmp_path, no_model, line, fragment):
    lines = [json.dumps({"id": f"x{k}", "text": f"line {k}"}) for k in range(10_000)]
    lines[5000] = line
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(lines) + "\n", "utf-8")
    started = time.perf_counter()
    result = _invoke("compute", inputs, "--out", tmp_path / "run", "-m", tmp_path / "no-model")
    assert time.perf_counter() - started < 5
    _one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"], "nothing written"


def test_a_10_mb_line_exits_2_at_once(tmp_path, no_model):
    inputs = tmp_path / "in.txt"
    inputs.write_text("ok\n" + "horse " * 1_700_000 + "\n", "utf-8")
    started = time.perf_counter()
    result = _invoke("build", inputs, "--out", tmp_path / "site", "-m", tmp_path / "no-model")
    assert time.perf_counter() - started < 2
    _one_line_error(result, "in.txt:2: a line of 10,200,000 characters", "limit of 1,000,000")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--single-file", "{in}"], ["is the input file"]),
        (["--single-file", "{in}", "--force"], ["is the input file"]),
        (["--single-file", "{tmp}"], ["is a folder"]),
        (["--single-file", "{site}/index.html"], ["is a file the site itself writes"]),
        (["--single-file", "{mine}"], ["exists and was not written by reportgen", "--force"]),
        (["--run", "{site}/run"], ["lies inside --out"]),
        (["--out", "{home}"], ["is your home folder"]),
        (["--out", "{mine}"], ["exists and is not a folder"]),
    ],
)
def test_outputs_that_must_not_be_written_exit_2_before_the_model_loads(
    tmp_path, monkeypatch, no_model, args, fragments
):
    inputs = tmp_path / "in.txt"
    inputs.write_text("<CHI> saw a dog\n", "utf-8")
    mine = tmp_path / "mine.html"
    mine.write_text('<meta name="generator" content="reportgen 0.1.0"><p>my notes</p>')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    names = {"in": inputs, "tmp": tmp_path, "site": tmp_path / "site", "mine": mine}
    names["home"] = tmp_path / "home"
    filled = [a.format(**{k: str(v) for k, v in names.items()}) for a in args]
    if "--out" not in filled:
        filled += ["--out", str(tmp_path / "site")]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    result = _invoke("build", inputs, *filled, "-m", tmp_path / "no-model")
    _one_line_error(result, *fragments)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert inputs.read_text("utf-8") == "<CHI> saw a dog\n"


def test_render_keeps_a_gh_pages_checkout(gpt2_run, tmp_path):
    """`reportgen render` into a gh-pages checkout: refused once (no record yet), written with
    --force keeping .git and CNAME, then updated without --force."""
    site = tmp_path / "site"
    (site / ".git").mkdir(parents=True)
    (site / ".git" / "HEAD").write_text("ref: refs/heads/gh-pages\n")
    (site / "CNAME").write_text("example.org\n")
    _one_line_error(
        _invoke("render", gpt2_run, "--out", site, "-q"), "not written by reportgen", "--force"
    )
    for extra in (["--force"], []):
        result = _invoke("render", gpt2_run, "--out", site, "-q", *extra)
        assert result.exit_code == 0, result.output
        assert (site / "CNAME").read_text() == "example.org\n"
        assert (site / ".git" / "HEAD").is_file() and (site / "index.html").is_file()
    (site / "about.html").write_text("edited")
    _one_line_error(
        _invoke("render", gpt2_run, "--out", site, "-q"), "changed since: about.html", "--force"
    )


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_figure_overwrites_only_its_own_figure(gpt2_run, tmp_path, suffix):
    """`figure --out` replaces a figure it wrote, unchanged; any other file (the user's notes,
    an edited figure) only with --force, and a folder never."""
    from reportgen.site.writer import is_figure

    out = tmp_path / f"f{suffix}"
    figure = ("figure", gpt2_run, "--id", "reference", "-o", out)
    assert _invoke(*figure).exit_code == 0
    first = out.read_bytes()
    assert is_figure(out)
    assert _invoke(*figure).exit_code == 0  # its own figure: replaced, the same bytes
    assert out.read_bytes() == first

    out.write_bytes(first + b"\n")  # edited since: no longer reportgen's
    _one_line_error(_invoke(*figure), f"--out {out} exists", "--force")
    assert out.read_bytes() == first + b"\n"
    assert _invoke(*figure, "--force").exit_code == 0 and is_figure(out)

    notes = tmp_path / f"notes{suffix}"
    notes.write_text("my notes", "utf-8")
    _one_line_error(_invoke(*figure[:-1], notes), "was not written by reportgen")
    assert notes.read_text("utf-8") == "my notes"
    (tmp_path / f"folder{suffix}").mkdir()
    _one_line_error(_invoke(*figure[:-1], tmp_path / f"folder{suffix}"), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, notes.name, f"folder{suffix}"]
    )  # no temporary file left behind
