"""Run folders: results round-trip unchanged, writes are atomic, timestamps reproducible.

Most tests use a synthetic run (numpy only: the unit tier); the first two check what the engine
and `reportgen.compute` write (e2e)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DEMO_INPUTS

from reportgen.fsutil import OutputError
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunError, RunWriter, timestamp
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


@pytest.mark.e2e
def test_results_round_trip_through_a_run_folder(loaded, tmp_path, gpt2_run):
    from reportgen.engine import compute

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


@pytest.mark.e2e
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
    assert manifest["format"] == "reportgen-run/2" and manifest["count"] == 3
    lines = (gpt2_run / "entries.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 3
    example = json.loads(lines[0])
    assert example["id"] == "reference" and example["target"] == "horse"
    assert example["tokens"][:2] == ["<CHI>", "painted"]
    assert (gpt2_run / example["record"]).is_file()


@pytest.mark.unit
def test_failed_write_keeps_the_previous_run(synthetic_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(synthetic_run, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run = Run.open(out)
    with pytest.raises(RuntimeError, match="boom"), RunWriter(out, run.info) as writer:
        writer.add(run.result(0))
        raise RuntimeError("boom")
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no temporary folder left"


@pytest.mark.unit
def test_a_folder_reportgen_did_not_write_is_not_replaced(synthetic_run, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    info = Run.open(synthetic_run).info
    with (
        pytest.raises(OutputError, match="not written by reportgen"),
        RunWriter(tmp_path / "precious", info),
    ):
        pass
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "x"


@pytest.mark.unit
def test_opening_something_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run folder"):
        Run.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="cannot be read"):
        Run.open(tmp_path)


@pytest.mark.unit
def test_timestamp_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert timestamp() == "2023-11-14T22:13:20Z"


def _many(run: Run, out, n: int) -> Run:
    """A run of `n` entries (the fixture's examples over and over, with fresh ids)."""
    from dataclasses import replace

    results = list(run.results())
    with RunWriter(out, run.info) as writer:
        for i in range(n):
            result = results[i % len(results)]
            writer.add(replace(result, example=replace(result.example, id=f"x{i}")))
    return Run.open(out)


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "entries.jsonl").read_bytes().splitlines()]


@pytest.mark.unit
def test_writer_streams_entries_to_their_file_and_keeps_none(synthetic_run, tmp_path):
    import tracemalloc

    run = Run.open(synthetic_run)
    result = run.result(0)
    tracemalloc.start()
    try:
        with RunWriter(tmp_path / "run", run.info) as writer:
            for _ in range(20):
                writer.add(result)
            settled = tracemalloc.get_traced_memory()[0]
            entries = writer._tmp / "entries.jsonl"
            writer._entries.flush()
            size = entries.stat().st_size
            for _ in range(300):
                writer.add(result)
            grown = tracemalloc.get_traced_memory()[0] - settled
            writer._entries.flush()
            assert entries.stat().st_size > size, "entries go to the file as they come"
            assert not (writer._tmp / "manifest.json").exists(), "the manifest comes last"
    finally:
        tracemalloc.stop()
    # Held entries would cost ~1.5 KB each as dicts.
    assert grown < 60_000, f"the writer grew by {grown} bytes over 300 results"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["count"] == 320
    lines = _lines(tmp_path / "run")
    assert len(lines) == 320 and lines[-1]["record"] == "records/000320.safetensors"


@pytest.mark.unit
@pytest.mark.parametrize("n", [0, 1, 3])
def test_runs_of_0_1_and_n_entries_open(synthetic_run, tmp_path, n):
    opened = _many(Run.open(synthetic_run), tmp_path / f"run{n}", n)
    assert list(opened.ids) == [f"x{i}" for i in range(n)]
    assert len(_lines(opened.path)) == n


@pytest.mark.unit
def test_a_run_with_many_entries_opens_lazily_and_reads_back(synthetic_run, tmp_path):
    import tracemalloc
    from dataclasses import replace

    many = _many(Run.open(synthetic_run), tmp_path / "run", 400)
    lines = _lines(many.path)
    tracemalloc.start()
    try:
        run = Run.open(many.path)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 150_000, f"Run.open holds {held} bytes for 400 entries"
    assert len(run) == 400 and run.ids == tuple(e["id"] for e in lines)
    entries = list(run.entries)
    assert [e.record for e in entries] == [e["record"] for e in lines]
    assert run.entries[-1] == entries[399] and run.entries[1:3] == entries[1:3]
    with pytest.raises(IndexError):
        run.entries[400]
    original = Run.open(synthetic_run).result(123 % 3)
    _assert_same(run.result(123), replace(original, example=replace(original.example, id="x123")))
    assert run.head_scores(run.info.metric).shape == (400, run.info.num_layers, run.info.num_heads)


@pytest.mark.unit
def test_a_text_separator_inside_an_entry_is_not_a_line_break(synthetic_run, tmp_path):
    """json keeps U+2028, NEL and FF raw (ensure_ascii=False); only LF ends an entry."""
    from dataclasses import replace

    run = Run.open(synthetic_run)
    odd = "a\u2028b\x85c\x0cd\x1ee"
    result = run.result(0)
    with RunWriter(tmp_path / "run", run.info) as writer:
        writer.add(replace(result, example=replace(result.example, id=odd)))
        writer.add(run.result(1))
    again = Run.open(tmp_path / "run")
    assert again.ids == (odd, run.ids[1])


@pytest.mark.unit
def test_an_old_run_folder_names_its_version(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "reportgen-run/1"}))
    with pytest.raises(RunError, match=r"format reportgen-run/1, written by reportgen 0\.1"):
        Run.open(tmp_path)


@pytest.mark.unit
def test_a_run_whose_entries_disagree_with_the_manifest_count(synthetic_run, tmp_path):
    import shutil

    shutil.copytree(synthetic_run, tmp_path / "run")
    path = tmp_path / "run" / "entries.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    with pytest.raises(RunError, match="2 entries, but the manifest counts 3"):
        Run.open(tmp_path / "run")


@pytest.mark.unit
def test_a_malformed_entry_is_named(synthetic_run, tmp_path):
    import shutil

    shutil.copytree(synthetic_run, tmp_path / "run")
    path = tmp_path / "run" / "entries.jsonl"
    path.write_text(path.read_text("utf-8").replace('"tokens"', '"tokenz"', 1), "utf-8")
    with pytest.raises(RunError, match=r"entries.jsonl: entry 1 is incomplete .*tokens"):
        Run.open(tmp_path / "run")


@pytest.mark.unit
def test_a_manifest_replaced_after_opening_is_not_misread(synthetic_run, tmp_path):
    import shutil

    shutil.copytree(synthetic_run, tmp_path / "run")
    run = Run.open(tmp_path / "run")
    _many(run, tmp_path / "run", 5)  # another compute replaces the folder
    with pytest.raises(RunError, match="changed since the run was opened"):
        run.result(0)


@pytest.mark.unit
@pytest.mark.parametrize("when", ["first", "middle"])
def test_an_interrupted_writer_leaves_nothing_behind(synthetic_run, tmp_path, when):
    run = Run.open(synthetic_run)
    with pytest.raises(KeyboardInterrupt), RunWriter(tmp_path / "new", run.info) as writer:
        if when == "middle":
            writer.add(run.result(0))
            writer.add(run.result(1))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [], "no run and no temporary folder"


@pytest.mark.unit
def test_a_result_that_cannot_be_written_fails_the_run_cleanly(synthetic_run, tmp_path):
    from dataclasses import replace

    run = Run.open(synthetic_run)
    with (
        pytest.raises(ValueError, match="Out of range float"),
        RunWriter(tmp_path / "new", run.info) as writer,
    ):
        writer.add(run.result(0))
        writer.add(replace(run.result(1), value=float("nan")))
    assert list(tmp_path.iterdir()) == []
