"""Data set inputs: Parquet and Arrow files, and Hugging Face `datasets` (saved with
`save_to_disk`, or in the local cache as `hf:NAME`), read in record batches, never whole.

Each row becomes the mapping a .jsonl line holds (`text` or `segments`, `target`, `id`, `meta`,
from the columns the options name) and is validated by the same code as a .jsonl line, so a
row is accepted or refused exactly as that line would be; a problem names the row by its index
(from 0, as `dataset[i]` reads it). Only the named columns are read. `--limit N` takes the first
N rows, `--sample N` N rows chosen by `--seed` alone (the same rows on any machine and Python:
a fixed 64-bit hash of the seed and each row's index, the N smallest kept), in the file's order.

pyarrow (and `datasets` for data set folders and the cache) come with the `data` extra.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.data.examples import Example
from reportgen.errors import InputError, SettingsError
from reportgen.inputs import finish_examples, validate_item

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

FILE_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
HUB_PREFIX = "hf:"
BATCH_ROWS = 8192
"""Rows read at a time: memory holds one batch of the named columns, whatever the file's size."""


def is_table(text: str | Path) -> bool:
    """Whether an inputs argument names a data set: a Parquet or Arrow file, a folder (written
    by `save_to_disk`) or `hf:NAME` (a Hugging Face data set in the local cache)."""
    text = str(text)
    if text.startswith(HUB_PREFIX):
        return True
    path = Path(text)
    return path.suffix.lower() in FILE_FORMATS or path.is_dir()


@dataclass(frozen=True)
class TableInputs:
    """Inputs read from a data set, and how its columns make an input.

    `source` is a .parquet/.arrow file, a folder written by `datasets`' `save_to_disk`, or
    `hf:NAME` (or `hf:NAME:CONFIG`), a data set in the Hugging Face cache. An input's text is
    the `text_column` (default `text`), or its segments come from the `segments_column` (a list
    of `{name, text}`, as in .jsonl) or the `segments` template (`ENV={env},LAN=<CHI> {lan}`:
    segment ENV holds column env, LAN column lan after `<CHI> `; a comma starts a new segment
    only where `NAME=` follows it). `target_column` and `id_column` default to the columns
    `target` (or `label`) and `id` where there are any."""

    source: str
    text_column: str | None = None
    segments_column: str | None = None
    segments: str | None = None
    target_column: str | None = None
    id_column: str | None = None
    split: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", str(self.source))

    @property
    def name(self) -> str:
        """The data set as error messages and entries name it (a file or folder by its name)."""
        if self.source.startswith(HUB_PREFIX):
            base = self.source
        else:
            base = Path(self.source).name or self.source
        return f"{base}/{self.split}" if self.split else base

    @property
    def path(self) -> Path | None:
        """The local file or folder, None for a data set of the cache."""
        return None if self.source.startswith(HUB_PREFIX) else Path(self.source)

    def argv(self) -> list[str]:
        """The command-line arguments that read these inputs."""
        argv = [self.source]
        for option, value in (
            ("--text-column", self.text_column),
            ("--segments-column", self.segments_column),
            ("--segments", self.segments),
            ("--target-column", self.target_column),
            ("--id-column", self.id_column),
            ("--split", self.split),
            ("--limit", self.limit),
            ("--sample", self.sample),
        ):
            if value is not None:
                argv += [option, str(value)]
        return argv

    def check(self) -> TableInputs:
        """Check the options that need no data (before anything is read); returns self."""
        given = [
            option
            for option, value in (
                ("--text-column", self.text_column),
                ("--segments-column", self.segments_column),
                ("--segments", self.segments),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise SettingsError(
                f"{' and '.join(given)}: give one of them (an input is one text, or segments "
                "from one column, or segments built from columns)"
            )
        for option, value in (("--limit", self.limit), ("--sample", self.sample)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise SettingsError(f"{option} must be an integer of at least 1, got {value!r}")
        if self.limit is not None and self.sample is not None:
            raise SettingsError(
                "--limit and --sample: give one (the first N rows, or N rows chosen by --seed)"
            )
        if self.segments is not None:
            parse_template(self.segments)
        return self


# --- segment templates ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    name: str
    pieces: tuple[tuple[str, str | None], ...]
    """(literal text, column or None) in order."""


def parse_template(template: str) -> tuple[_Part, ...]:
    """`ENV={env},LAN=<CHI> {lan}` as segments, each literal text and `{column}` fields; a
    comma starts a new segment only where `NAME=` follows it, so a text may hold commas."""
    import re

    option = f"--segments {template!r}"
    chunks = re.split(r",(?=\s*[^\s,={}]+\s*=)", template)
    parts, seen = [], set()
    for chunk in chunks:
        name, eq, fmt = chunk.partition("=")
        name = name.strip()
        if not eq or not name or "{" in name or "}" in name:
            raise SettingsError(
                f"{option}: write segments as NAME={{column}},NAME={{column}}, e.g. "
                "ENV={env},LAN={lan}"
            )
        if name in seen:
            raise SettingsError(f"{option}: the segment name '{name}' appears twice")
        seen.add(name)
        try:
            parsed = list(string.Formatter().parse(fmt))
        except ValueError as err:
            raise SettingsError(
                f"{option}: segment {name}: {err} (write a column as {{column}}, a brace as "
                "{{ or }})"
            ) from None
        pieces: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parsed:
            if field is not None and (spec or conversion or not field.strip()):
                raise SettingsError(
                    f"{option}: segment {name}: write a column as {{column}}, without "
                    "conversions or format specs"
                )
            pieces.append((literal, None if field is None else field.strip()))
        if not any(column for _, column in pieces):
            raise SettingsError(f"{option}: segment {name} names no {{column}}")
        parts.append(_Part(name, tuple(pieces)))
    return tuple(parts)


def _fill(part: _Part, row: Mapping[str, Any], where: str) -> str:
    out = []
    for literal, column in part.pieces:
        out.append(literal)
        if column is not None:
            value = row[column]
            if value is None:
                raise _RowProblem(f"{where}: column '{column}' is empty (null)")
            out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


class _RowProblem(ValueError):
    pass


# --- reading ----------------------------------------------------------------------------------


def read_table(spec: TableInputs) -> list[Example]:
    """The examples of a data set, read a batch of rows at a time and validated as .jsonl
    lines are; every problem names its row (after 19, the reading stops: the first bad rows
    are reported before any compute, without reading on through a million)."""
    spec = spec.check()
    return read_source(spec, _open(spec))


def read_source(spec: TableInputs, source: Source) -> list[Example]:
    """`read_table` on an opened source (a file, a data set, or another reader's batches)."""
    mapping = _columns(spec, source.columns, source.name)
    needed = list(dict.fromkeys(mapping.values()))
    parts = parse_template(spec.segments) if spec.segments is not None else None
    if parts is not None:
        needed += [c for p in parts for _, c in p.pieces if c is not None and c not in needed]
    chosen = _chosen_rows(spec, source)
    parsed: list[Example | str] = []
    problems = 0
    for start, batch in _rows(source, needed, chosen):
        for offset, row in zip(start, batch.to_pylist(), strict=True):
            where = f"{source.name}[{offset}]"
            item = _item(row, mapping, parts, where)
            got = item if isinstance(item, str) else validate_item(item, where)
            if isinstance(got, str):
                got = _column_names(got, where, mapping)
                problems += 1
            parsed.append(got)
            if problems == InputError.MAX_REPORTED - 1:
                found = [p for p in parsed if isinstance(p, str)]
                stop = f"{source.name}: stopped reading at row {offset}, after {problems} problems"
                raise InputError([*found, stop])
    return finish_examples(parsed, source.name)


@dataclass
class Source:
    name: str
    columns: list[str]
    rows: int | None
    """The row count where known without reading (None for an Arrow stream)."""
    batches: Any
    """A function (columns) -> iterator of pyarrow record batches (or tables)."""


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SettingsError(
            f'reading data set inputs needs {module.split(".")[0]}: pip install "reportgen[data]"'
        ) from None


def _open(spec: TableInputs) -> Source:
    if spec.source.startswith(HUB_PREFIX):
        return _from_datasets(spec, _load_hub(spec), spec.name)
    path = Path(spec.source)
    if path.is_dir():
        datasets = _need("datasets")
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise InputError(
                [
                    f"{path}: not a data set folder written by save_to_disk ({err}); give a "
                    ".parquet or .arrow file, a save_to_disk folder or hf:NAME"
                ]
            ) from None
        return _from_datasets(spec, loaded, spec.name)
    if not path.is_file():
        raise InputError([f"{path}: no such file or data set folder"])
    kind = FILE_FORMATS.get(path.suffix.lower())
    if spec.split is not None:
        raise SettingsError(
            f"--split {spec.split}: {path.name} is one table; --split chooses a split of a "
            "save_to_disk folder or of hf:NAME"
        )
    if kind == "parquet":
        return _parquet(path)
    if kind == "arrow":
        return _arrow(path)
    raise InputError(
        [f"{path}: unknown data set format '{path.suffix}' (use .parquet, .arrow or .feather)"]
    )


def _parquet(path: Path) -> Source:
    pq = _need("pyarrow.parquet")
    pa = _need("pyarrow")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError([f"{path.name}: not a readable Parquet file ({err})"]) from None

    def batches(columns: list[str]) -> Iterator[Any]:
        yield from file.iter_batches(batch_size=BATCH_ROWS, columns=columns)

    return Source(path.name, list(file.schema_arrow.names), file.metadata.num_rows, batches)


def _arrow(path: Path) -> Source:
    """An Arrow IPC file (random access, Feather v2) or stream (what `datasets` caches),
    memory-mapped: batches are read as they are asked for."""
    pa = _need("pyarrow")
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        reader = None
    if reader is not None:
        file = reader

        def batches(columns: list[str]) -> Iterator[Any]:
            for i in range(file.num_record_batches):
                yield from _split(file.get_batch(i).select(columns))

        rows = sum(file.get_batch(i).num_rows for i in range(file.num_record_batches))
        return Source(path.name, list(file.schema.names), rows, batches)
    try:
        schema = pa.ipc.open_stream(pa.memory_map(str(path))).schema
    except (pa.ArrowException, OSError) as err:
        raise InputError([f"{path.name}: not a readable Arrow file or stream ({err})"]) from None

    def stream(columns: list[str]) -> Iterator[Any]:
        for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
            yield from _split(batch.select(columns))

    return Source(path.name, list(schema.names), None, stream)


def _split(batch: pa.RecordBatch) -> Iterator[Any]:
    """A record batch in slices of at most BATCH_ROWS rows (zero-copy)."""
    for start in range(0, batch.num_rows, BATCH_ROWS):
        yield batch.slice(start, BATCH_ROWS)


def _load_hub(spec: TableInputs) -> Any:
    datasets = _need("datasets")
    name, _, config = spec.source[len(HUB_PREFIX) :].partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=spec.split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            [
                f"{spec.source}: cannot load this data set from the Hugging Face cache "
                f"({first}); download it first (datasets.load_dataset) or give a file"
            ]
        ) from None


def _from_datasets(spec: TableInputs, loaded: Any, name: str) -> Source:
    datasets = _need("datasets")
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        splits = list(loaded)
        if spec.split is None and len(splits) == 1:
            loaded = loaded[splits[0]]
        elif spec.split is None:
            raise SettingsError(
                f"{spec.source} has the splits {', '.join(splits)}; choose one with --split"
            )
        elif spec.split not in loaded:
            raise SettingsError(
                f"--split {spec.split}: {spec.source} has the splits {', '.join(splits)}"
            )
        else:
            loaded = loaded[spec.split]
    elif spec.split is not None and not spec.source.startswith(HUB_PREFIX):
        raise SettingsError(
            f"--split {spec.split}: {spec.source} is one data set, not a dictionary of splits"
        )
    data = loaded

    def batches(columns: list[str]) -> Iterator[Any]:
        view = data.select_columns(columns).with_format("arrow")
        yield from view.iter(batch_size=BATCH_ROWS)

    return Source(name, list(data.column_names), data.num_rows, batches)


def _columns(spec: TableInputs, columns: Sequence[str], name: str) -> dict[str, str]:
    """Which column holds each field of the .jsonl mapping (text or segments, target, id,
    meta), checked against the columns there are."""
    have = set(columns)
    shown = ", ".join(columns) or "none"

    def missing(column: str, option: str) -> InputError:
        return InputError([f"{name}: no column '{column}' ({option}); the columns are: {shown}"])

    mapping: dict[str, str] = {}
    for field, column, option in (
        ("text", spec.text_column, "--text-column"),
        ("segments", spec.segments_column, "--segments-column"),
        ("target", spec.target_column, "--target-column"),
        ("id", spec.id_column, "--id-column"),
    ):
        if column is not None:
            if column not in have:
                raise missing(column, option)
            mapping[field] = column
    if spec.segments is not None:
        for part in parse_template(spec.segments):
            for _, column in part.pieces:
                if column is not None and column not in have:
                    raise missing(column, f"--segments, segment {part.name}")
    elif "text" not in mapping and "segments" not in mapping:
        if "text" in have:
            mapping["text"] = "text"
        elif "segments" in have:
            mapping["segments"] = "segments"
        else:
            raise InputError(
                [
                    f"{name}: no 'text' column; name the text column with --text-column, or "
                    f"build segments with --segments-column or --segments (the columns are: "
                    f"{shown})"
                ]
            )
    if "target" not in mapping:
        found = [c for c in ("target", "label") if c in have]
        if len(found) == 2:
            raise InputError(
                [
                    f"{name}: has both a 'target' and a 'label' column; choose one with "
                    "--target-column"
                ]
            )
        if found:
            mapping["target"] = found[0]
    if "id" not in mapping and "id" in have:
        mapping["id"] = "id"
    if "meta" in have and "meta" not in mapping.values():
        mapping["meta"] = "meta"
    return mapping


def _chosen_rows(spec: TableInputs, source: Source) -> np.ndarray | int | None:
    """The sorted row indices of --sample, the row count of --limit, or None (every row)."""
    import numpy as np

    if spec.limit is not None:
        return spec.limit
    if spec.sample is None:
        return None
    rows = source.rows
    if rows is None:  # an Arrow stream: count its rows (batch headers, memory-mapped)
        rows = sum(b.num_rows for b in source.batches(source.columns[:1]))
    if spec.sample > rows:
        raise SettingsError(
            f"--sample {spec.sample}: {source.name} has {rows} rows; sample at most {rows}"
        )
    keys = sample_keys(spec.seed, rows)
    return np.sort(np.argsort(keys, kind="stable")[: spec.sample])


def sample_keys(seed: int, rows: int) -> np.ndarray:
    """A 64-bit key per row index, splitmix64 of (seed, index): fixed integer arithmetic, so
    the rows --sample keeps are the same for a seed on any machine, numpy and Python."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = np.arange(rows, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _rows(
    source: Source, columns: list[str], chosen: np.ndarray | int | None
) -> Iterator[tuple[Sequence[int], Any]]:
    """(row indices, batch of those rows) for the chosen rows, batch by batch."""
    import numpy as np

    at = 0
    for batch in source.batches(columns):
        n = batch.num_rows
        if chosen is None:
            yield range(at, at + n), batch
        elif isinstance(chosen, int):
            take = min(n, chosen - at)
            if take <= 0:
                return
            yield range(at, at + take), batch.slice(0, take)
        else:
            lo, hi = np.searchsorted(chosen, [at, at + n])
            if hi > lo:
                picked = chosen[lo:hi]
                yield picked.tolist(), batch.take(picked - at)
            if hi == len(chosen):
                return
        at += n
        if isinstance(chosen, int) and at >= chosen:
            return


def _item(
    row: Mapping[str, Any],
    mapping: Mapping[str, str],
    parts: Sequence[_Part] | None,
    where: str,
) -> dict[str, Any] | str:
    """The .jsonl-shaped mapping of a row (a null target or id is left out, as if absent)."""
    item: dict[str, Any] = {}
    for field, column in mapping.items():
        value = row[column]
        if value is None and field in ("target", "id", "meta"):
            continue
        item[field] = value
    if parts is not None:
        try:
            item["segments"] = [{"name": p.name, "text": _fill(p, row, where)} for p in parts]
        except _RowProblem as err:
            return str(err)
    return item


def _column_names(problem: str, where: str, mapping: Mapping[str, str]) -> str:
    """A .jsonl problem about a field, told in the column's name (`"text"` → column 'sentence')."""
    head, rest = problem[: len(where)], problem[len(where) :]
    for field, column in mapping.items():
        if field != column:
            rest = rest.replace(f'"{field}"', f"column '{column}'")
    return head + rest


__all__ = ["BATCH_ROWS", "TableInputs", "is_table", "read_table", "sample_keys"]
