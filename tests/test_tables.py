"""Data set inputs: Parquet and Arrow files and `datasets` folders read in record batches, each
row validated as the .jsonl line with the same fields; column options checked against the
columns there are; --limit and --sample choose the same rows anywhere; a Parquet run equals the
.jsonl run of the same inputs, and shards of it merge as any."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_resume import METRIC, tree, write_inputs
from typer.testing import CliRunner

from reportgen import tables
from reportgen.cli import app
from reportgen.errors import InputError, SettingsError
from reportgen.inputs import read_inputs
from reportgen.tables import TableInputs, read_table, sample_keys

EPOCH = "1767225600"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _columns(lines: list[dict]) -> dict[str, list]:
    """The .jsonl lines as columns: id, env, lan (the segments' texts), segments, target."""
    return {
        "id": [x["id"] for x in lines],
        "env": [x["segments"][0]["text"] for x in lines],
        "lan": [x["segments"][1]["text"] for x in lines],
        "segments": [x["segments"] for x in lines],
        "target": [x.get("target") for x in lines],
    }


@pytest.fixture
def jsonl(tmp_path) -> Path:
    return write_inputs(tmp_path / "in.jsonl", 30)


@pytest.fixture
def parquet(tmp_path, jsonl) -> Path:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(_columns(_lines(jsonl))), path, row_group_size=7)
    return path


def _plain(examples):
    """Examples without where they came from (a row's source names the row, a line's the line)."""
    return [(e.id, e.segments, e.target, dict(e.meta)) for e in examples]


@pytest.mark.unit
def test_rows_are_the_jsonl_lines_with_the_same_fields(jsonl, parquet):
    expected = _plain(read_inputs(jsonl))
    by_template = read_table(TableInputs(parquet, segments="ENV={env},LAN={lan}"))
    by_column = read_table(TableInputs(parquet, segments_column="segments"))
    assert _plain(by_template) == expected
    assert _plain(by_column) == expected
    assert [e.source for e in by_column[:2]] == ["in.parquet[0]", "in.parquet[1]"]


@pytest.mark.unit
def test_text_target_and_id_columns(tmp_path):
    path = tmp_path / "t.parquet"
    table = {"sentence": ["a dog", "a cat"], "gold": [1, 0], "key": ["k1", "k2"], "label": [7, 8]}
    pq.write_table(pa.table(table), path)
    got = read_table(
        TableInputs(path, text_column="sentence", target_column="gold", id_column="key")
    )
    assert [(e.id, e.text, e.target) for e in got] == [("k1", "a dog", "1"), ("k2", "a cat", "0")]
    plain = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "label": [3, None]}), plain)
    got = read_table(TableInputs(plain))  # label is the target, ids generated as for .jsonl
    assert [(e.id, e.text, e.target) for e in got] == [("1", "x", "3"), ("2", "y", None)]


@pytest.mark.unit
def test_a_template_keeps_literal_text_and_commas(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"env": ["a, b"], "lan": ["c"], "n": [3]}), path)
    got = read_table(TableInputs(path, segments="ENV=<CHI> {env},LAN={lan}, {n} {{x}}"))
    assert [(s.name, s.text) for s in got[0].segments] == [
        ("ENV", "<CHI> a, b"),
        ("LAN", "c, 3 {x}"),
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec,message",
    [
        (
            {"text_column": "sentence"},
            "t.parquet: no column 'sentence' (--text-column); the columns are: id, env, lan",
        ),
        ({}, "t.parquet: no 'text' column; name the text column with --text-column"),
        (
            {"segments": "ENV={env},LAN={language}"},
            "no column 'language' (--segments, segment LAN); the columns are: id, env, lan",
        ),
        (
            {"text_column": "env", "target_column": "gold"},
            "no column 'gold' (--target-column); the columns are: id, env, lan",
        ),
        ({"text_column": "env", "id_column": "key"}, "no column 'key' (--id-column)"),
    ],
)
def test_a_missing_column_is_named_with_the_columns_there_are(tmp_path, spec, message):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a"], "env": ["x"], "lan": ["y"]}), path)
    with pytest.raises(InputError) as err:
        read_table(TableInputs(path, **spec))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec,message",
    [
        ({"text_column": "a", "segments": "X={a}"}, "--text-column and --segments: give one"),
        ({"limit": 2, "sample": 2}, "--limit and --sample: give one"),
        ({"limit": 0}, "--limit must be an integer of at least 1, got 0"),
        ({"segments": "{a}"}, "write segments as NAME={column}"),
        ({"segments": "X={a},X={b}"}, "the segment name 'X' appears twice"),
        ({"segments": "X=plain"}, "segment X names no {column}"),
        ({"segments": "X={a!r}"}, "without conversions or format specs"),
        ({"segments": "X={a"}, "segment X: "),
    ],
)
def test_bad_options_are_refused_before_reading(spec, message):
    with pytest.raises(SettingsError, match=None) as err:
        read_table(TableInputs("nowhere.parquet", **spec))
    assert message in str(err.value)


@pytest.mark.unit
def test_a_bad_row_is_reported_by_its_row_number_as_a_jsonl_line_would_be(tmp_path):
    path = tmp_path / "t.parquet"
    texts = ["fine"] * 12
    texts[7], texts[9] = None, "   "
    ids = [f"r{i}" for i in range(12)]
    ids[11] = "r3"
    pq.write_table(pa.table({"sentence": texts, "id": ids}), path, row_group_size=4)
    with pytest.raises(InputError) as err:
        read_table(TableInputs(path, text_column="sentence"))
    assert err.value.problems == [
        "t.parquet[7]: column 'sentence' must be a non-empty string",
        "t.parquet[9]: column 'sentence' must be a non-empty string",
        "t.parquet[11]: duplicate id 'r3' (first used at t.parquet[3])",
    ]
    segments = tmp_path / "s.parquet"
    pq.write_table(pa.table({"env": ["a", None], "lan": ["b", "c"]}), segments)
    with pytest.raises(InputError, match=r"s.parquet\[1\]: column 'env' is empty \(null\)"):
        read_table(TableInputs(segments, segments="ENV={env},LAN={lan}"))


def _sample_keys_by_hand(seed: int, rows: int) -> list[int]:
    """splitmix64 of seed·γ + index + γ, in Python's integers (the reference)."""
    mask, gamma = 2**64 - 1, 0x9E3779B97F4A7C15
    out = []
    for i in range(rows):
        z = ((seed * gamma) % 2**64 + i + gamma) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.unit
def test_sample_is_the_same_rows_for_a_seed_in_any_format(tmp_path, jsonl, parquet):
    for seed in (0, 5, 2**40):
        assert sample_keys(seed, 50).tolist() == _sample_keys_by_hand(seed, 50)
    lines = _lines(jsonl)
    keys = _sample_keys_by_hand(3, len(lines))
    expected = sorted(sorted(range(len(lines)), key=lambda i: keys[i])[:8])
    feather = tmp_path / "in.arrow"
    table = pa.table(_columns(lines))
    with pa.ipc.new_file(feather, table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    stream = tmp_path / "stream.arrow"
    with pa.ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    for source in (parquet, feather, stream):
        got = read_table(TableInputs(source, segments_column="segments", sample=8, seed=3))
        assert [e.id for e in got] == [lines[i]["id"] for i in expected], source
        assert [e.source for e in got] == [f"{source.name}[{i}]" for i in expected]
    other = read_table(TableInputs(parquet, segments_column="segments", sample=8, seed=4))
    assert [e.id for e in other] != [lines[i]["id"] for i in expected]
    first = read_table(TableInputs(stream, segments_column="segments", limit=7))
    assert [e.id for e in first] == [x["id"] for x in lines[:7]]
    with pytest.raises(SettingsError, match="--sample 31: in.parquet has 30 rows"):
        read_table(TableInputs(parquet, segments_column="segments", sample=31))


@pytest.mark.unit
def test_a_datasets_folder_and_its_splits(tmp_path, jsonl):
    import datasets

    columns = _columns(_lines(jsonl))
    one = datasets.Dataset.from_dict(columns)
    one.save_to_disk(str(tmp_path / "one"))
    both = datasets.DatasetDict({"train": one.select(range(20)), "test": one.select(range(20, 30))})
    both.save_to_disk(str(tmp_path / "both"))
    expected = _plain(read_inputs(jsonl))
    got = read_table(TableInputs(tmp_path / "one", segments="ENV={env},LAN={lan}"))
    assert _plain(got) == expected
    test = read_table(TableInputs(tmp_path / "both", segments_column="segments", split="test"))
    assert _plain(test) == expected[20:]
    assert test[0].source == "both/test[0]"
    with pytest.raises(SettingsError, match="has the splits train, test; choose one with --split"):
        read_table(TableInputs(tmp_path / "both", segments_column="segments"))
    with pytest.raises(SettingsError, match="--split dev: .* has the splits train, test"):
        read_table(TableInputs(tmp_path / "both", segments_column="segments", split="dev"))


@pytest.mark.unit
def test_hf_loads_through_datasets_offline(tmp_path, jsonl, parquet, monkeypatch):
    """`hf:NAME` is `datasets.load_dataset(NAME)`: here a local folder of data files (what the
    cache holds for a hub data set is read the same way, offline), its one split `train`."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(parquet.read_bytes())
    got = read_table(TableInputs(f"hf:{folder}", segments_column="segments", split="train"))
    assert _plain(got) == _plain(read_inputs(jsonl))
    assert got[0].source == f"hf:{folder}/train[0]"
    with pytest.raises(InputError, match="cannot load this data set from the Hugging Face cache"):
        read_table(TableInputs(f"hf:{tmp_path / 'nothing'}", split="train"))


@pytest.mark.unit
def test_a_large_parquet_file_is_read_in_batches_and_stops_at_its_first_bad_rows(
    tmp_path, monkeypatch
):
    """60,000 rows in 60 row groups; batches of 1,000 rows: never the whole table, only the
    named column, and bad rows from row 31,000 on stop the reading there (19 reported)."""
    path = tmp_path / "big.parquet"
    texts = [f"row {i}" for i in range(60_000)]
    for i in range(31_000, 60_000, 7):
        texts[i] = ""
    pq.write_table(pa.table({"text": texts, "other": list(range(60_000))}), path, 1000)
    monkeypatch.setattr(tables, "BATCH_ROWS", 1000)
    seen: list[tuple[int, tuple[str, ...]]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            seen.append((batch.num_rows, tuple(batch.schema.names)))
            yield batch

    def whole(*args, **kwargs):
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    got = read_table(TableInputs(path, limit=25_000))
    assert len(got) == 25_000 and got[-1].text == "row 24999"
    assert len(seen) == 25 and {s for s in seen} == {(1000, ("text",))}
    seen.clear()
    with pytest.raises(InputError) as err:
        read_table(TableInputs(path))
    problems = err.value.problems
    assert problems[0] == 'big.parquet[31000]: "text" must be a non-empty string'
    assert len(problems) == 20
    assert problems[-1] == "big.parquet: stopped reading at row 31126, after 19 problems"
    assert len(seen) == 32, "read up to the batch holding the 19th bad row, no further"


@pytest.mark.unit
def test_without_pyarrow_the_error_names_the_extra(parquet, monkeypatch):
    import importlib

    real = importlib.import_module

    def missing(name, *args):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(SettingsError, match=r'needs pyarrow: pip install "reportgen\[data\]"'):
        read_table(TableInputs(parquet, segments_column="segments"))


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.cli
def test_data_set_options_on_the_command_line(tmp_path, jsonl, parquet):
    out = tmp_path / "run"
    _error(
        _invoke("compute", jsonl, "--out", out, "--text-column", "x", "--limit", "3"),
        "--text-column, --limit: options of data set inputs",
    )
    _error(
        _invoke("compute", parquet, "--out", out, "--text-column", "sentence"),
        "no column 'sentence' (--text-column); the columns are: id, env, lan, segments, target",
    )
    _error(
        _invoke("build", parquet, "--out", out, "--limit", "2", "--sample", "2"),
        "--limit and --sample: give one",
    )
    # a bad row is reported before any model loads (this model folder does not exist)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["ok", None]}), bad)
    _error(
        _invoke("compute", bad, "--out", out, "--model", tmp_path / "no-model"),
        'bad.parquet[1]: "text" must be a non-empty string',
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    from reportgen.engine import load_model

    return load_model(tiny_models["gpt2"], device="cpu")


def _settings(tiny_models):
    from reportgen.settings import Settings

    return Settings(model=str(tiny_models["gpt2"]), metric=METRIC, device="cpu", batch_size=2)


@pytest.mark.e2e
def test_a_parquet_run_equals_the_jsonl_run(tiny_models, gpt2, tmp_path, monkeypatch):
    """Every record byte for byte, every entry but for its source; the manifest names the
    inputs by a digest of the rows, so shards of a Parquet input merge into the Parquet run."""
    from reportgen.pipeline import compute, merge

    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    jsonl = write_inputs(tmp_path / "in.jsonl", 20)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(_columns(_lines(jsonl))), path, row_group_size=6)
    settings = _settings(tiny_models)
    spec = TableInputs(path, segments="ENV={env},LAN={lan}")
    from_jsonl = compute(jsonl, tmp_path / "j", settings, model=gpt2)
    from_parquet = compute(spec, tmp_path / "p", settings, model=gpt2)
    one, two = tree(from_jsonl.path), tree(from_parquet.path)
    assert sorted(one) == sorted(two)
    records = [name for name in one if name.startswith("records/")]
    assert len(records) == 20 and all(one[n] == two[n] for n in records)

    def entries(files):
        rows = [json.loads(line) for line in files["entries.jsonl"].splitlines()]
        return [{k: v for k, v in row.items() if k != "source"} for row in rows]

    assert entries(one) == entries(two)
    command = json.loads(two["manifest.json"])["run"]["command"]
    assert "in.parquet' --segments 'ENV={env},LAN={lan}' --out" in command
    halves = [compute(spec, tmp_path / f"s{i}", settings, model=gpt2, shard=(i, 2)) for i in (1, 2)]
    assert all(h.inputs == from_parquet.inputs for h in halves)
    merged = merge(halves, tmp_path / "merged")
    assert (merged.path / "entries.jsonl").read_bytes() == two["entries.jsonl"]
    again = compute(spec, tmp_path / "p", settings, model=gpt2, resume=True)
    assert tree(again.path) == two, "a complete run of the same rows: nothing to do"
    assert os.path.exists(tmp_path / "p" / "manifest.json")
