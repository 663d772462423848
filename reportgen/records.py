"""Records: a run folder on disk, written as results stream in and read back lazily.

    RUN/manifest.json               the format, the run's description and the entry count
    RUN/entries.jsonl               one JSON line per example: everything but its arrays
    RUN/records/000001.safetensors  the example's HeadStats: `total`, `prediction` [L, H] and
                                    `flow` [L, H, n+1, n+1] (float64, exact), `top_cells` (int32)
                                    and `top_values` (float32) [L, H, k]; with --store dense
                                    also `dense` [L, H, T, T]

Any metric's head scores come from `total`, `prediction` and `flow`, so a run renders under
any metric without recomputing. Nothing but numpy arrays and plain values is stored; loading
gives back equal `Result`s. A run folder is data: record paths stay inside it, are regular
files, and every array's shape is checked against its entry. The
writer appends each entry line as its result arrives and writes the manifest last; the reader
keeps only each entry's id and byte offset, parsing a line again when it is asked for. So memory
does not grow with the number of examples.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, overload

import numpy as np
from safetensors.numpy import load_file, save_file

from reportgen.data.examples import Example, Segment
from reportgen.data.metrics import Metric, parse_metric, shares
from reportgen.data.results import Ablation, HeadStats, Result, TokenSpan
from reportgen.errors import RunError
from reportgen.fsutil import staged_update

MANIFEST = "manifest.json"
ENTRIES = "entries.jsonl"
FORMAT = "reportgen-run/2"
OLD_FORMATS = {"reportgen-run/1": "reportgen 0.1"}


@dataclass(frozen=True)
class RunInfo:
    """What produced a run: model, versions, method and parameters."""

    model: str
    model_path: str
    weights_sha256: str
    architecture: str
    task: str
    num_layers: int
    num_heads: int
    attn_implementation: str
    dtype: str
    device: str
    method: str
    metric: str
    parameters: Mapping[str, Any]
    versions: Mapping[str, str]
    command: str
    created: str
    title: str = ""


@dataclass(frozen=True)
class Entry:
    """An entry of entries.jsonl: everything about an example but its arrays, and where those
    are."""

    record: str
    example: Example
    tokens: tuple[str, ...]
    spans: tuple[TokenSpan, ...]
    target: str | None
    target_given: bool
    predicted: str | None
    value: float
    loss: float
    prediction_position: int | None
    ablation: Ablation | None

    @property
    def id(self) -> str:
        return self.example.id


def timestamp() -> str:
    """UTC time as ISO 8601, from SOURCE_DATE_EPOCH when set (reproducible runs)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc)
        if epoch
        else dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    )
    return moment.isoformat().replace("+00:00", "Z")


def is_run(path: Path) -> bool:
    """Whether a folder looks like a reportgen run (its manifest names a run format)."""
    try:
        head = json.loads((Path(path) / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    found = head.get("format") if isinstance(head, dict) else None
    return found == FORMAT or found in OLD_FORMATS


class RunWriter:
    """Stream results into a new run folder that replaces `out` only once complete.

    Each result's arrays go to its record file and its entry line to entries.jsonl at once, so
    nothing accumulates in memory; the manifest is written on success, and the folder (in a
    temporary place until then) is swapped in."""

    def __init__(self, out: Path, info: RunInfo, force: bool = False) -> None:
        self.out, self.info, self.force = Path(out), info, force
        self._count = 0

    def __enter__(self) -> RunWriter:
        self._ctx = staged_update(self.out, "run", self.force)
        self._tmp = self._ctx.__enter__()
        try:
            (self._tmp / "records").mkdir()
            self._entries: IO[str] = open(self._tmp / ENTRIES, "w", encoding="utf-8", newline="\n")
        except BaseException:
            self._ctx.__exit__(*sys.exc_info())
            raise
        return self

    def add(self, result: Result) -> None:
        record = f"records/{self._count + 1:06d}.safetensors"
        line = _dumps_line(_entry_json(result, record))
        stats = result.stats
        arrays: dict[str, np.ndarray] = {
            "total": np.ascontiguousarray(stats.total, dtype=np.float64),
            "prediction": np.ascontiguousarray(stats.prediction, dtype=np.float64),
            "flow": np.ascontiguousarray(stats.flow, dtype=np.float64),
            "top_cells": np.ascontiguousarray(stats.top_cells, dtype=np.int32),
            "top_values": np.ascontiguousarray(stats.top_values, dtype=np.float32),
        }
        if result.dense is not None:
            arrays["dense"] = np.ascontiguousarray(result.dense)
        save_file(arrays, str(self._tmp / record))
        self._entries.write(line)
        self._count += 1

    def __exit__(self, *exc: object) -> None:
        try:
            self._entries.close()
            if exc[0] is None:
                head = {"format": FORMAT, "run": asdict(self.info), "count": self._count}
                (self._tmp / MANIFEST).write_text(_dumps(head), "utf-8")
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]


class Entries(Sequence[Entry]):
    """A run's entries, parsed from entries.jsonl when asked for, not held in memory: only each
    entry's id and byte offset are kept."""

    def __init__(self, path: Path, ids: Sequence[str], offsets: np.ndarray) -> None:
        self.path = path
        self.ids: tuple[str, ...] = tuple(ids)
        """Every entry's example id, in order."""
        self._offsets = offsets
        self._stamp = _stamp(path)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError and negative indices as for a list
        with self._open() as fh:
            fh.seek(int(self._offsets[i]))
            return _entry(fh.readline(), i, self.path)

    def __iter__(self) -> Iterator[Entry]:
        with self._open() as fh:
            for i in range(len(self)):
                yield _entry(fh.readline(), i, self.path)

    def _open(self) -> IO[bytes]:
        fh = open(self.path, "rb")  # noqa: SIM115 (closed by the callers' `with`)
        if _stamp(fh) != self._stamp:
            fh.close()
            raise RunError(f"{self.path}: changed since the run was opened; open it again")
        return fh


@dataclass(frozen=True)
class Run:
    """A run folder opened for reading; entries and arrays are read one example at a time."""

    path: Path
    info: RunInfo
    entries: Entries

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        manifest = path / MANIFEST
        try:
            head = json.loads(manifest.read_text("utf-8"))
        except FileNotFoundError:
            raise RunError(
                f"{path} is not a run folder (no {MANIFEST}); make one with `reportgen compute`"
            ) from None
        except (OSError, ValueError) as err:
            raise RunError(f"{manifest}: cannot be read ({err})") from None
        found = head.get("format") if isinstance(head, dict) else None
        if found in OLD_FORMATS:
            raise RunError(
                f"{path}: a run folder of format {found}, written by {OLD_FORMATS[found]}; this "
                f"reportgen reads {FORMAT}: compute it again with `reportgen compute`"
            )
        if found != FORMAT:
            raise RunError(f"{manifest}: not a {FORMAT} manifest")
        try:
            run, count = head["run"], head["count"]
            info = RunInfo(**{**run, "parameters": run["parameters"], "versions": run["versions"]})
        except (KeyError, TypeError) as err:
            raise RunError(f"{manifest}: the run description is incomplete ({err})") from None
        ids, offsets = _scan(path / ENTRIES)
        if len(ids) != count:
            raise RunError(
                f"{path / ENTRIES}: {len(ids)} entries, but the manifest counts {count}; the run "
                "folder was changed after it was written: compute it again"
            )
        return cls(path, info, Entries(path / ENTRIES, ids, offsets))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every example's id, in order (without reading the entries again)."""
        return self.entries.ids

    def result(self, index: int) -> Result:
        """The full result of example `index` (its arrays read from disk)."""
        return self._result(self.entries[index])

    def results(self) -> Iterator[Result]:
        for entry in self.entries:
            yield self._result(entry)

    def head_scores(self, metric: str | Metric) -> np.ndarray:
        """Every example's head shares under `metric` (any metric: they come from the exact
        reductions), float32 [examples, layers, heads]."""
        from safetensors import safe_open

        parsed = parse_metric(metric)
        key = {"total": "total", "prediction": "prediction"}.get(parsed.kind, "flow")
        layers, heads = self.info.num_layers, self.info.num_heads
        grids = np.empty((len(self), layers, heads), np.float32)
        for i, entry in enumerate(self.entries):
            path = self._record(entry)
            with safe_open(str(path), framework="numpy") as fh:
                if key not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise RunError(f"{path}: no '{key}' array; the run folder is damaged")
                mass = fh.get_tensor(key)
            _check_shape(path, key, mass, _shapes(self.info, entry, 0)[key])
            stats = HeadStats(
                segments=tuple(s.name for s in entry.spans),
                total=mass if key == "total" else np.zeros((layers, heads)),
                prediction=mass if key == "prediction" else np.zeros((layers, heads)),
                flow=mass if key == "flow" else np.zeros((layers, heads, 1, 1)),
                top_cells=np.zeros((layers, heads, 0), np.int32),
                top_values=np.zeros((layers, heads, 0), np.float32),
            )
            grids[i] = shares(stats, parsed, entry.id)
        return grids

    def _result(self, entry: Entry) -> Result:
        path = self._record(entry)
        arrays = self._arrays(path)
        k = arrays["top_cells"].shape[-1] if "top_cells" in arrays else 0
        for key, shape in _shapes(self.info, entry, k).items():
            if key not in arrays:
                if key == "dense":
                    continue
                raise RunError(f"{path}: no '{key}' array; the run folder is damaged")
            _check_shape(path, key, arrays[key], shape)
        stats = HeadStats(
            segments=tuple(s.name for s in entry.spans),
            total=arrays["total"],
            prediction=arrays["prediction"],
            flow=arrays["flow"],
            top_cells=arrays["top_cells"],
            top_values=arrays["top_values"],
        )
        return Result(
            example=entry.example,
            tokens=entry.tokens,
            spans=entry.spans,
            target=entry.target,
            target_given=entry.target_given,
            predicted=entry.predicted,
            value=entry.value,
            loss=entry.loss,
            prediction_position=entry.prediction_position,
            stats=stats,
            ablation=entry.ablation,
            dense=arrays.get("dense"),
        )

    def _record(self, entry: Entry) -> Path:
        """The entry's record file, confined to the run folder: a relative path without `..`
        naming a regular file (never a link out, a device or a FIFO)."""
        record = PurePosixPath(entry.record)
        if record.is_absolute() or ".." in record.parts or "\\" in entry.record:
            raise RunError(
                f"{self.path / ENTRIES}: entry '{entry.id}' names record '{entry.record}' "
                "outside the run folder; the run folder is damaged or not reportgen's"
            )
        path = self.path / record
        try:
            mode = os.lstat(path).st_mode
        except OSError as err:
            raise RunError(f"{path}: cannot be read ({err.strerror})") from None
        if not stat.S_ISREG(mode):
            raise RunError(f"{path}: not a regular file; the run folder is damaged")
        return path

    def _arrays(self, path: Path) -> dict[str, np.ndarray]:
        try:
            return load_file(str(path))
        except (OSError, ValueError) as err:
            raise RunError(f"{path}: cannot be read ({err})") from None


def _shapes(info: RunInfo, entry: Entry, k: int) -> dict[str, tuple[int, ...]]:
    """The shape each record array must have, from the run and the entry."""
    layers, heads, tokens = info.num_layers, info.num_heads, len(entry.tokens)
    groups = len(entry.spans) + 1
    return {
        "total": (layers, heads),
        "prediction": (layers, heads),
        "flow": (layers, heads, groups, groups),
        "top_cells": (layers, heads, k),
        "top_values": (layers, heads, k),
        "dense": (layers, heads, tokens, tokens),
    }


def _check_shape(path: Path, key: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != shape:
        raise RunError(
            f"{path}: '{key}' has shape {tuple(array.shape)}, not {shape} as its entry and the "
            "run say; the run folder is damaged"
        )


def _scan(path: Path) -> tuple[list[str], np.ndarray]:
    """Every entry's id and byte offset; each line is parsed (and checked) once, then dropped."""
    ids: list[str] = []
    offsets: list[int] = []
    offset = 0
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    ids.append(_entry(line, len(ids), path).id)
                    offsets.append(offset)
                offset += len(line)
    except FileNotFoundError:
        raise RunError(
            f"{path.parent}: the run folder has no {ENTRIES}; compute it again"
        ) from None
    return ids, np.array(offsets, np.int64)


def _entry_json(result: Result, record: str) -> dict[str, Any]:
    ex = result.example
    return {
        "id": ex.id,
        "record": record,
        "source": ex.source,
        "segments": [{"name": s.name, "text": s.text} for s in ex.segments],
        "meta": dict(ex.meta),
        "tokens": list(result.tokens),
        "spans": [{"name": s.name, "start": s.start, "end": s.end} for s in result.spans],
        "target": result.target,
        "target_given": result.target_given,
        "predicted": result.predicted,
        "value": result.value,
        "loss": result.loss,
        "prediction_position": result.prediction_position,
        "ablation": None
        if result.ablation is None
        else {
            "heads": [list(h) for h in result.ablation.heads],
            "value": result.ablation.value,
            "value_top": result.ablation.value_top,
            "value_random": result.ablation.value_random,
            "draws": result.ablation.draws,
        },
    }


def _entry(line: bytes, index: int, path: Path) -> Entry:
    try:
        raw = json.loads(line.decode("utf-8"))
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        return _entry_from(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{path}: entry {index + 1} is incomplete or malformed ({err!r})") from None


def _entry_from(e: Mapping[str, Any]) -> Entry:
    ablation = e["ablation"]
    return Entry(
        record=e["record"],
        example=Example(
            e["id"],
            tuple(Segment(s["name"], s["text"]) for s in e["segments"]),
            e["target"] if e["target_given"] else None,
            e["meta"],
            e["source"],
        ),
        tokens=tuple(e["tokens"]),
        spans=tuple(TokenSpan(s["name"], s["start"], s["end"]) for s in e["spans"]),
        target=e["target"],
        target_given=e["target_given"],
        predicted=e["predicted"],
        value=e["value"],
        loss=e["loss"],
        prediction_position=e["prediction_position"],
        ablation=None
        if ablation is None
        else Ablation(
            tuple((int(a), int(b)) for a, b in ablation["heads"]),
            ablation["value"],
            ablation["value_top"],
            ablation["value_random"],
            ablation["draws"],
        ),
    )


def _dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def _dumps_line(data: object) -> str:
    """One JSON line: json escapes newlines inside strings, so the line holds no LF."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def _stamp(file: Path | IO[bytes]) -> tuple[int, ...]:
    """What identifies a version of a file: device, inode, size, modification time."""
    st = os.stat(file) if isinstance(file, Path) else os.fstat(file.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
