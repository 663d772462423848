"""Inputs: read .txt, .jsonl, .csv/.tsv files (or Python lists) into typed `Example` records.

Every problem is reported with its file and line, and all of them at once, before any work starts.
Inputs are held to the rules the writers apply later (JSON without NaN or Infinity, text that
encodes as UTF-8, no lone surrogates), so nothing valid here fails after the compute; and lines
are capped in characters before anything is parsed or tokenised.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from reportgen.data.examples import Example, Segment
from reportgen.errors import InputError

__all__ = [
    "MAX_CHARS",
    "MAX_DEPTH",
    "Example",
    "InputError",
    "Segment",
    "examples_from_items",
    "finish_examples",
    "read_inputs",
    "validate_item",
]

MAX_CHARS = 1_000_000
"""Longest line of an input file, and longest input (all its segments), in characters. Checked
before a line is parsed or tokenised, so an over-long input fails in milliseconds, not after
minutes of tokenising: a model reads a few thousand tokens (--truncate cuts by tokens, later)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and objects in an input's `meta` (the pages and the run folder
write it back as JSON)."""


def read_inputs(path: str | Path) -> list[Example]:
    """Read inputs from a .txt, .jsonl, .csv or .tsv file, or from stdin when path is `-`."""
    if str(path) == "-":
        return parse_text(sys.stdin.buffer.read(), "<stdin>", _sniff_stdin_format)
    path = Path(path)
    if not path.is_file():
        raise InputError([f"{path}: no such file (give a .txt, .jsonl, .csv or .tsv file, or -)"])
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _PARSERS:
        raise InputError(
            [f"{path}: unknown input format '.{fmt}' (use .txt, .jsonl, .csv or .tsv)"]
        )
    return parse_text(path.read_bytes(), path.name, lambda _: fmt)


def examples_from_items(
    items: Iterable[str | Mapping[str, Any]], source: str = "inputs"
) -> list[Example]:
    """Examples from Python values: strings (plain text) or dicts shaped like .jsonl lines."""
    rows: list[tuple[int, object]] = list(enumerate(items, start=1))
    return _finish([_from_object(obj, f"{source}[{n - 1}]") for n, obj in rows], source)


def parse_text(data: bytes, name: str, format_of: Any) -> list[Example]:
    """Decode bytes as UTF-8 (BOM allowed) and parse them in the format `format_of(text)` says."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            [
                f"{name}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); "
                "save the file as UTF-8"
            ]
        ) from None
    return _PARSERS[format_of(text)](text, name)


def _lines(text: str) -> list[str]:
    """Lines split at LF (and CR LF) only: `str.splitlines()` also splits at U+2028, NEL, FF
    and RS, which may stand inside a JSON string or a line of text."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _sniff_stdin_format(text: str) -> str:
    first = next((line for line in _lines(text) if line.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "txt"


def _too_long(line: str, where: str) -> str | None:
    """A problem if `line` is longer than MAX_CHARS (checked before it is parsed)."""
    if len(line) <= MAX_CHARS:
        return None
    return (
        f"{where}: a line of {len(line):,} characters, more than the limit of {MAX_CHARS:,}; "
        "split it into shorter inputs (a model reads at most a few thousand tokens)"
    )


def _parse_txt(text: str, name: str) -> list[Example]:
    parsed: list[Example | str] = []
    for n, line in enumerate(_lines(text), start=1):
        problem = _too_long(line, f"{name}:{n}")
        if problem is not None:
            parsed.append(problem)
            continue
        line = line.strip()
        if line:
            parsed.append(_example(None, (Segment("", line),), None, {}, f"{name}:{n}"))
    return _finish(parsed, name)


class _JSONConstant(ValueError):
    """NaN, Infinity or -Infinity in a JSON line: Python's json reads them, JSON has none."""


def _reject_constant(name: str) -> object:
    raise _JSONConstant(f"{name} is not valid JSON (write null, a number or a string)")


def _parse_jsonl(text: str, name: str) -> list[Example]:
    parsed: list[Example | str] = []
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        problem = _too_long(line, where)
        if problem is not None:
            parsed.append(problem)
            continue
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except json.JSONDecodeError as err:
            parsed.append(f"{where}: invalid JSON ({err.msg} at column {err.colno})")
            continue
        except RecursionError:
            parsed.append(
                f"{where}: JSON nested too deeply to read; keep lists and objects at most "
                f"{MAX_DEPTH} levels deep"
            )
            continue
        except _JSONConstant as err:
            parsed.append(f"{where}: {err}")
            continue
        except ValueError as err:  # an integer of more than 4300 digits
            parsed.append(f"{where}: invalid JSON ({_number_problem(err)})")
            continue
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            parsed.append(f'{where}: expected a JSON object with "text" or "segments", got {kind}')
            continue
        parsed.append(_from_object(obj, where))
    return _finish(parsed, name)


def _parse_delimited(text: str, name: str, delimiter: str) -> list[Example]:
    long = [p for n, line in enumerate(_lines(text), 1) if (p := _too_long(line, f"{name}:{n}"))]
    if long:
        raise InputError(long)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = reader.fieldnames or []
    except csv.Error as err:
        raise InputError([f"{name}:1: {_csv_problem(err)}"]) from None
    if "text" not in columns:
        raise InputError([f"{name}:1: no 'text' column (found: {', '.join(columns) or 'none'})"])
    parsed: list[Example | str] = []
    for row in _csv_rows(reader, name, parsed):
        where = f"{name}:{reader.line_num}"
        if None in row:
            parsed.append(f"{where}: more fields than the header has columns")
            continue
        target = row.get("target") or row.get("label") or None
        text_value = (row.get("text") or "").strip()
        if not text_value:
            parsed.append(f"{where}: empty 'text'")
            continue
        contrast = row.get("contrast") or None
        parsed.append(
            _example(row.get("id") or None, (Segment("", text_value),), target, {}, where, contrast)
        )
    return _finish(parsed, name)


def _from_object(obj: object, where: str) -> Example | str:
    """An Example from a str or a .jsonl-shaped mapping, or an error message."""
    if isinstance(obj, str):
        return (
            _example(None, (Segment("", obj.strip()),), None, {}, where)
            if obj.strip()
            else (f"{where}: empty text")
        )
    if not isinstance(obj, Mapping):
        return (
            f'{where}: expected a JSON object with "text" or "segments", got {type(obj).__name__}'
        )
    has_text, has_segments = "text" in obj, "segments" in obj
    if has_text == has_segments:
        return f'{where}: needs exactly one of "text" or "segments"'
    if has_text:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            return f'{where}: "text" must be a non-empty string'
        segments: tuple[Segment, ...] = (Segment("", obj["text"].strip()),)
    else:
        parsed = _segments(obj["segments"], where)
        if isinstance(parsed, str):
            return parsed
        segments = parsed
    for key in ("target", "label", "contrast"):
        if key in obj and not isinstance(obj[key], (str, int)):
            return f'{where}: "{key}" must be a string or an integer'
    if "target" in obj and "label" in obj:
        return f'{where}: give "target" or "label", not both'
    target = obj.get("target", obj.get("label"))
    contrast = obj.get("contrast")
    meta = obj.get("meta", {})
    if not isinstance(meta, Mapping):
        return f'{where}: "meta" must be a JSON object'
    counterfactual = _counterfactual(obj.get("counterfactual"), segments, where)
    if isinstance(counterfactual, str):
        return counterfactual
    raw_id = obj.get("id")
    if raw_id is not None and (not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool)):
        return f'{where}: "id" must be a string or an integer'
    if raw_id is not None and not str(raw_id).strip():
        return f'{where}: "id" is empty'
    found = _example(
        None if raw_id is None else str(raw_id),
        segments,
        None if target is None else str(target),
        dict(meta),
        where,
        None if contrast is None else str(contrast),
    )
    return replace(found, counterfactual=counterfactual) if isinstance(found, Example) else found


def _counterfactual(
    value: object, segments: tuple[Segment, ...], where: str
) -> tuple[Segment, ...] | str:
    """An input's `counterfactual`, {"SEGMENT": "other text", ...}: replacements of its named
    segments (none if absent), or the problem with it."""
    if value is None:
        return ()
    names = [s.name for s in segments if s.name]
    usage = '{"ENV": "another scene"}: segment names to the texts that replace them'
    if not isinstance(value, Mapping) or not value:
        return f'{where}: "counterfactual" must be a non-empty JSON object such as {usage}'
    own = {s.name: s.text for s in segments}
    out = []
    for name, text in value.items():
        if name not in names:
            known = ", ".join(names) or "none"
            return (
                f'{where}: "counterfactual" names segment {name!r}, which the input lacks '
                f"(its segments: {known})"
            )
        if not isinstance(text, str) or not text.strip():
            return f'{where}: "counterfactual" segment {name!r} must be a non-empty string'
        if text.strip() == own[name]:
            return (
                f'{where}: "counterfactual" segment {name!r} is the input\'s own text; give a '
                "mismatched one"
            )
        if not _encodes(text):
            return f'{where}: "counterfactual" segment {name!r} {_surrogate_problem(text)}'
        out.append(Segment(name, text.strip()))
    return tuple(out)


def validate_item(obj: object, where: str) -> Example | str:
    """A .jsonl-shaped mapping (or a string) as an Example, or the problem with it: the one
    validation of an input, whatever it was read from (a data set row goes through it too)."""
    return _from_object(obj, where)


def finish_examples(parsed: Sequence[Example | str], name: str) -> list[Example]:
    """Examples and problems of one source, finished as every reader does (see `_finish`)."""
    return _finish(parsed, name)


def _segments(value: object, where: str) -> tuple[Segment, ...] | str:
    if not isinstance(value, list) or not value:
        return f'{where}: "segments" must be a non-empty list of {{"name": ..., "text": ...}}'
    out, seen = [], set()
    for k, seg in enumerate(value, start=1):
        if not isinstance(seg, Mapping) or not isinstance(seg.get("text"), str):
            return f'{where}: segment {k} must be an object with a string "text"'
        name = seg.get("name", "")
        if not isinstance(name, str):
            return f'{where}: segment {k}: "name" must be a string'
        if not seg["text"].strip():
            return f"{where}: segment {k} ({name or 'unnamed'}) is empty"
        name = name.strip()
        if name and name in seen:
            return f"{where}: segment name '{name}' appears twice"
        seen.add(name)
        out.append(Segment(name, seg["text"].strip()))
    return tuple(out)


def _csv_rows(
    reader: csv.DictReader[str], name: str, parsed: list[Example | str]
) -> Iterable[dict[str, str]]:
    """The reader's rows; a malformed row ends the reading with a problem naming its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            parsed.append(f"{name}:{reader.reader.line_num}: {_csv_problem(err)}")
            return
        yield row


def _csv_problem(err: csv.Error) -> str:
    if "field larger than field limit" in str(err):
        return (
            f"a field of more than {csv.field_size_limit():,} characters; give long inputs as "
            f".jsonl or .txt (up to {MAX_CHARS:,} characters)"
        )
    return f"not valid CSV ({err})"


def _number_problem(err: ValueError) -> str:
    if "digits" in str(err):  # int too long for str <-> int conversion (Python 3.11+)
        return "an integer of more than 4300 digits; write it as a string"
    return str(err)


def _example(
    id_: str | None,
    segments: tuple[Segment, ...],
    target: str | None,
    meta: Mapping[str, Any],
    where: str,
    contrast: str | None = None,
) -> Example | str:
    """The Example, or the first problem with it: too long, or a value the writers would reject
    later (a lone surrogate, NaN or Infinity, a non-JSON value in `meta`)."""
    length = sum(len(s.text) for s in segments) + len(segments) - 1
    if length > MAX_CHARS:
        return (
            f"{where}: an input of {length:,} characters, more than the limit of {MAX_CHARS:,}; "
            "split it into shorter inputs (a model reads at most a few thousand tokens)"
        )
    if contrast is not None:
        if not contrast.strip():
            return f'{where}: "contrast" is empty'
        if target is None:
            return f'{where}: "contrast" needs a "target" (logit-diff compares the two)'
        if contrast.strip() == target.strip():
            return f'{where}: "contrast" is the same as "target" ({target!r}); give another one'
    fields: list[tuple[str, str | None]] = [
        ('"id"', id_),
        ('"target"', target),
        ('"contrast"', contrast),
    ]
    for k, seg in enumerate(segments, start=1):
        label = '"text"' if len(segments) == 1 and not seg.name else f"segment {k}"
        fields += [(f"{label} name", seg.name), (label, seg.text)]
    for label, value in fields:
        if value is not None and not _encodes(value):
            return f"{where}: {label} {_surrogate_problem(value)}"
    problem = _json_problem(meta)
    if problem is not None:
        return f'{where}: "meta"{problem}'
    return Example(id_ or "", segments, target, dict(meta), where, contrast)


def _encodes(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_problem(text: str) -> str:
    found = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    return (
        f"holds a lone surrogate (\\u{ord(found):04x}), which is not Unicode text; "
        "fix the program that wrote the file (a character outside the BMP is written as a pair)"
    )


def _json_problem(value: object) -> str | None:
    """Where and why `value` cannot be written as the records write JSON (allow_nan=False,
    UTF-8, at most MAX_DEPTH levels), or None. Walked without recursion, so any depth is safe."""
    stack: list[tuple[object, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        where = "".join(path[:4]) + ("…" if len(path) > 4 else "")
        if isinstance(item, (Mapping, list, tuple)):
            if len(path) >= MAX_DEPTH:
                return f"{where} is nested more than {MAX_DEPTH} levels deep; flatten it"
            if not isinstance(item, Mapping):
                stack += [(x, (*path, f"[{i}]")) for i, x in enumerate(item)]
                continue
            for key, inner in item.items():
                if isinstance(key, str) and not _encodes(key):
                    return f"{where}: a key {_surrogate_problem(key)}"
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return f"{where}: the key {key!r} is not a string"
                stack.append((inner, (*path, f" → {json.dumps(str(key), ensure_ascii=True)}")))
        elif isinstance(item, str):
            if not _encodes(item):
                return f"{where} {_surrogate_problem(item)}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            try:
                str(item)
            except ValueError:
                return f"{where} is an integer of more than 4300 digits; write it as a string"
        elif isinstance(item, float):
            if not math.isfinite(item):
                shown = "NaN" if item != item else ("-" if item < 0 else "") + "Infinity"
                return f"{where} is {shown}, not valid JSON (write null, a number or a string)"
        else:
            return f"{where} is a {type(item).__name__}, which is not a JSON value"
    return None


def _finish(parsed: Sequence[Example | str], name: str) -> list[Example]:
    """Raise every problem at once; reject duplicate given ids; give ids to examples without one.

    A generated id is the input's position (`1`, `2`, ...), or, where a given id already is that
    number, the position with the first free suffix (`2-2`): never a clash with a given id."""
    problems = [p for p in parsed if isinstance(p, str)]
    examples = [p for p in parsed if isinstance(p, Example)]
    if not problems and not examples:
        problems.append(f"{name}: no inputs (the file is empty or has only blank lines)")
    first_seen: dict[str, str] = {}
    for ex in examples:
        if not ex.id:
            continue
        if ex.id in first_seen:
            problems.append(
                f"{ex.source}: duplicate id '{ex.id}' (first used at {first_seen[ex.id]})"
            )
        first_seen.setdefault(ex.id, ex.source)
    numbered: list[Example] = []
    for n, ex in enumerate(examples, start=1):
        if not ex.id:
            generated, suffix = str(n), 1
            while generated in first_seen:
                suffix += 1
                generated = f"{n}-{suffix}"
            first_seen[generated] = ex.source
            ex = replace(ex, id=generated)
        numbered.append(ex)
    if problems:
        raise InputError(problems)
    return numbered


_PARSERS: dict[str, Any] = {
    "txt": _parse_txt,
    "jsonl": _parse_jsonl,
    "csv": lambda text, name: _parse_delimited(text, name, ","),
    "tsv": lambda text, name: _parse_delimited(text, name, "\t"),
}
