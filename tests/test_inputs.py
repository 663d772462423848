"""Input files: formats, segments, ids, and one clear line per malformed input."""

from __future__ import annotations

import io
import json

import pytest

from reportgen.inputs import InputError, Segment, examples_from_items, read_inputs

pytestmark = pytest.mark.unit


def _write(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_txt_one_input_per_line_skipping_blanks(tmp_path):
    path = _write(tmp_path, "in.txt", "\ufefffirst line\r\n\r\n  second\tline  \n\n")
    examples = read_inputs(path)
    assert [e.id for e in examples] == ["1", "2"]
    assert [e.text for e in examples] == ["first line", "second\tline"]
    assert examples[1].source == "in.txt:3"


def test_jsonl_text_segments_targets_labels_meta(tmp_path):
    lines = [
        {
            "id": "ref",
            "segments": [{"name": "ENV", "text": "a b"}, {"name": "LAN", "text": "c"}],
            "target": "horse",
            "meta": {"k": [1, 2]},
        },
        {"text": "plain", "label": 2},
        {"text": "no id"},
    ]
    path = _write(tmp_path, "in.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    ref, labelled, third = read_inputs(path)
    assert ref.segments == (Segment("ENV", "a b"), Segment("LAN", "c"))
    assert ref.text == "a b c" and ref.char_spans() == [("ENV", 0, 3), ("LAN", 4, 5)]
    assert ref.target == "horse" and ref.meta == {"k": [1, 2]}
    assert labelled.target == "2" and labelled.id == "2"
    assert third.id == "3"


@pytest.mark.parametrize("delimiter,name", [(",", "in.csv"), ("\t", "in.tsv")])
def test_csv_and_tsv(tmp_path, delimiter, name):
    rows = ["id,text,target", 'a,"hello, world",x', "b,second,"]
    path = _write(
        tmp_path,
        name,
        "\n".join(r.replace(",", delimiter) if delimiter != "," else r for r in rows),
    )
    if delimiter == "\t":
        path.write_text("id\ttext\ttarget\na\thello, world\tx\nb\tsecond\t\n")
    a, b = read_inputs(path)
    assert (a.id, a.text, a.target) == ("a", "hello, world", "x")
    assert (b.id, b.target) == ("b", None)


def test_stdin(monkeypatch):
    data = json.dumps({"text": "from stdin", "id": "s"}).encode() + b"\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    [example] = read_inputs("-")
    assert example.id == "s" and example.source == "<stdin>:1"


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "in.jsonl: no inputs (the file is empty or has only blank lines)"),
        ("\n  \n", "in.jsonl: no inputs"),
        ('{"text": "ok"}\n{"text": "broken"\n', "in.jsonl:2: invalid JSON"),
        ("[1, 2]\n", "in.jsonl:1: expected a JSON object"),
        ('{"id": "x"}\n', 'in.jsonl:1: needs exactly one of "text" or "segments"'),
        ('{"segments": []}\n', 'in.jsonl:1: "segments" must be a non-empty list'),
        ('{"segments": [{"name": "A", "text": " "}]}\n', "in.jsonl:1: segment 1 (A) is empty"),
        (
            '{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}\n',
            "in.jsonl:2: duplicate id 'x' (first used at in.jsonl:1)",
        ),
        ('{"text": "a", "meta": 3}\n', 'in.jsonl:1: "meta" must be a JSON object'),
        ('{"text": ""}\n', 'in.jsonl:1: "text" must be a non-empty string'),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    with pytest.raises(InputError) as err:
        read_inputs(_write(tmp_path, "in.jsonl", content))
    assert message in str(err.value)


def test_every_malformed_line_is_reported(tmp_path):
    path = _write(tmp_path, "in.jsonl", '{\n[]\n{"text": "fine"}\n7\n')
    with pytest.raises(InputError) as err:
        read_inputs(path)
    assert [p.split(":")[1] for p in err.value.problems] == ["1", "2", "4"]


def test_non_utf8_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match=r"in.txt:2: not valid UTF-8 \(byte 0xff\)"):
        read_inputs(_write(tmp_path, "in.txt", b"fine\nbad \xff byte\n"))
    with pytest.raises(InputError, match=r"unknown input format '.xml'"):
        read_inputs(_write(tmp_path, "in.xml", "<a/>"))
    with pytest.raises(InputError, match="no such file"):
        read_inputs(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="no 'text' column"):
        read_inputs(_write(tmp_path, "in.csv", "sentence\nhello\n"))


def test_generated_ids_clash_with_given_ones():
    with pytest.raises(InputError, match=r"inputs\[1\]: duplicate id '1'"):
        examples_from_items([{"text": "a", "id": "1"}, {"text": "b", "id": "1"}])
    examples = examples_from_items(["a", {"text": "b", "id": "b"}])
    assert [e.id for e in examples] == ["1", "b"]
