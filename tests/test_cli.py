"""The command line: exit codes, one-line errors, nothing written on failure, instant help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import error_lines
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


@pytest.mark.parametrize("command", [[], ["build"], ["compute"], ["render"], ["figure"], ["merge"]])
def test_help_is_instant_and_imports_no_torch(command):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from reportgen.cli import app\n"
        f"result = CliRunner().invoke(app, {[*command, '--help']!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = ('torch', 'transformers', 'altair', 'vl_convert', 'ray', 'pyarrow', 'datasets')\n"
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
    # the fast path ran: the fused kernel (the tiled engine's), checked against the model's own
    assert manifest["run"]["attn_implementation"].startswith("torch's scaled_dot_product_attention")
    assert "1 input (4 tokens) in" in result.stderr and "run folder" in result.stderr


def test_compute_takes_the_intervention_and_effect_options(tiny_models, tmp_path):
    items = [
        {"id": "a", "text": "<CHI> saw a dog", "target": "dog", "contrast": "cat"},
        {"id": "b", "text": "<MOT> ate an apple", "target": "banana", "contrast": "apple"},
    ]
    inputs = _inputs(tmp_path, items)
    args = ["compute", inputs, "--out", tmp_path / "run", "--model", tiny_models["gpt2"]]
    args += ["--ablate-k", "2", "--ablate-draws", "2", "--ablation", "resample"]
    result = _invoke(*args, "--effect", "logit-diff")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["parameters"]["ablation"] == "resample"
    assert manifest["run"]["parameters"]["effect"] == "logit-diff"
    first = json.loads((tmp_path / "run" / "entries.jsonl").read_text("utf-8").splitlines()[0])
    assert first["contrast"] == "cat" and first["ablation"]["donor"] == "b"
    assert first["ablation"]["effect"] == "logit-diff" and len(first["ablation"]["curve"]) == 2
    bad = _invoke("compute", inputs, "--out", tmp_path / "other", "--ablation", "half")
    assert bad.exit_code == 2 and "unknown --ablation 'half'" in bad.output


FLOW_INPUTS = [
    {
        "id": "a",
        "segments": [
            {"name": "ENV", "text": "<CHI> saw a dog"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "dog",
    },
    {
        "id": "b",
        "segments": [
            {"name": "ENV", "text": "<MOT> ate an apple"},
            {"name": "LAN", "text": "my favorite toy is the"},
        ],
        "target": "ball",
    },
]
FLOW = "flow:ENV->LAN"


def _api_results(lm, **changes):
    """The same inputs computed through the API, with the float64 model loaded by conftest."""
    from reportgen.engine import compute
    from reportgen.inputs import examples_from_items
    from reportgen.settings import Settings

    return list(compute(examples_from_items(FLOW_INPUTS), lm, Settings(metric=FLOW, **changes)))


@pytest.mark.parametrize("method", ["attn-norm", "rollout", "grad-rollout"])
def test_compute_with_each_method_stores_what_the_api_computes(
    tiny_models, loaded, tmp_path, method
):
    """--method reaches the engine: the manifest names the method, and the run folder holds the
    API's head reductions and (the rollouts) relevance [layers, T] for the same inputs."""
    import numpy as np

    from reportgen.records import Run

    inputs = _inputs(tmp_path, FLOW_INPUTS)
    args = ["-o", tmp_path / "run", "-m", tiny_models["gpt2"], "--device", "cpu", "-q"]
    result = _invoke(
        "compute", inputs, *args, "--method", method, "--metric", FLOW, "--ablate-k", "0"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["method"] == method and manifest["run"]["metric"] == FLOW
    assert manifest["run"]["parameters"]["ablate_k"] == 0
    want = _api_results(loaded["gpt2"], method=method, ablate_k=0)
    run = Run.open(tmp_path / "run")
    for got, ref in zip(run.results(), want, strict=True):
        assert got.example.id == ref.example.id and got.tokens == ref.tokens
        assert got.stats.total.shape == (3, 4) and got.ablation is None
        for name in ("total", "prediction", "flow"):
            theirs = getattr(ref.stats, name)
            np.testing.assert_allclose(getattr(got.stats, name), theirs, rtol=1e-4, atol=1e-7)
        if method == "attn-norm":
            assert got.relevance is None and ref.relevance is None
        else:
            assert got.relevance is not None and ref.relevance is not None
            assert got.relevance.shape == (3, len(got.tokens))
            np.testing.assert_allclose(got.relevance, ref.relevance, rtol=1e-4, atol=1e-7)


def test_build_with_ablate_layers_stores_them_and_shows_their_tests(tiny_models, loaded, tmp_path):
    """--ablate-layers through build: the manifest records it, the run folder holds every
    layer's ablation and flow knockout as the API computes them, and the index and about pages
    show the layer tests."""
    import numpy as np

    from reportgen.records import Run

    inputs = _inputs(tmp_path, FLOW_INPUTS)
    run, site = tmp_path / "run", tmp_path / "site"
    args = ["--run", run, "-m", tiny_models["gpt2"], "--device", "cpu", "--metric", FLOW]
    args += ["--ablate-k", "2", "--ablate-draws", "2", "--ablate-layers", "--pages", "0"]
    result = _invoke("build", inputs, "-o", site, *args, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["parameters"]["ablate_layers"] is True
    want = _api_results(loaded["gpt2"], ablate_k=2, ablate_draws=2, ablate_layers=True)
    for entry, ref in zip(Run.open(run).entries, want, strict=True):
        got, theirs = entry.ablation, ref.ablation
        assert got is not None and theirs is not None and got.knockout and theirs.knockout
        assert len(got.layers) == len(got.knockout.layers) == 3
        assert got.heads == theirs.heads and got.random_heads == theirs.random_heads
        np.testing.assert_allclose(got.layers, theirs.layers, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.knockout.layers, theirs.knockout.layers, 1e-4, 1e-6)
    index = (site / "index.html").read_text("utf-8")
    about = (site / "about.html").read_text("utf-8")
    assert 'data-rg="layer-test"' in index and "of 3</strong> layers" in index
    assert 'data-rg="layer-tests"' in about and "knocked out" in about


def test_quiet_prints_nothing(tiny_models, tmp_path):
    inputs = _inputs(tmp_path, [{"text": "a b"}])
    result = _invoke("compute", inputs, "-o", tmp_path / "run", "-m", tiny_models["gpt2"], "-q")
    assert result.exit_code == 0 and result.output == ""


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
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
    assert error_lines(result.stderr) == [
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


# --- render --metric, --top-k and compute --store -------------------------------------------------


def _page_data(path):
    """The JSON data a page embeds for its script (what the charts draw)."""
    import re

    found = re.search(
        r'<script type="application/json" id="rg-data">(.*?)</script>',
        path.read_text("utf-8"),
        flags=re.S,
    )
    assert found, f"{path}: no page data"
    return json.loads(found.group(1))


def _vega_values(spec, name):
    (data,) = [d for d in spec["data"] if d["name"] == name]
    return data["values"]


def test_render_shows_another_metric_without_recomputing(gpt2_run, tmp_path):
    """A run computed with flow:ENV->LAN renders with --metric total: the index ranks inputs by
    the total shares and every page's grid shows them (Run.head_scores("total"))."""
    import base64

    import numpy as np

    from reportgen.records import Run

    run = Run.open(gpt2_run)
    assert run.info.metric == "flow:ENV->LAN"
    total, flow = run.head_scores("total"), run.head_scores("flow:ENV->LAN")
    assert not np.allclose(total, flow, rtol=0.1), "the two metrics must differ to tell them apart"
    before = sorted(p.name for p in gpt2_run.rglob("*"))
    site = tmp_path / "site"
    result = _invoke("render", gpt2_run, "-o", site, "--metric", "total", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in gpt2_run.rglob("*")) == before, "the run is not changed"
    index = _page_data(site / "index.html")
    ranking = np.frombuffer(base64.b64decode(index["scores"]), "<u2").reshape(len(run), -1)
    want = np.rint(total.reshape(len(run), -1).astype(np.float64) * index["scale"])
    np.testing.assert_array_equal(ranking, want)
    mean = {(r["layer"], r["head"]): r["score"] for r in _vega_values(index["spec"], "heads")}
    for (layer, head), score in mean.items():
        assert score == pytest.approx(total[:, layer - 1, head - 1].mean(), rel=1e-3)
    assert "<code>total</code>" in (site / "index.html").read_text("utf-8")
    pages = sorted((site / "examples").glob("*.html"))
    assert len(pages) == len(run)
    for i, page in enumerate(pages):
        rows = _vega_values(_page_data(page)["spec"], "heads")
        assert len(rows) == run.info.num_layers * run.info.num_heads
        for row in rows:
            want = total[i, row["layer"] - 1, row["head"] - 1]
            assert row["score"] == pytest.approx(want, rel=1e-3, abs=1e-7)
        assert "<code>total</code>" in page.read_text("utf-8")
    # without --metric, the run's own
    again = _invoke("render", gpt2_run, "-o", tmp_path / "flow", "-q")
    assert again.exit_code == 0, again.output
    ranking = _page_data(tmp_path / "flow" / "index.html")["scores"]
    flat = np.frombuffer(base64.b64decode(ranking), "<u2").reshape(len(run), -1)
    want = np.rint(flow.reshape(len(run), -1).astype(np.float64) * index["scale"])
    np.testing.assert_array_equal(flat, want)


def test_render_metric_and_top_k_errors_exit_2_and_write_nothing(gpt2_run, tmp_path):
    site = tmp_path / "site"
    _assert_one_line_error(
        _invoke("render", gpt2_run, "-o", site, "--metric", "flow:ENV->XYZ"),
        "input 'reference' has no segment 'XYZ'",
        "flow:ENV->XYZ",
    )
    # The run stored 2T = 26 cells per head for its first input (13 tokens).
    _assert_one_line_error(
        _invoke("render", gpt2_run, "-o", site, "--top-k", "27"),
        "--top-k 27: the run stores 26 cells per head (input 'reference')",
        "compute it again with --top-k 27",
    )
    assert not list(tmp_path.iterdir()), "nothing written"
    fewer = _invoke("render", gpt2_run, "-o", site, "--top-k", "5", "-q")
    assert fewer.exit_code == 0, fewer.output
    cells = _vega_values(_page_data(site / "examples" / "0001-reference.html")["spec"], "cells")
    assert max(len(row["c"]) for row in cells) == 5


@pytest.mark.parametrize("command", ["render", "compute"])
def test_an_unknown_metric_is_a_one_line_error(gpt2_run, tmp_path, command):
    source = gpt2_run if command == "render" else _inputs(tmp_path, [{"text": "a b"}])
    _assert_one_line_error(
        _invoke(command, source, "-o", tmp_path / "out", "--metric", "flux"),
        "unknown metric 'flux'. Available: total, prediction, flow:SRC->DST",
    )
    assert not (tmp_path / "out").exists()


def test_compute_store_dense_and_top_k_are_what_the_run_keeps(tiny_models, tmp_path):
    import numpy as np
    from synthetic import assert_stats_match_dense

    from reportgen.records import Run

    inputs = _inputs(
        tmp_path,
        [
            {
                "id": "a",
                "segments": [
                    {"name": "ENV", "text": "<CHI> saw a dog"},
                    {"name": "LAN", "text": "<CHI> my favorite animal is the"},
                ],
            }
        ],
    )
    common = ["-m", tiny_models["gpt2"], "--device", "cpu", "--metric", "flow:ENV->LAN", "-q"]
    for store, dtype in (("dense", np.float32), ("dense-float16", np.float16)):
        out = tmp_path / store
        result = _invoke("compute", inputs, "-o", out, *common, "--store", store, "--top-k", "5")
        assert result.exit_code == 0, result.output
        opened = Run.open(out)
        assert opened.info.parameters["store"] == store and opened.info.parameters["top_k"] == 5
        got = opened.result(0)
        t = len(got.tokens)
        assert got.stats.k == 5 and got.dense is not None and got.dense.dtype == dtype
        assert got.dense.shape == (3, 4, t, t)
        rtol = 1e-6 if dtype == np.float32 else 2e-3
        assert_stats_match_dense(got.stats, got.dense, got.spans, got.prediction_position, rtol)
    plain = _invoke("compute", inputs, "-o", tmp_path / "top-k", *common)
    assert plain.exit_code == 0, plain.output
    kept = Run.open(tmp_path / "top-k").result(0)
    assert kept.dense is None and kept.stats.k == 2 * len(kept.tokens)
    np.testing.assert_allclose(kept.stats.total, got.stats.total, rtol=1e-6)
    _assert_one_line_error(
        _invoke("compute", inputs, "-o", tmp_path / "x", *common, "--store", "sparse"), "--store"
    )
