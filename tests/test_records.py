"""Run folders: results round-trip unchanged, writes are atomic, timestamps reproducible, and a
run folder is data: record paths stay inside it and every array's shape is checked.

Most tests use a synthetic run (numpy only: the unit tier); the first ones check what the engine
and `reportgen.compute` write (e2e)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import DEMO_INPUTS

from reportgen.fsutil import OutputError
from reportgen.inputs import examples_from_items
from reportgen.records import Run, RunError, RunWriter, timestamp
from reportgen.settings import Settings

STATS = {
    "total": np.float64,
    "prediction": np.float64,
    "flow": np.float64,
    "top_cells": np.int32,
    "top_values": np.float32,
}
METRICS = ("total", "prediction", "flow:ENV->LAN")


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
        "unknown",
    ):
        assert getattr(a, name) == getattr(b, name), name
    assert a.stats.segments == b.stats.segments == tuple(s.name for s in a.spans)
    for name, dtype in STATS.items():
        x, y = getattr(a.stats, name), getattr(b.stats, name)
        assert x.dtype == y.dtype == dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.dense is None:
        assert b.dense is None
    else:
        assert b.dense is not None and a.dense.dtype == b.dense.dtype
        np.testing.assert_array_equal(a.dense, b.dense)
    for metric in METRICS:
        np.testing.assert_array_equal(a.head_scores(metric), b.head_scores(metric))


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["top-k", "dense", "dense-float16"])
def test_results_round_trip_through_a_run_folder(loaded, tmp_path, gpt2_run, store):
    from reportgen.engine import compute

    lm = loaded["gpt2"]
    settings = Settings(metric="flow:ENV->LAN", store=store)
    results = list(compute(examples_from_items(DEMO_INPUTS), lm, settings))
    dtype = {"top-k": None, "dense": np.float32, "dense-float16": np.float16}[store]
    for result in results:
        assert (result.dense is None) if dtype is None else (result.dense.dtype == dtype)
    info = Run.open(gpt2_run).info
    with RunWriter(tmp_path / "run", info) as writer:
        for result in results:
            writer.add(result)
    run = Run.open(tmp_path / "run")
    assert run.info == info and len(run) == len(results)
    assert [e.id for e in run.entries] == [r.example.id for r in results]
    for original, loaded_back in zip(results, run.results()):
        _assert_same(original, loaded_back)
    for metric in METRICS:
        grids = run.head_scores(metric)
        assert grids.shape == (3, lm.num_layers, lm.num_heads) and grids.dtype == np.float32
        for grid, result in zip(grids, results, strict=True):
            np.testing.assert_array_equal(grid, result.head_scores(metric))


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
    assert run["parameters"]["store"] == "top-k" and run["parameters"]["top_k"] is None
    assert manifest["format"] == "reportgen-run/3" and manifest["count"] == 3
    lines = (gpt2_run / "entries.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 3
    example = json.loads(lines[0])
    assert example["id"] == "reference" and example["target"] == "horse"
    assert example["tokens"][:2] == ["<CHI>", "painted"]
    assert (gpt2_run / example["record"]).is_file()
    from safetensors.numpy import load_file

    arrays = load_file(str(gpt2_run / example["record"]))
    assert {k: v.dtype for k, v in arrays.items()} == STATS, "no dense S unless --store dense"
    layers, heads, t = run["num_layers"], run["num_heads"], len(example["tokens"])
    assert arrays["total"].shape == arrays["prediction"].shape == (layers, heads)
    assert arrays["flow"].shape == (layers, heads, 3, 3)  # ENV, LAN, no segment
    assert arrays["top_cells"].shape == arrays["top_values"].shape == (layers, heads, 2 * t)


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
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "reportgen-run/2"}))
    with pytest.raises(RunError, match=r"format reportgen-run/2, written by a reportgen without"):
        Run.open(tmp_path)


@pytest.mark.unit
def test_ablation_records_round_trip_with_curve_draws_donor_and_knockout(tmp_path):
    from synthetic import result_for, run_info, synthetic_ablation

    from reportgen.data.results import Knockout

    [example] = examples_from_items(
        [{"segments": [{"name": "ENV", "text": "a b c"}, {"name": "LAN", "text": "d e"}]}]
    )
    base = result_for(example, 3)
    resampled = dataclasses.replace(
        synthetic_ablation(((0, 1), (2, 3)), -1.25, 4),
        intervention="resample",
        effect="logit-diff",
        donor="other",
        knockout=Knockout("ENV", "LAN", -2.5),
    )
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(dataclasses.replace(base, ablation=resampled))
        writer.add(
            dataclasses.replace(base, example=dataclasses.replace(example, id="2"), ablation=None)
        )
    back = Run.open(tmp_path / "run")
    assert back.entries[0].ablation == resampled
    assert back.entries[1].ablation is None
    a = back.entries[0].ablation
    assert a.draws == 8 and a.value_random == pytest.approx(np.mean(a.random_values))
    assert a.delta_knockout == pytest.approx(-1.25) and a.delta_curve[-1] == a.delta_top
    assert a.layers == resampled.layers and len(a.layers) > 0


@pytest.mark.unit
def test_ablation_entries_from_before_the_layer_level_ablation_read_as_none(tmp_path):
    from synthetic import result_for, run_info, synthetic_ablation

    [example] = examples_from_items(
        [{"segments": [{"name": "ENV", "text": "a b c"}, {"name": "LAN", "text": "d e"}]}]
    )
    ablation = synthetic_ablation(((0, 1),), -1.0, 1)
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(dataclasses.replace(result_for(example, 3), ablation=ablation))
    entries = tmp_path / "run" / "entries.jsonl"
    raw = json.loads(entries.read_text("utf-8"))
    del raw["ablation"]["layers"], raw["ablation"]["knockout"]["layers"]
    entries.write_text(json.dumps(raw) + "\n", "utf-8")
    a = Run.open(tmp_path / "run").entries[0].ablation
    assert a is not None and a.knockout is not None
    assert a.layers == () and a.knockout.layers == () and a.delta_layer_knockouts == ()
    assert a.curve == ablation.curve


@pytest.mark.unit
def test_unknown_words_round_trip_and_older_runs_have_none(synthetic_run, tmp_path):
    """The words read as the unknown token come back as written; an entry without the field
    (runs from before it) has none; a forged one (another text, a position or characters
    outside the input) is an error naming the entry, not a word shown on a page."""
    from synthetic import result_for, run_info

    from reportgen.data.results import UnknownToken

    assert all(e.unknown == () for e in Run.open(synthetic_run).entries)
    assert "unknown" not in (synthetic_run / "entries.jsonl").read_text("utf-8")
    [example] = examples_from_items(
        [{"segments": [{"name": "ENV", "text": "a zebra c"}, {"name": "LAN", "text": "d <b>e"}]}]
    )
    plain = result_for(example, 3)
    text = example.text
    unknown = (
        UnknownToken(1, "zebra", text.index("zebra"), text.index("zebra") + 5),
        UnknownToken(4, "<b>e", text.index("<b>e"), len(text)),
    )
    tokens = ("a", "[UNK]", "c", "d", "[UNK]")
    result = dataclasses.replace(plain, tokens=tokens, unknown=unknown)
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(result)
    [entry] = Run.open(tmp_path / "run").entries
    assert entry.unknown == unknown and Run.open(tmp_path / "run").result(0).unknown == unknown
    path = tmp_path / "run" / "entries.jsonl"
    good = json.loads(path.read_text("utf-8"))
    assert good["unknown"][0] == {"position": 1, "text": "zebra", "start": 2, "end": 7}
    forged = [
        ({"text": "horse"}, "the input's text there is 'zebra'"),
        ({"position": 5}, "outside the input's tokens or text"),
        ({"end": len(text) + 1}, "outside the input's tokens or text"),
        ({"start": True}, "must be integers"),
    ]
    for change, message in forged:
        raw = {**good, "unknown": [{**good["unknown"][0], **change}]}
        path.write_text(json.dumps(raw) + "\n", "utf-8")
        with pytest.raises(RunError, match=r"entry 1 is incomplete or malformed .*" + message):
            list(Run.open(tmp_path / "run").entries)


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


# --- a run folder is data: shapes checked, record paths confined ---------------------------------


def _copy(synthetic_run, tmp_path):
    shutil.copytree(synthetic_run, tmp_path / "run")
    return tmp_path / "run"


def _set_record(run_dir, index: int, record: str) -> None:
    """Point entry `index` of entries.jsonl at `record` (the manifest still agrees)."""
    path = run_dir / "entries.jsonl"
    lines = path.read_text("utf-8").splitlines(keepends=True)
    entry = json.loads(lines[index])
    entry["record"] = record
    lines[index] = json.dumps(entry, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), "utf-8")


def _reading_fails(
    run_dir, index: int, *fragments: str, metrics=("total", "flow:ENV->LAN")
) -> None:
    """Every way of reading the run fails with a RunError holding `fragments`: the result, the
    grids of `metrics`, and rendering a site (which writes nothing)."""
    from reportgen.site import render_site

    run = Run.open(run_dir)
    attempts = [
        lambda: run.result(index),
        lambda: list(run.results()),
        *[lambda metric=metric: run.head_scores(metric) for metric in metrics],
        lambda: render_site(run, run_dir.parent / "site", Settings()),
    ]
    for attempt in attempts:
        with pytest.raises(RunError) as caught:
            attempt()
        for fragment in fragments:
            assert fragment in str(caught.value)
    assert not (run_dir.parent / "site").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "shape", "want"),
    [
        ("total", (3, 5), "(3, 4)"),
        ("prediction", (4, 3), "(3, 4)"),
        ("flow", (3, 4, 2, 2), "(3, 4, 3, 3)"),
        ("top_values", (3, 4, 7), "(3, 4, 22)"),  # 2T, T = 11
    ],
)
def test_a_record_whose_arrays_disagree_with_its_entry_is_named(
    synthetic_run, tmp_path, key, shape, want
):
    from safetensors.numpy import load_file, save_file

    run_dir = _copy(synthetic_run, tmp_path)
    record = run_dir / "records" / "000002.safetensors"
    arrays = load_file(str(record))
    arrays[key] = np.zeros(shape, arrays[key].dtype)
    save_file(arrays, str(record))
    run = Run.open(run_dir)
    for other in (0, 2):  # the other records still read
        run.result(other)
    message = f"{record}: '{key}' has shape {shape}, not {want}"
    for attempt in (lambda: run.result(1), lambda: list(run.results())):
        with pytest.raises(RunError, match="run folder is damaged") as caught:
            attempt()
        assert message in str(caught.value)
    if key in ("total", "prediction", "flow"):  # the arrays the grids read
        metric = {"total": "total", "prediction": "prediction"}.get(key, "flow:ENV->LAN")
        with pytest.raises(RunError) as caught:
            run.head_scores(metric)
        assert message in str(caught.value)


@pytest.mark.unit
def test_a_record_missing_an_array_or_with_a_wrong_dense_is_named(synthetic_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    run_dir = _copy(synthetic_run, tmp_path)
    record = run_dir / "records" / "000001.safetensors"
    arrays = load_file(str(record))
    save_file({k: v for k, v in arrays.items() if k != "flow"}, str(record))
    # the grids read only their own array: total still reads, the run's flow metric does not
    _reading_fails(run_dir, 0, str(record), "no 'flow' array", metrics=["flow:ENV->LAN"])
    assert Run.open(run_dir).head_scores("total").shape == (3, 3, 4)
    t = len(Run.open(run_dir).entries[0].tokens)
    save_file({**arrays, "dense": np.zeros((3, 4, t, t - 1), np.float32)}, str(record))
    with pytest.raises(RunError, match=rf"'dense' has shape \(3, 4, {t}, {t - 1}\)"):
        Run.open(run_dir).result(0)
    save_file({**arrays, "dense": np.ones((3, 4, t, t), np.float32)}, str(record))
    assert Run.open(run_dir).result(0).dense.shape == (3, 4, t, t)


@pytest.mark.unit
@pytest.mark.timeout(60, method="signal")  # a FIFO opened for reading would block forever
@pytest.mark.parametrize(
    "where", ["absolute", "dotdot", "inner-dotdot", "backslash", "fifo", "symlink", "folder"]
)
def test_a_record_path_outside_the_run_folder_is_refused(synthetic_run, tmp_path, where):
    """Entries name their record relative to the run folder, as a regular file in it: an
    absolute path, `..`, a FIFO, a device, a link out of the folder are refused, named, before
    anything is opened (a FIFO would hang the reader)."""
    run_dir = _copy(synthetic_run, tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(run_dir / "records" / "000002.safetensors", outside)  # a valid record
    record = {
        "absolute": str(outside),
        "dotdot": "../outside.safetensors",
        "inner-dotdot": "records/../../outside.safetensors",
        "backslash": "records\\000002.safetensors",
        "fifo": "records/fifo.safetensors",
        "symlink": "records/link.safetensors",
        "folder": "records",
    }[where]
    if where == "fifo":
        os.mkfifo(run_dir / record)
    if where == "symlink":
        (run_dir / record).symlink_to(outside)
    _set_record(run_dir, 1, record)
    if where in ("fifo", "symlink", "folder"):
        _reading_fails(run_dir, 1, str(run_dir / record), "not a regular file")
    else:
        _reading_fails(run_dir, 1, f"entry '{Run.open(run_dir).ids[1]}' names record", "outside")
    Run.open(run_dir).result(0)  # the other entries still read


@pytest.mark.cli
@pytest.mark.timeout(120)
def test_rendering_a_run_whose_record_is_a_fifo_exits_2_and_never_hangs(synthetic_run, tmp_path):
    """The command line, in a process of its own killed after 60 s if it blocks on the FIFO."""
    run_dir = _copy(synthetic_run, tmp_path)
    os.mkfifo(run_dir / "records" / "fifo.safetensors")
    _set_record(run_dir, 0, "records/fifo.safetensors")
    code = textwrap.dedent(
        """
        import sys
        from reportgen.cli import main
        sys.argv = ["reportgen", "render", sys.argv[1], "-o", sys.argv[2], "-q"]
        main()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run_dir), str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "fifo.safetensors: not a regular file" in done.stderr
    assert not (tmp_path / "site").exists()


@pytest.mark.unit
def test_a_record_at_512_tokens_and_144_heads_is_at_most_a_megabyte(tmp_path):
    """The default store (exact reductions and the top 2T cells, at most 512, per head) keeps a
    12 x 12 model's example of 512 tokens under 1 MB (the dense S would be 151 MB)."""
    from synthetic import run_info, synthetic_ablation

    from reportgen.data.results import HeadStats, Result, TokenSpan, default_top_k

    layers, heads, t = 12, 12, 512
    k = default_top_k(t)
    assert k == 512
    rng = np.random.default_rng(0)
    [example] = examples_from_items(
        [
            {
                "segments": [
                    {"name": "ENV", "text": " ".join(["w"] * 256)},
                    {"name": "LAN", "text": " ".join(["v"] * 256)},
                ]
            }
        ]
    )
    start = rng.integers(0, t * t, (layers, heads, 1))
    cells = ((start + 509 * np.arange(k)) % (t * t)).astype(np.int32)  # k distinct cells a head
    values = -np.sort(-rng.random((layers, heads, k)), axis=-1).astype(np.float32)
    stats = HeadStats(
        segments=("ENV", "LAN"),
        total=rng.random((layers, heads)) + values.sum(-1),
        prediction=rng.random((layers, heads)),
        flow=rng.random((layers, heads, 3, 3)),
        top_cells=cells,
        top_values=values,
    )
    result = Result(
        example=example,
        tokens=("w",) * 256 + ("v",) * 256,
        spans=(TokenSpan("ENV", 0, 256), TokenSpan("LAN", 256, 512)),
        target="v",
        target_given=False,
        predicted="v",
        value=0.5,
        loss=0.69,
        prediction_position=t - 1,
        stats=stats,
        ablation=synthetic_ablation(((0, 0), (1, 1), (2, 2)), -0.69, 0),
    )
    with RunWriter(tmp_path / "run", run_info(num_layers=layers, num_heads=heads)) as writer:
        writer.add(result)
    size = (tmp_path / "run" / "records" / "000001.safetensors").stat().st_size
    assert size <= 1_000_000, f"{size} bytes"
    back = Run.open(tmp_path / "run").result(0)
    np.testing.assert_array_equal(back.stats.top_cells, cells)
    assert back.dense is None


def _modes(folder) -> set[str]:
    """Every file's and folder's permission bits under `folder`, as octal text."""
    return {oct(p.stat().st_mode & 0o777) for p in [folder, *folder.rglob("*")]}


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.e2e
def test_a_computed_run_is_readable_by_whoever_the_umask_allows(gpt2_run, synthetic_run, tmp_path):
    """safetensors' own save_file writes records 0600: a run shared on a cluster's file system
    could not be read by the group. Files follow the umask like any other file."""
    expected = {oct(0o666 & ~_umask()), oct(0o777 & ~_umask())}
    assert _modes(gpt2_run) <= expected  # written through a partial run (compute)
    assert _modes(_many(Run.open(synthetic_run), tmp_path / "run", 2).path) <= expected


@pytest.mark.unit
def test_a_counterfactual_round_trips_and_is_part_of_the_inputs_digest(tmp_path):
    from synthetic import result_for, run_info

    from reportgen.records import inputs_digest

    item = {"segments": [{"name": "ENV", "text": "a b c"}, {"name": "LAN", "text": "d e"}]}
    [plain] = examples_from_items([item])
    [example] = examples_from_items([{**item, "counterfactual": {"ENV": "a x c"}}])
    assert example.counterfactual and not plain.counterfactual
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(result_for(example, 3))
    assert Run.open(tmp_path / "run").entries[0].example == example
    assert inputs_digest([example]) != inputs_digest([plain])


@pytest.mark.unit
def test_a_resample_run_from_before_by_position_donors_is_not_taken_for_one():
    """Resample ablation took the donor's mean over its tokens before it took the donor's
    output at each position: a run recorded then differs, by name, from one recorded now (so
    --resume and compare's reuse refuse to mix the two)."""
    from synthetic import run_info

    from reportgen.pipeline import recorded_parameters
    from reportgen.records import info_differences

    now = recorded_parameters(Settings(ablation="resample"), "causal-lm", 40, 1)
    assert now["resample"] == "by-position"
    assert "resample" not in recorded_parameters(Settings(ablation="mean"), "causal-lm", 40, 1)
    assert "resample" not in recorded_parameters(
        Settings(ablation="resample", ablate_k=0), "causal-lm", 40, 1
    )
    then = {key: value for key, value in now.items() if key != "resample"}
    found = info_differences(run_info(parameters=then), run_info(parameters=now))
    assert len(found) == 1 and found[0][0].startswith("resample ablation's replacement")
    assert found[0][1:] == ("null", "by-position")
