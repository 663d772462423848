"""Inputs the writers would reject later are rejected when read, naming file and line: NaN and
Infinity, lone surrogates, deep nesting, huge integers, over-long lines (checked by characters,
before anything is parsed). And line splitting at LF only."""

from __future__ import annotations

import json
import time

import pytest

from reportgen.inputs import MAX_CHARS, MAX_DEPTH, InputError, examples_from_items, read_inputs

pytestmark = pytest.mark.unit


def _problems(path) -> list[str]:
    with pytest.raises(InputError) as err:
        read_inputs(path)
    return err.value.problems


def _jsonl(tmp_path, lines: list[str], name: str = "in.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), "utf-8")
    return path


def _fine(n: int) -> list[str]:
    return [json.dumps({"id": f"x{k}", "text": f"line {k}"}) for k in range(1, n + 1)]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"text": "a", "meta": {"score": NaN}}', "NaN is not valid JSON"),
        ('{"text": "a", "meta": {"score": -Infinity}}', "-Infinity is not valid JSON"),
        ('{"text": "a", "meta": {"score": [1, 1e999]}}', '"meta" → "score"[1] is Infinity'),
        ('{"text": "a\\ud800b"}', '"text" holds a lone surrogate (\\ud800)'),
        ('{"text": "a", "id": "\\udfff"}', '"id" holds a lone surrogate (\\udfff)'),
        ('{"text": "a", "target": "\\ud83d"}', '"target" holds a lone surrogate'),
        (
            '{"segments": [{"name": "ENV", "text": "x"}, {"name": "L\\udc00", "text": "y"}]}',
            "segment 2 name holds a lone surrogate",
        ),
        ('{"text": "a", "meta": {"k": ["\\ud800"]}}', '"meta" → "k"[0] holds a lone surrogate'),
        ('{"text": "a", "meta": {"\\ud800": 1}}', '"meta": a key holds a lone surrogate'),
    ],
)
def test_values_the_writers_reject_are_found_at_their_line(tmp_path, line, message):
    """At line 5,001 of 10,000: the error names that line, and only that line."""
    lines = _fine(10_000)
    lines[5000] = line
    [problem] = _problems(_jsonl(tmp_path, lines))
    assert problem.startswith("in.jsonl:5001: ") and message in problem, problem


def test_a_surrogate_pair_is_one_character_and_fine(tmp_path):
    [example] = read_inputs(_jsonl(tmp_path, ['{"text": "horse \\ud83d\\udc34", "id": "\\u00e9"}']))
    assert example.text == "horse 🐴" and example.id == "é"


def test_u2028_inside_a_json_string_and_nel_ff_rs_in_text_do_not_split_lines(tmp_path):
    lines = [json.dumps({"text": f"a{c}b"}, ensure_ascii=False) for c in "\u2028\u2029\x85"]
    lines.append('{"text": NaN}')
    path = _jsonl(tmp_path, lines)
    assert "\u2028" in path.read_text("utf-8"), "written raw, as JSON allows"
    assert _problems(path) == [
        "in.jsonl:4: NaN is not valid JSON (write null, a number or a string)"
    ]
    good = read_inputs(_jsonl(tmp_path, lines[:3], "good.jsonl"))
    assert [e.text for e in good] == ["a\u2028b", "a\u2029b", "a\x85b"]
    assert [e.source for e in good] == ["good.jsonl:1", "good.jsonl:2", "good.jsonl:3"]
    txt = tmp_path / "in.txt"
    txt.write_text("one\x85two\x0cthree\x1efour\u2028five\nsix\n", "utf-8")
    first, second = read_inputs(txt)
    assert first.text == "one\x85two\x0cthree\x1efour\u2028five"
    assert (second.text, second.source) == ("six", "in.txt:2")


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    over = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    at_limit = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    lines = [
        f'{{"text": "a", "meta": {{"d": {deep}}}}}',
        f'{{"text": "b", "meta": {{"d": {over}}}}}',
        f'{{"text": "c", "meta": {{"d": {at_limit}}}}}',
    ]
    first, second = _problems(_jsonl(tmp_path, lines))
    assert first.startswith("in.jsonl:1: JSON nested too deeply to read"), first
    assert second.startswith(f'in.jsonl:2: "meta" → "d"[0][0][0]… is nested more than {MAX_DEPTH}')
    [ok] = read_inputs(_jsonl(tmp_path, lines[2:], "ok.jsonl"))
    assert ok.text == "c"
    nested: object = "x"
    for _ in range(10_000):  # from Python too: walked without recursion
        nested = [nested]
    with pytest.raises(InputError, match=r"inputs\[0\]: \"meta\" → \"n\".* nested more than"):
        examples_from_items([{"text": "a", "meta": {"n": nested}}])


def test_huge_integers_are_an_error_naming_the_line(tmp_path):
    digits = "9" * 5000
    lines = [
        '{"text": "fine", "meta": {"n": 12345678901234567890}}',
        f'{{"text": "a", "meta": {{"n": {digits}}}}}',
        f'{{"text": "b", "id": {digits}}}',
    ]
    assert _problems(_jsonl(tmp_path, lines)) == [
        f"in.jsonl:{n}: invalid JSON (an integer of more than 4300 digits; write it as a string)"
        for n in (2, 3)
    ]
    with pytest.raises(InputError, match=r"inputs\[0\]: \"meta\" → \"n\" is an integer of more"):
        examples_from_items([{"text": "a", "meta": {"n": 10**5000}}])


@pytest.mark.parametrize("name", ["in.txt", "in.jsonl", "in.csv"])
def test_a_10_mb_line_is_rejected_in_well_under_two_seconds(tmp_path, name):
    text = "horse " * (10_000_000 // 6)
    body = {"in.txt": text, "in.jsonl": json.dumps({"text": text}), "in.csv": f'"{text}"'}[name]
    ok = '{"text": "ok"}\n' if name == "in.jsonl" else "ok\n"
    path = tmp_path / name
    path.write_text(("text\n" if name == "in.csv" else "") + ok * 3 + body + "\n", "utf-8")
    started = time.perf_counter()
    [problem] = _problems(path)
    took = time.perf_counter() - started
    line = 5 if name == "in.csv" else 4
    assert problem.startswith(f"{name}:{line}: a line of {len(body):,} characters"), problem
    assert f"more than the limit of {MAX_CHARS:,}" in problem and "shorter inputs" in problem
    assert took < 2.0, f"{took:.2f} s"


def test_inputs_from_python_follow_the_same_rules():
    with pytest.raises(InputError) as err:
        examples_from_items(
            [
                {"text": "a", "meta": {"x": float("nan")}},
                "fine",
                {"text": "b", "meta": {"s": {1, 2}}},
                "x" * (MAX_CHARS + 1),
                {"segments": [{"name": "A", "text": "x" * MAX_CHARS}, {"text": "y"}]},
                "lone \udc80",
            ]
        )
    assert err.value.problems == [
        'inputs[0]: "meta" → "x" is NaN, not valid JSON (write null, a number or a string)',
        'inputs[2]: "meta" → "s" is a set, which is not a JSON value',
        f"inputs[3]: an input of {MAX_CHARS + 1:,} characters, more than the limit of "
        f"{MAX_CHARS:,}; split it into shorter inputs (a model reads at most a few thousand "
        "tokens)",
        f"inputs[4]: an input of {MAX_CHARS + 2:,} characters, more than the limit of "
        f"{MAX_CHARS:,}; split it into shorter inputs (a model reads at most a few thousand "
        "tokens)",
        'inputs[5]: "text" holds a lone surrogate (\\udc80), which is not Unicode text; fix the '
        "program that wrote the file (a character outside the BMP is written as a pair)",
    ]
    [ok] = examples_from_items([{"text": "a", "meta": {"n": 1.5, "k": [None, True, "é"]}}])
    assert ok.meta == {"n": 1.5, "k": [None, True, "é"]}
