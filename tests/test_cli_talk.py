"""The command line is fast to refuse, says what it does, shows its defaults, reads a config.

- Bad arguments and inputs are refused before torch is imported (checked in a subprocess).
- "loading model …" is a step of its own; without a terminal, log lines instead of bars; the
  summary comes after the bars have ended; plurals are right.
- `--help` gives every option's default; `reportgen.toml` / `[tool.reportgen]` settings with
  the command line overriding them, `--print-config` showing the merged result.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import typer
from typer.testing import CliRunner

from reportgen.cli import app

pytestmark = pytest.mark.cli

runner = CliRunner()

# Runs each command in one fresh process, then says which heavy modules it had imported.
_WRAPPER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from reportgen.cli import app
    out = []
    for args in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                app(args, prog_name="reportgen")
                code = 0
            except SystemExit as exit:
                code = exit.code
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        out.append({"code": code, "heavy": heavy, "stderr": err.getvalue()})
    print(json.dumps(out))
    """
)


def _fresh(tmp_path, *commands):
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps([[str(a) for a in c] for c in commands])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


REFUSED = [
    (["build", "missing.txt"], "missing.txt: no such file"),
    (["compute", "in.txt", "-o", "run", "--metric", "flux"], "unknown metric 'flux'"),
    (["build", "in.txt", "--metric", "flux"], "unknown metric 'flux'"),
    (["compute", "in.txt", "-o", "run", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["build", "in.txt", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["compute", "in.txt", "-o", "run", "--dtype", "int8"], "unknown --dtype 'int8'"),
    (["compute", "in.txt", "-o", "run", "-m", "no/such/model"], "'no/such/model' does not"),
    (["build", "in.txt", "-m", "./nothing"], "model folder './nothing' does not exist"),
    (["compute", "in.txt", "-o", "run", "--metric", "flow:A->B"], "has no segment 'A'"),
    (["compute", "in.txt", "-o", "run", "--shard", "3/2"], "--shard 3/2"),
    (["render", "in.txt", "--metric", "flux"], "unknown metric 'flux'"),
    (
        ["compute", "in.txt", "-o", "run", "--method", "attention"],
        "--metric total cannot tell heads apart with --method attention",
    ),
    (
        ["build", "in.txt", "--method", "attention", "--metric", "prediction"],
        "--metric prediction cannot tell heads apart with --method attention",
    ),
    (
        ["compute", "in.txt", "-o", "run", "--method", "rollout"],
        "--metric total cannot tell heads apart with --method rollout",
    ),
    (
        ["build", "in.txt", "--method", "rollout", "--metric", "prediction"],
        "--metric prediction cannot tell heads apart with --method rollout",
    ),
]


@pytest.fixture
def plain_inputs(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("<CHI> saw a dog\n", "utf-8")
    return path


def test_bad_arguments_are_refused_before_torch_is_imported(tmp_path, plain_inputs):
    results = _fresh(tmp_path, *(args for args, _ in REFUSED))
    for (args, fragment), result in zip(REFUSED, results, strict=True):
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (args, result)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result)
        assert fragment in lines[0], (args, result)
        assert result["heavy"] == [], f"{args}: imported {result['heavy']} before refusing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"], "nothing written"


def test_compute_says_each_step_and_the_summary_last(tiny_models, tmp_path, plain_inputs):
    args = ["compute", plain_inputs, "-o", tmp_path / "run", "-m", tiny_models["gpt2"]]
    result = runner.invoke(app, [*map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"loading model {tiny_models['gpt2']} …"
    assert re.fullmatch(r"model loaded in \d+\.\d s", lines[1]), lines
    assert lines[2] == "computing 1 input"
    assert re.fullmatch(r"computing: 1/1 input in \d+\.\d s", lines[3]), lines
    assert re.fullmatch(r"1 input \(4 tokens\) in \d+\.\d s; run folder: .*run", lines[-1]), lines
    assert len(lines) == 4 + 1, lines
    assert "\x1b" not in result.stderr and "\r" not in result.stderr, "no bars without a terminal"


def test_without_a_terminal_progress_is_periodic_log_lines(capsys):
    from reportgen.cli import _Progress

    with _Progress(quiet=False, interval=0.0) as progress:
        progress.start_compute(3)
        for _ in range(3):
            progress.compute(1)
        progress.summary(None, None, 1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "computing 3 inputs"
    assert [re.sub(r" \(.*\)| in .*", "", line) for line in lines[1:4]] == [
        "computing: 1/3 inputs",
        "computing: 2/3 inputs",
        "computing: 3/3 inputs",
    ]
    assert re.fullmatch(r"3 inputs \(1 token\) in \d+\.\d s", lines[4]), lines


def test_on_a_terminal_the_summary_comes_after_the_bars(capsys, monkeypatch):
    from reportgen.cli import _Progress

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats stderr as a terminal
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    with _Progress(quiet=False) as progress:
        assert progress.live
        progress.start_compute(2)
        progress.compute(2)
        progress.summary(None, None, 7)
        assert "2 inputs (7 tokens)" not in capsys.readouterr().err, "not while the bars run"
    err = capsys.readouterr().err
    assert re.search(r"2 inputs \(7 tokens\) in \d+\.\d s\n\Z", err), repr(err[-200:])


def _help_entries(text):
    """The options of a --help text: {'--out': 'its help, joined'}."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        found = re.match(r"^  (-[-\w]+(?:, -[-\w]+)?)(?: <[^>]+>)?(?:\s{2,}(.*))?$", line)
        if found:
            names = found.group(1).split(", ")
            current = max(names, key=len)
            entries[current] = found.group(2) or ""
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def test_help_shows_the_default_of_every_option():
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    for name, command in click_app.commands.items():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        entries = _help_entries(result.output)
        options = [max(p.opts, key=len) for p in command.params if p.param_type_name == "option"]
        assert options and set(options) <= set(entries), (name, options, entries)
        for option in options:
            text = re.sub(r"\s+", " ", entries[option])
            assert "[default: " in text or "[required]" in text, f"{name} {option}: {text}"


# --- the config file -----------------------------------------------------------------------------


def _print_config(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compute", "in.txt", "-o", "run", *args, "--print-config"])
    return result


def _toml_values(output):
    import tomllib

    return tomllib.loads("\n".join(line for line in output.splitlines()))


def test_reportgen_toml_is_read_and_the_command_line_overrides_it(tmp_path, monkeypatch):
    (tmp_path / "reportgen.toml").write_text(
        'batch-size = 2\nmetric = "prediction"\ntruncate = true\nmodel = "models/mine"\n'
    )
    result = _print_config(tmp_path, monkeypatch, "--batch-size", "4", "--seed", "9")
    assert result.exit_code == 0, result.output
    values = _toml_values(result.stdout)
    assert values["batch-size"] == 4 and values["seed"] == 9  # the command line wins
    assert values["metric"] == "prediction" and values["truncate"] is True
    assert values["model"] == "models/mine" and values["steps"] == 20  # a default
    assert "batch-size = 4  # command line" in result.stdout
    assert 'metric = "prediction"  # reportgen.toml' in result.stdout
    assert "steps = 20  # default" in result.stdout
    assert not (tmp_path / "run").exists()


def test_pyproject_tool_reportgen_is_read(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.reportgen]\nablate-k = 0\nkeys-as-rows = true\n'
    )
    result = _print_config(tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    values = _toml_values(result.stdout)
    assert values["ablate-k"] == 0 and values["keys-as-rows"] is True
    assert "pyproject.toml [tool.reportgen]" in result.stdout
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    plain = _print_config(tmp_path, monkeypatch)
    assert plain.exit_code == 0 and _toml_values(plain.stdout)["ablate-k"] == 3


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        ("reportgen.toml", "batchsize = 2\n", "reportgen.toml: unknown key 'batchsize'"),
        ("reportgen.toml", "batch_size = 2\n", "key 'batch_size' (did you mean 'batch-size'"),
        (
            "pyproject.toml",
            "[tool.reportgen]\nmetrik = 'total'\n",
            "pyproject.toml [tool.reportgen]: unknown key 'metrik'",
        ),
        ("reportgen.toml", 'batch-size = "2"\n', "'batch-size' should be an integer, got '2'"),
        ("reportgen.toml", "batch-size = 0\n", "reportgen.toml: --batch-size must be at least 1"),
        ("reportgen.toml", 'metric = "flux"\n', "reportgen.toml: unknown metric 'flux'"),
        ("reportgen.toml", "force = true\n", "unknown key 'force'"),
        ("reportgen.toml", "batch-size = \n", "reportgen.toml: invalid TOML"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, monkeypatch, name, content, fragment):
    (tmp_path / name).write_text(content)
    result = _print_config(tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_a_config_file_changes_what_is_computed(tiny_models, tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("<CHI> saw a dog\n")
    (tmp_path / "reportgen.toml").write_text(
        f'model = "{tiny_models["gpt2"]}"\ndevice = "cpu"\nablate-k = 1\nseed = 5\nquiet = true\n'
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compute", "in.txt", "-o", "run", "--seed", "6"])
    assert result.exit_code == 0 and result.output == "", result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["parameters"]["ablate_k"] == 1
    assert manifest["run"]["parameters"]["seed"] == 6
    command = manifest["run"]["command"]  # reproduces the run without the config file
    assert command.startswith("reportgen compute in.txt --out run --seed 6 --model ")
    assert command.endswith(" --device cpu --ablate-k 1 --quiet") and "--seed 5" not in command


def test_attention_and_rollout_refuse_the_metrics_that_give_every_head_the_same_score():
    """Raw attention rows sum to 1, and rollout's per-head scores are raw attention: total and
    prediction are flat; a flow is not, nor is any metric of the other methods (attn-norm
    weighs each key by its value norm, so its rows do not sum to 1)."""
    from reportgen.data.methods import METHODS
    from reportgen.data.metrics import check_discriminates, parse_metric
    from reportgen.errors import SettingsError

    flat = ("attention", "rollout")
    for name in ("total", "prediction"):
        for method in flat:
            with pytest.raises(SettingsError, match=f"--method {method}: .*flow:SRC->DST"):
                check_discriminates(method, parse_metric(name))
        for method in set(METHODS) - set(flat):
            check_discriminates(method, parse_metric(name))
    for method in flat:
        check_discriminates(method, parse_metric("flow:ENV->LAN"))


@pytest.mark.parametrize("method", ["attention", "rollout"])
def test_rendering_an_attention_run_under_total_is_refused(synthetic_run, tmp_path, method):
    """`render --metric total` of a run of raw attention (or of rollout, whose per-head scores
    are raw attention): refused, nothing written. (The synthetic run says its method is
    attn-grad; a copy of it says `method`.)"""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)
    manifest = json.loads((run / "manifest.json").read_text("utf-8"))
    manifest["run"]["method"] = method
    (run / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    result = runner.invoke(
        app, ["render", str(run), "-o", str(tmp_path / "s"), "--metric", "total"]
    )
    assert result.exit_code == 2, result.output
    assert f"cannot tell heads apart with --method {method}" in result.stderr
    assert not (tmp_path / "s").exists()


def test_unknown_words_are_warned_about_and_labelled_as_the_model_reads_them(tiny_models, tmp_path):
    from reportgen.records import Run

    inputs = tmp_path / "in.txt"
    inputs.write_text("<CHI> saw a zebra yesterday\n<CHI> saw a dog\n", "utf-8")
    out = tmp_path / "run"
    args = ["compute", str(inputs), "-o", str(out), "-m", str(tiny_models["gpt2"]), "--device"]
    result = runner.invoke(app, [*args, "cpu", "--ablate-k", "0"])
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warning == (
        "warning: 2 of 9 tokens in 1 of 2 inputs are not in the model's vocabulary and read as "
        "[UNK], e.g. 'zebra' in input '1' (in.txt:1); the report labels them [UNK]"
    )
    run = Run.open(out)
    assert run.entries[0].tokens == ("<CHI>", "saw", "a", "[UNK]", "[UNK]")
    assert run.entries[1].tokens == ("<CHI>", "saw", "a", "dog")
    quiet = runner.invoke(app, [*args, "cpu", "--ablate-k", "0", "-q", "--force"])
    assert quiet.exit_code == 0 and quiet.output == "", "quiet means nothing, warnings too"
