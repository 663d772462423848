"""The command line: exit codes, one-line errors, nothing written on failure, instant help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from reportgen.cli import app

pytestmark = pytest.mark.cli

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _inputs(tmp_path, lines, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", "utf-8")
    return path


@pytest.mark.parametrize("command", [[], ["build"], ["compute"], ["render"], ["figure"]])
def test_help_is_instant_and_imports_no_torch(command):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from reportgen.cli import app\n"
        f"result = CliRunner().invoke(app, {[*command, '--help']!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = ('torch', 'transformers', 'altair', 'vl_convert')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_and_python_dash_m():
    assert _invoke("--version").output.strip() == "reportgen 0.1.0"
    out = subprocess.run(
        [sys.executable, "-m", "reportgen", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "reportgen 0.1.0"


def test_compute_writes_a_run_folder(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"id": "a", "text": "<CHI> saw a dog", "target": "dog"}])
    result = _invoke(
        "compute",
        inputs,
        "--out",
        tmp_path / "run",
        "--model",
        tiny_models["gpt2"],
        "--device",
        "cpu",
        "--ablate-k",
        "2",
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    first = json.loads((tmp_path / "run" / "entries.jsonl").read_text("utf-8").splitlines()[0])
    assert first["id"] == "a"
    assert manifest["run"]["parameters"]["ablate_k"] == 2
    assert manifest["run"]["parameters"]["seed"] == 3
    assert manifest["run"]["attn_implementation"].startswith("reportgen's fused softmax")
    assert "1 inputs (4 tokens) in" in result.stderr and "run folder" in result.stderr


def test_quiet_prints_nothing(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"text": "a b"}])
    result = _invoke("compute", inputs, "-o", tmp_path / "run", "-m", tiny_models["gpt2"], "-q")
    assert result.exit_code == 0 and result.output == ""


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "content,fragments",
    [
        ('{"text": "ok"}\n{"text": \n', ["in.jsonl:2: invalid JSON"]),
        ('{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n', ["in.jsonl:2: duplicate id '1'"]),
        ("\n\n", ["in.jsonl: no inputs"]),
    ],
)
def test_malformed_input_exits_2_and_writes_nothing(tiny_models, tmp_path, content, fragments):
    path = tmp_path / "in.jsonl"
    path.write_text(content, "utf-8")
    out = tmp_path / "run"
    result = _invoke("compute", path, "--out", out, "--model", tiny_models["gpt2"])
    _assert_one_line_error(result, *fragments)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_model_and_option_errors_exit_2(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"text": "a b", "target": "zebra"}])
    out = tmp_path / "run"
    _assert_one_line_error(
        _invoke("compute", inputs, "-o", out, "-m", tmp_path / "missing"), "does not exist"
    )
    _assert_one_line_error(
        _invoke("compute", inputs, "-o", out, "-m", tiny_models["gpt2"]),
        "target 'zebra' is not in the model's vocabulary",
    )
    plain = _inputs(tmp_path, [{"text": "a b"}], "plain.jsonl")
    _assert_one_line_error(
        _invoke("compute", plain, "-o", out, "-m", tiny_models["gpt2"], "--method", "lrp"),
        "unknown method 'lrp'. Available: attn-grad, attention, attattr",
    )
    _assert_one_line_error(
        _invoke("compute", plain, "-o", out, "-m", tiny_models["gpt2"], "--metric", "flow:A->B"),
        "has no segment 'A'",
    )
    _assert_one_line_error(
        _invoke("compute", plain, "-o", out, "-m", tiny_models["gpt2"], "--dtype", "int8"),
        "unknown --dtype 'int8'",
    )
    long = _inputs(tmp_path, [{"id": "long", "text": " ".join(["a"] * 60)}], "long.jsonl")
    _assert_one_line_error(
        _invoke("compute", long, "-o", out, "-m", tiny_models["gpt2"]),
        "long.jsonl:1: input 'long': 60 tokens, more than the limit of 40",
        "--truncate",
    )
    assert not out.exists()


def test_an_unrelated_output_folder_is_not_replaced(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"text": "a b"}])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = _invoke("compute", inputs, "-o", precious, "-m", tiny_models["gpt2"])
    _assert_one_line_error(result, "not written by reportgen", "--force")
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


def test_render_of_something_that_is_not_a_run(tmp_path):
    _assert_one_line_error(_invoke("render", tmp_path, "-o", tmp_path / "site"), "not a run folder")


def test_figure_argument_errors(gpt2_run, tmp_path):
    _assert_one_line_error(
        _invoke("figure", gpt2_run, "--id", "nope", "-o", tmp_path / "f.svg"),
        "--id nope: no such input",
        "reference",
    )
    _assert_one_line_error(
        _invoke("figure", gpt2_run, "--id", "reference", "--head", "9.9", "-o", tmp_path / "f.svg"),
        "layers 1..3 and heads 1..4",
    )
    _assert_one_line_error(
        _invoke("figure", gpt2_run, "--id", "reference", "--head", "x", "-o", tmp_path / "f.svg"),
        "LAYER.HEAD",
    )
    _assert_one_line_error(
        _invoke("figure", gpt2_run, "--id", "reference", "-o", tmp_path / "f.pdf"), ".svg or .png"
    )
    assert not list(tmp_path.iterdir())


def test_unexpected_failures_exit_1_without_traceback(tiny_models, tmp_path, monkeypatch):
    import reportgen.engine.runner

    def boom(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(reportgen.engine.runner, "compute_batch", boom)
    inputs = _inputs(tmp_path, [{"text": "a b"}])
    result = _invoke("compute", inputs, "-o", tmp_path / "run", "-m", tiny_models["gpt2"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: MemoryError: out of memory (run with --debug for details)"
    ]
    assert not (tmp_path / "run").exists()
    debug = _invoke("compute", inputs, "-o", tmp_path / "run", "-m", tiny_models["gpt2"], "--debug")
    assert isinstance(debug.exception, MemoryError)


@pytest.mark.parametrize(
    "name,content,model,fragment",
    [
        ("in.jsonl", '"just a string"\n', "gpt2", "in.jsonl:1: expected a JSON object"),
        ("in.jsonl", '{"target": "x"}\n', "gpt2", 'in.jsonl:1: needs exactly one of "text"'),
        (
            "in.jsonl",
            '{"segments": [{"name": "A", "text": ""}]}\n',
            "gpt2",
            "segment 1 (A) is empty",
        ),
        ("in.txt", b"ok\n\xfe\xff\n", "gpt2", "in.txt:2: not valid UTF-8"),
        ("in.txt", "a b\n", "bert-mlm", "in.txt:1: input '1': no mask token [MASK]"),
        (
            "in.jsonl",
            '{"text": "a", "label": "maybe"}\n',
            "bert-cls",
            "in.jsonl:1: input '1': label",
        ),
        ("in.jsonl", '{"text": "a", "target": "zebra"}\n', "gpt2", "in.jsonl:1: input '1': target"),
    ],
)
def test_broken_inputs_name_file_and_line(tiny_models, tmp_path, name, content, model, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "site"
    result = _invoke("build", path, "--out", out, "--model", tiny_models[model])
    _assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "nothing written"


def test_build_and_render_write_a_site(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"id": "a", "text": "<CHI> saw a dog"}])
    result = _invoke(
        "build",
        inputs,
        "-o",
        tmp_path / "site",
        "-m",
        tiny_models["gpt2"],
        "--run",
        tmp_path / "run",
        "--single-file",
        tmp_path / "one.html",
        "--title",
        "My report",
    )
    assert result.exit_code == 0, result.output
    assert "My report" in (tmp_path / "site" / "index.html").read_text("utf-8")
    assert (tmp_path / "one.html").is_file() and (tmp_path / "run" / "manifest.json").is_file()
    again = _invoke("render", tmp_path / "run", "-o", tmp_path / "site2", "--keys-as-rows", "-q")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "site2" / "examples").is_dir()
    fig = _invoke(
        "figure", tmp_path / "run", "--id", "a", "--head", "1.2", "-o", tmp_path / "f.png"
    )
    assert fig.exit_code == 0, fig.output
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
