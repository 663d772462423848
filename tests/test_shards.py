"""Shards and merge: `compute --shard I/N` computes a contiguous run of the engine's windows,
balanced by tokens; `merge` joins the shards of one run into a run folder equal to the single
run, byte for byte but for its command (entries and arrays alike), its records hard-linked; and
refuses shards that do not belong together, naming why."""

from __future__ import annotations

import errno
import itertools
import json
import os
from pathlib import Path

import pytest
from conftest import error_lines
from test_resume import METRIC, tree, write_inputs
from typer.testing import CliRunner

from reportgen.cli import app
from reportgen.records import Run

EPOCH = "1767225600"


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    from reportgen.engine import load_model

    return load_model(tiny_models["gpt2"], device="cpu")


def _settings(tiny_models, **changes):
    from reportgen.settings import Settings

    values = {"model": str(tiny_models["gpt2"]), "metric": METRIC, "device": "cpu"}
    return Settings(**{**values, "batch_size": 2, **changes})


@pytest.fixture(scope="module")
def sharded(tiny_models, gpt2, tmp_path_factory):
    """40 inputs computed in one go (`single`) and as 3 shards (`1`, `2`, `3`), with one model
    loaded once; shard 2 interrupted after its first window and resumed."""
    from reportgen.pipeline import compute

    root = tmp_path_factory.mktemp("sharded")
    inputs = write_inputs(root / "in.jsonl", 40)
    settings = _settings(tiny_models)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    try:
        folders = {"single": compute(inputs, root / "single", settings, model=gpt2).path}
        for i in (1, 3):
            folders[str(i)] = compute(
                inputs, root / f"s{i}", settings, shard=(i, 3), model=gpt2
            ).path
        calls = [0]

        def stop(n: int) -> None:
            calls[0] += 1
            if calls[0] > 4:  # progress comes per batch of 2; a window is 8 inputs
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            compute(inputs, root / "s2", settings, stop, shard=(2, 3), model=gpt2)
        resumed = compute(inputs, root / "s2", settings, shard=(2, 3), model=gpt2, resume=True)
        folders["2"] = resumed.path
    finally:
        if env is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = env
    return root, folders


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text("utf-8"))


@pytest.mark.e2e
def test_shards_are_whole_windows_that_tile_the_inputs(sharded):
    _root, folders = sharded
    shards = [Run.open(folders[str(i)]).shard for i in (1, 2, 3)]
    assert [(s.first, s.last) for s in shards if s] == [(0, 16), (16, 32), (32, 40)]
    assert all(
        Run.open(folders[str(i)]).inputs == Run.open(folders["single"]).inputs for i in (1, 2, 3)
    )


@pytest.mark.e2e
def test_merged_shards_equal_the_single_run(sharded, tmp_path):
    """Entries and records byte for byte; the manifest differs in its command only (the start
    time is the earliest shard's: equal here, where SOURCE_DATE_EPOCH fixes it); the records
    are the shards' own files, hard-linked."""
    from reportgen.pipeline import merge

    _root, folders = sharded
    merged = merge([folders["3"], folders["1"], folders["2"]], tmp_path / "merged")
    single = tree(folders["single"])
    got = tree(merged.path)
    assert sorted(got) == sorted(single)
    differ = sorted(name for name in got if got[name] != single[name])
    assert differ == [".reportgen-manifest.json", "manifest.json"]
    one, two = _manifest(folders["single"]), _manifest(merged.path)
    assert two["run"].pop("command").startswith("reportgen merge ")
    one["run"].pop("command")
    assert one == two
    first = folders["1"] / "records" / "000001.safetensors"
    assert os.stat(merged.path / "records" / "000001.safetensors").st_ino == os.stat(first).st_ino
    last = folders["3"] / "records" / "000008.safetensors"
    assert os.stat(merged.path / "records" / "000040.safetensors").st_ino == os.stat(last).st_ino


@pytest.mark.e2e
def test_merge_copies_where_it_cannot_link(sharded, tmp_path, monkeypatch):
    from reportgen.pipeline import merge

    _root, folders = sharded

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    merged = merge([folders[str(i)] for i in (1, 2, 3)], tmp_path / "merged")
    record = merged.path / "records" / "000001.safetensors"
    assert os.stat(record).st_ino != os.stat(folders["1"] / "records" / "000001.safetensors").st_ino
    assert (merged.path / "entries.jsonl").read_bytes() == (
        folders["single"] / "entries.jsonl"
    ).read_bytes()
    assert (
        record.read_bytes() == (folders["single"] / "records" / "000001.safetensors").read_bytes()
    )


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = "\n".join(error_lines(result.stderr))
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.cli
def test_merge_refuses_shards_that_do_not_belong_together(sharded, tiny_models, tmp_path):
    from reportgen.engine import load_model
    from reportgen.pipeline import compute

    root, folders = sharded
    inputs = root / "in.jsonl"
    one, two, three = (folders[str(i)] for i in (1, 2, 3))
    out = tmp_path / "merged"
    _error(_invoke("merge", one, two, "--out", out), "shard(s) 3/3 missing (given: 1/3, 2/3)")
    _error(_invoke("merge", one, two, two, three, "--out", out), "shard 2/3 is given twice")
    _error(_invoke("merge", one, folders["single"], "--out", out), "is not a shard")
    halves = compute(inputs, tmp_path / "half", _settings(tiny_models), shard=(1, 2))
    _error(_invoke("merge", one, halves.path, "--out", out), "different splits of the inputs")
    seeded = compute(inputs, tmp_path / "seed", _settings(tiny_models, seed=4), shard=(3, 3))
    _error(
        _invoke("merge", one, two, seeded.path, "--out", out),
        "the shards were computed differently: --seed: 0 in",
    )
    llama = load_model(tiny_models["llama"], device="cpu")
    other = compute(
        inputs, tmp_path / "llama", _settings(tiny_models, model=str(tiny_models["llama"])),
        shard=(3, 3), model=llama,
    )  # fmt: skip
    _error(
        _invoke("merge", one, two, other.path, "--out", out),
        "the model's weights (SHA-256)",
        "the model's architecture: GPT2LMHeadModel in",
    )
    write_inputs(tmp_path / "other.jsonl", 40, seed=1)
    elsewhere = compute(
        tmp_path / "other.jsonl", tmp_path / "o", _settings(tiny_models), shard=(3, 3)
    )
    _error(_invoke("merge", one, two, elsewhere.path, "--out", out), "computed different inputs")
    _error(_invoke("merge", one, two, three, "--out", one), "is (or holds, or lies in) the shard")
    assert not out.exists()
    done = _invoke("merge", one, two, three, "--out", out)
    assert done.exit_code == 0, done.output
    assert "40 inputs from 3 shards" in done.stderr
    assert _invoke("render", out, "-o", tmp_path / "site", "-q").exit_code == 0
    assert len(list((tmp_path / "site" / "examples").glob("*.html"))) == 40


@pytest.mark.cli
@pytest.mark.parametrize(
    "shard,fragment",
    [
        ("0/3", "--shard 0/3: shards are numbered 1 to N"),
        ("4/3", "--shard 4/3: shards are numbered 1 to N"),
        ("2", "--shard 2: write it as I/N"),
        ("a/b", "--shard a/b: write it as I/N"),
    ],
)
def test_a_bad_shard_is_a_usage_error(tmp_path, shard, fragment):
    inputs = write_inputs(tmp_path / "in.jsonl", 2)
    _error(_invoke("compute", inputs, "--out", tmp_path / "run", "--shard", shard), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


class _Model:
    """What the engine's windows read of a model."""

    num_layers, num_heads = 2, 2


@pytest.mark.e2e  # imports the engine's runner (torch), not a model
@pytest.mark.parametrize("count", [1, 2, 3, 7, 40])
def test_shard_ranges_tile_the_inputs_and_balance_tokens(count):
    from reportgen.pipeline import shard_range
    from reportgen.settings import Settings

    settings = Settings(batch_size=1)  # windows of 8 inputs
    lengths = [5] * 40 + [50] * 8  # 6 windows; the last holds half of all tokens
    ranges = [shard_range(lengths, _Model(), settings, i, count) for i in range(1, count + 1)]
    assert ranges[0].first == 0 and ranges[-1].last == len(lengths)
    assert all(a.last == b.first for a, b in itertools.pairwise(ranges))
    assert all(r.first % 8 == 0 and r.index == i for i, r in enumerate(ranges, start=1))
    if count == 2:
        assert [(r.first, r.last) for r in ranges] == [(0, 40), (40, 48)], "by tokens, not count"
    if count == 40:
        assert sum(r.last > r.first for r in ranges) == 6, "fewer windows than shards"
