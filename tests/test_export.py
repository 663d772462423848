"""`reportgen export`: a run's numbers as CSV, JSON and Parquet tables, checked against the run's
records read here (numpy on the run folder, not through the exporter)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
from conftest import DEMO_INPUTS, error_lines
from synthetic import LAYERS, result_for, run_info
from typer.testing import CliRunner

from reportgen.cli import app
from reportgen.data.results import PairFlow
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunWriter

pytestmark = pytest.mark.cli

runner = CliRunner()
TABLES = (
    "head_scores",
    "dataset_head_scores",
    "top_cells",
    "ablation",
    "layer_relevance",
    "layer_flows",
    "layer_ablation",
    "layer_tests",
)


def _csv(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _export(run, out, *args):
    result = runner.invoke(app, ["export", str(run), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


def _pair_flow(seed: int) -> PairFlow:
    """Wang et al. sums and pair counts on fixed numbers: groups ENV, LAN, no segment, target;
    no token in "no segment", and in layer 2 no pair from LAN to the target."""
    rng = np.random.default_rng([seed, 7])
    sums = rng.random((LAYERS, 4, 4))
    pairs = rng.integers(1, 6, (LAYERS, 4, 4)).astype(np.float64)
    pairs[:, 2, :] = pairs[:, :, 2] = sums[:, 2, :] = sums[:, :, 2] = 0
    pairs[1, 3, 1] = sums[1, 3, 1] = 0
    return PairFlow(("ENV", "LAN"), sums, pairs)


@pytest.fixture(scope="module")
def layered_run(tmp_path_factory):
    """A synthetic run holding everything by layer: rollout relevance and Wang et al.'s pairs
    on every input but the last (as a run where one input has none), and each input's layer
    ablation and layer knockout (`synthetic_ablation` has both)."""
    out = tmp_path_factory.mktemp("runs") / "layered"
    examples = examples_from_items(DEMO_INPUTS)
    with RunWriter(out, run_info()) as writer:
        for seed, example in enumerate(examples):
            result = result_for(example, seed)
            if seed < len(examples) - 1:
                t = len(result.tokens)
                relevance = np.random.default_rng(seed).random((LAYERS, t))
                result = replace(result, relevance=relevance, pairs=_pair_flow(seed))
            writer.add(result)
    return out


def test_csv_holds_the_runs_head_scores_top_cells_and_ablation(synthetic_run, tmp_path):
    out = tmp_path / "tables"
    result = _export(synthetic_run, out)
    assert "wrote head_scores.csv, dataset_head_scores.csv, top_cells.csv" in result.stderr
    run = Run.open(synthetic_run)
    metric = run.info.metric
    grids = run.head_scores(metric)
    heads = _csv(out / "head_scores.csv")
    layers, nheads = run.info.num_layers, run.info.num_heads
    assert len(heads) == len(run) * layers * nheads
    cells = _csv(out / "top_cells.csv")
    ablation = {row["id"]: row for row in _csv(out / "ablation.csv")}
    at = 0
    for i, result in enumerate(run.results()):
        for layer in range(layers):
            for head in range(nheads):
                row = heads[i * layers * nheads + layer * nheads + head]
                assert (row["id"], row["layer"], row["head"]) == (
                    result.example.id,
                    str(layer + 1),
                    str(head + 1),
                )
                assert float(row["score"]) == float(grids[i, layer, head])
                assert float(row["total"]) == float(result.stats.total[layer, head])
                assert float(row["prediction"]) == float(result.stats.prediction[layer, head])
        t = len(result.tokens)
        kept = result.stats.top_cells
        for layer, head, rank in zip(*np.nonzero(kept >= 0)):
            row = cells[at]
            at += 1
            q, k = int(kept[layer, head, rank]) // t, int(kept[layer, head, rank]) % t
            assert row["id"] == result.example.id
            assert (int(row["layer"]), int(row["head"]), int(row["rank"])) == (
                layer + 1,
                head + 1,
                rank + 1,
            )
            assert (int(row["query"]), int(row["key"])) == (q, k)
            assert (row["query_token"], row["key_token"]) == (result.tokens[q], result.tokens[k])
            assert float(row["value"]) == float(result.stats.top_values[layer, head, rank])
        ab = result.ablation
        assert ab is not None
        row = ablation[result.example.id]
        assert (row["intervention"], row["effect"]) == (ab.intervention, ab.effect)
        assert row["top_heads"] == " ".join(f"{la + 1}.{h + 1}" for la, h in ab.heads)
        assert float(row["value_top"]) == ab.value_top and int(row["draws"]) == ab.draws
        assert float(row["delta_random"]) == pytest.approx(ab.value_random - ab.value, abs=1e-15)
    assert at == len(cells) > 0
    mean = grids.astype(np.float64).mean(axis=0)
    dataset = _csv(out / "dataset_head_scores.csv")
    assert len(dataset) == layers * nheads
    for row in dataset:
        want = mean[int(row["layer"]) - 1, int(row["head"]) - 1]
        assert float(row["score"]) == pytest.approx(want, rel=1e-12)


def test_the_layer_tables_hold_relevance_flows_and_layer_ablation(layered_run, tmp_path):
    """Every array by layer the run records, read back here from the run folder, and the Wang
    means computed here from the sums and pair counts (the page's curves, in its order)."""
    out = tmp_path / "tables"
    result = _export(layered_run, out)
    assert "layer_flows.csv, layer_ablation.csv, layer_tests.csv" in result.stderr
    run = Run.open(layered_run)
    relevance = _csv(out / "layer_relevance.csv")
    flows = _csv(out / "layer_flows.csv")
    ablation = _csv(out / "layer_ablation.csv")
    want_relevance, want_flows, want_ablation = [], [], []
    for result in run.results():
        ident = result.example.id
        if result.relevance is not None:
            for layer in range(LAYERS):
                for j, token in enumerate(result.tokens):
                    value = result.relevance[layer, j]
                    want_relevance.append([ident, layer + 1, j, token, float(value)])
        if result.pairs is not None:  # ENV → LAN (the run's metric), each segment → target
            sums, pairs = result.pairs.sums, result.pairs.pairs
            env, lan, target = 0, 1, 3
            rest = np.ones((4, 4), bool)
            rest[lan, env] = rest[target, env] = rest[target, lan] = False
            curves = {
                "ENV → LAN": (sums[:, lan, env], pairs[:, lan, env]),
                "ENV → target": (sums[:, target, env], pairs[:, target, env]),
                "LAN → target": (sums[:, target, lan], pairs[:, target, lan]),
                "other pairs": (sums[:, rest].sum(-1), pairs[:, rest].sum(-1)),
            }
            for name, (total, count) in curves.items():
                for layer in range(LAYERS):
                    if count[layer] > 0:
                        mean = total[layer] / count[layer]
                        want_flows.append([ident, layer + 1, name, mean, int(count[layer])])
        ab = result.ablation
        assert ab is not None and len(ab.layers) == LAYERS and ab.knockout is not None
        for layer, value in enumerate(ab.layers):
            want_ablation.append([ident, layer + 1, "mean", "logprob", value, value - ab.value])
        for layer, value in enumerate(ab.knockout.layers):
            row = [ident, layer + 1, "knockout:ENV->LAN", "logprob", value, value - ab.value]
            want_ablation.append(row)
    got = [
        [r["id"], int(r["layer"]), int(r["position"]), r["token"], float(r["relevance"])]
        for r in relevance
    ]
    assert got == want_relevance and len(got) > 0
    got = [[r["id"], int(r["layer"]), r["flow"], float(r["value"]), int(r["pairs"])] for r in flows]
    assert [row[:3] + row[4:] for row in got] == [row[:3] + row[4:] for row in want_flows]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want_flows], rtol=1e-14)
    assert [r[:3] for r in got].count([run.ids[0], 2, "LAN → target"]) == 0, "no pairs there"
    got = [
        [r["id"], int(r["layer"]), r["intervention"], r["effect"], float(r["value"])]
        for r in ablation
    ]
    assert got == [row[:5] for row in want_ablation]
    deltas = [float(r["delta"]) for r in ablation]
    np.testing.assert_allclose(deltas, [row[5] for row in want_ablation], rtol=0, atol=1e-15)
    # Each layer's changes over the inputs: scipy's sign test and BH over the layers.
    tests = _csv(out / "layer_tests.csv")
    want_tests = []
    for intervention in ("mean", "knockout:ENV->LAN"):
        by_layer = np.array(
            [
                [row[5] for row in want_ablation if row[2] == intervention and row[1] == la + 1]
                for la in range(LAYERS)
            ]
        )  # [layers, inputs]
        below, above = (by_layer < 0).sum(1), (by_layer > 0).sum(1)
        p = np.array([scipy.stats.binomtest(b, b + a).pvalue for b, a in zip(below, above)])
        q = scipy.stats.false_discovery_control(p)
        for la in range(LAYERS):
            row = [la + 1, intervention, "logprob", len(run), int(below[la]), int(above[la])]
            want_tests.append([*row, by_layer[la].mean(), p[la], q[la]])
    got = [
        [
            int(r["layer"]),
            r["intervention"],
            r["effect"],
            int(r["n"]),
            int(r["below"]),
            int(r["above"]),
        ]
        for r in tests
    ]
    assert got == [row[:6] for row in want_tests]
    numbers = [[float(r["mean_delta"]), float(r["p"]), float(r["q"])] for r in tests]
    np.testing.assert_allclose(numbers, [row[6:] for row in want_tests], rtol=1e-12)
    # Under another metric the flow curve follows it; without a flow metric there is none.
    _export(layered_run, tmp_path / "total", "--metric", "total", "-q")
    names = {r["flow"] for r in _csv(tmp_path / "total" / "layer_flows.csv")}
    assert names == {"ENV → target", "LAN → target", "other pairs"}


def test_a_run_without_layer_data_has_empty_layer_tables(synthetic_run, tmp_path):
    bare = tmp_path / "bare"
    with RunWriter(bare, run_info()) as writer:
        for seed, example in enumerate(examples_from_items(DEMO_INPUTS)):
            writer.add(replace(result_for(example, seed), ablation=None))  # --ablate-k 0
    _export(bare, tmp_path / "csv", "-q")
    _export(bare, tmp_path / "json", "--format", "json", "-q")
    headers = {
        "ablation": "id,intervention,effect,top_heads,value,value_top,value_random,delta_top,"
        "delta_random,draws",
        "layer_relevance": "id,layer,position,token,relevance",
        "layer_flows": "id,layer,flow,value,pairs",
        "layer_ablation": "id,layer,intervention,effect,value,delta",
        "layer_tests": "layer,intervention,effect,n,mean_delta,below,above,p,q",
    }
    for name, header in headers.items():
        text = (tmp_path / "csv" / f"{name}.csv").read_text("utf-8")
        assert text.splitlines() == [header], name
        assert json.loads((tmp_path / "json" / f"{name}.json").read_text("utf-8")) == []
    # The synthetic run has no relevance and no pairs, but its layer ablation.
    _export(synthetic_run, tmp_path / "syn", "-q")
    assert _csv(tmp_path / "syn" / "layer_relevance.csv") == []
    assert _csv(tmp_path / "syn" / "layer_flows.csv") == []
    assert len(_csv(tmp_path / "syn" / "layer_ablation.csv")) == len(DEMO_INPUTS) * 2 * LAYERS


@pytest.mark.parametrize("fixture", ["synthetic_run", "layered_run"])
def test_json_and_parquet_hold_the_same_tables(fixture, request, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")  # the test extra installs it
    run = request.getfixturevalue(fixture)
    _export(run, tmp_path / "csv", "--format", "csv")
    _export(run, tmp_path / "json", "--format", "json", "-q")
    _export(run, tmp_path / "parquet", "--format", "parquet", "-q")
    for name in TABLES:
        from_json = json.loads((tmp_path / "json" / f"{name}.json").read_text("utf-8"))
        from_csv = _csv(tmp_path / "csv" / f"{name}.csv")
        assert [{k: str(v) for k, v in row.items()} for row in from_json] == from_csv, name
        assert pq.read_table(tmp_path / "parquet" / f"{name}.parquet").to_pylist() == from_json
        if fixture == "layered_run":
            assert from_json, f"{name} is empty"


def test_export_under_another_metric(synthetic_run, tmp_path):
    _export(synthetic_run, tmp_path / "t", "--metric", "total", "-q")
    total = Run.open(synthetic_run).head_scores("total").reshape(-1)
    scores = [float(r["score"]) for r in _csv(tmp_path / "t" / "head_scores.csv")]
    assert scores == [float(x) for x in total]


def test_export_errors(synthetic_run, tmp_path, monkeypatch):
    def error(*args):
        result = runner.invoke(app, ["export", *map(str, args)])
        assert result.exit_code == 2, result.output
        [line] = error_lines(result.stderr)
        return line

    assert "unknown --format 'xlsx' (use csv, json, parquet)" in error(
        synthetic_run, "-o", tmp_path / "x", "--format", "xlsx"
    )
    assert "unknown metric 'flux'" in error(synthetic_run, "-o", tmp_path / "x", "--metric", "flux")
    assert "not a run folder" in error(tmp_path, "-o", tmp_path / "x")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    line = error(synthetic_run, "-o", tmp_path / "x", "--format", "parquet")
    assert "needs pyarrow" in line and "reportgen[parquet]" in line
    assert not (tmp_path / "x").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert "--force" in error(synthetic_run, "-o", tmp_path / "mine")


def test_export_imports_no_torch(synthetic_run, tmp_path):
    code = (
        "import sys\n"
        "from reportgen.cli import app\n"
        "try:\n"
        f"    app(['export', {str(synthetic_run)!r}, '-o', {str(tmp_path / 'o')!r}, '-q'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert not [m for m in ('torch', 'transformers') if m in sys.modules]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "o" / "head_scores.csv").is_file()
