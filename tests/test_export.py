"""`reportgen export`: a run's numbers as CSV, JSON and Parquet tables, checked against the run's
records read here (numpy on the run folder, not through the exporter)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import error_lines
from typer.testing import CliRunner

from reportgen.cli import app
from reportgen.records import Run

pytestmark = pytest.mark.cli

runner = CliRunner()
TABLES = ("head_scores", "dataset_head_scores", "top_cells", "ablation")


def _csv(path):
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _export(run, out, *args):
    result = runner.invoke(app, ["export", str(run), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


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


def test_json_and_parquet_hold_the_same_tables(synthetic_run, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")  # the test extra installs it
    _export(synthetic_run, tmp_path / "csv", "--format", "csv")
    _export(synthetic_run, tmp_path / "json", "--format", "json", "-q")
    _export(synthetic_run, tmp_path / "parquet", "--format", "parquet", "-q")
    for name in TABLES:
        from_json = json.loads((tmp_path / "json" / f"{name}.json").read_text("utf-8"))
        from_csv = _csv(tmp_path / "csv" / f"{name}.csv")
        assert [{k: str(v) for k, v in row.items()} for row in from_json] == from_csv, name
        assert pq.read_table(tmp_path / "parquet" / f"{name}.parquet").to_pylist() == from_json


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
