"""Run folders: results round-trip unchanged, writes are atomic, timestamps reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DEMO_INPUTS

from reportgen.fsutil import OutputError
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunError, RunWriter, timestamp
from reportgen.saliency import compute
from reportgen.settings import Settings


def _assert_same(a, b):
    assert a.example == b.example
    for name in (
        "tokens",
        "spans",
        "target",
        "target_given",
        "predicted",
        "value",
        "loss",
        "prediction_position",
        "ablation",
    ):
        assert getattr(a, name) == getattr(b, name), name
    assert a.scores.dtype == b.scores.dtype == np.float32
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.head_scores.keys() == b.head_scores.keys()
    for key in a.head_scores:
        np.testing.assert_array_equal(a.head_scores[key], b.head_scores[key])


def test_results_round_trip_through_a_run_folder(loaded, tmp_path, gpt2_run):
    lm = loaded["gpt2"]
    settings = Settings(metric="flow:ENV->LAN")
    results = list(compute(examples_from_items(DEMO_INPUTS), lm, settings))
    info = Run.open(gpt2_run).info
    with RunWriter(tmp_path / "run", info) as writer:
        for result in results:
            writer.add(result)
    run = Run.open(tmp_path / "run")
    assert run.info == info and len(run) == len(results)
    assert [e.id for e in run.entries] == [r.example.id for r in results]
    for original, loaded_back in zip(results, run.results()):
        _assert_same(original, loaded_back)
    grids = run.head_scores("flow:ENV->LAN")
    assert grids.shape == (3, lm.num_layers, lm.num_heads)
    np.testing.assert_array_equal(grids[0], results[0].head_scores["flow:ENV->LAN"])


def test_manifest_describes_the_run(gpt2_run):
    manifest = json.loads((gpt2_run / "manifest.json").read_text("utf-8"))
    run = manifest["run"]
    for key in (
        "model",
        "weights_sha256",
        "attn_implementation",
        "dtype",
        "device",
        "method",
        "metric",
        "parameters",
        "versions",
        "command",
        "created",
    ):
        assert key in run
    assert set(run["versions"]) >= {"transformers", "torch", "reportgen"}
    example = manifest["examples"][0]
    assert example["id"] == "reference" and example["target"] == "horse"
    assert example["tokens"][:2] == ["<CHI>", "painted"]
    assert (gpt2_run / example["record"]).is_file()


def test_failed_write_keeps_the_previous_run(gpt2_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(gpt2_run, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run = Run.open(out)
    with pytest.raises(RuntimeError, match="boom"), RunWriter(out, run.info) as writer:
        writer.add(run.result(0))
        raise RuntimeError("boom")
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no temporary folder left"


def test_a_folder_reportgen_did_not_write_is_not_replaced(gpt2_run, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    info = Run.open(gpt2_run).info
    with (
        pytest.raises(OutputError, match="not written by reportgen"),
        RunWriter(tmp_path / "precious", info),
    ):
        pass
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "x"


def test_opening_something_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run folder"):
        Run.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="cannot be read"):
        Run.open(tmp_path)


def test_timestamp_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert timestamp() == "2023-11-14T22:13:20Z"
