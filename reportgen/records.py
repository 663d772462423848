"""Records: a run folder on disk, written as results stream in and read back lazily.

    RUN/manifest.json               run information and one entry per example
    RUN/records/000001.safetensors  `scores` [L, H, T, T] and `head_scores/<metric>` [L, H]

Nothing but numpy arrays and plain values is stored; loading gives back equal `Result`s.
Neither side holds the manifest in memory: the writer appends each entry to it as its result
arrives, and the reader keeps only each entry's id and place in the file, parsing an entry again
when it is asked for. So memory does not grow with the number of examples.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, overload

import numpy as np
from safetensors.numpy import load_file, save_file

from reportgen.fsutil import atomic_dir
from reportgen.inputs import Example, Segment
from reportgen.saliency import Ablation, Result, TokenSpan

MANIFEST = "manifest.json"
FORMAT = "reportgen-run/1"


class RunError(RuntimeError):
    """A run folder that cannot be read; the message says which and why."""


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
    """A manifest entry: everything about an example but its arrays, and where those are."""

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
    """Whether a folder looks like a reportgen run (only the manifest's head is read)."""
    try:
        scanned = _scan(path / MANIFEST, header_only=True)
        if scanned is None:  # not the layout RunWriter writes: read it all
            return json.loads((path / MANIFEST).read_text("utf-8")).get("format") == FORMAT
        return scanned[0].get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class RunWriter:
    """Stream results into a new run folder that replaces `out` only once complete.

    Each result's arrays go to its record file and its manifest entry is appended to the
    manifest at once, so nothing accumulates in memory; the manifest is closed on success, and
    the folder (in a temporary place until then) is swapped in."""

    def __init__(self, out: Path, info: RunInfo, force: bool = False) -> None:
        self.out, self.info, self.force = Path(out), info, force
        self._count = 0

    def __enter__(self) -> RunWriter:
        self._ctx = atomic_dir(self.out, is_run, self.force)
        self._tmp = self._ctx.__enter__()
        try:
            (self._tmp / "records").mkdir()
            self._manifest: IO[str] = open(self._tmp / MANIFEST, "w", encoding="utf-8")
            self._manifest.write(_manifest_head(self.info))
        except BaseException:
            self._ctx.__exit__(*sys.exc_info())
            raise
        return self

    def add(self, result: Result) -> None:
        record = f"records/{self._count + 1:06d}.safetensors"
        text = _dumps_entry(_entry_json(result, record))
        arrays = {"scores": np.ascontiguousarray(result.scores, dtype=np.float32)}
        for name, grid in result.head_scores.items():
            arrays[f"head_scores/{name}"] = np.ascontiguousarray(grid, dtype=np.float32)
        save_file(arrays, str(self._tmp / record))
        # As json.dumps(manifest, indent=1) lays out the list "examples" (see _manifest_head).
        self._manifest.write(("\n  " if self._count == 0 else ",\n  ") + text)
        self._count += 1

    def __exit__(self, *exc: object) -> None:
        try:
            with self._manifest:
                if exc[0] is None:
                    self._manifest.write("\n ]\n}\n" if self._count else "]\n}\n")
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]


class Entries(Sequence[Entry]):
    """A run's manifest entries, parsed from the manifest when asked for, not held in memory:
    only each entry's id and byte range are kept (or, for a manifest not laid out as RunWriter
    writes it, the parsed JSON)."""

    def __init__(
        self,
        manifest: Path,
        ids: Sequence[str],
        spans: np.ndarray | None = None,
        parsed: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.manifest = manifest
        self.ids: tuple[str, ...] = tuple(ids)
        """Every entry's example id, in order."""
        self._spans = spans
        self._parsed = parsed
        self._stamp = _stamp(manifest) if spans is not None else None

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
        if self._parsed is not None:
            return _entry(self._parsed[i], i, self.manifest)
        with self._open() as fh:
            return self._read(fh, i)

    def __iter__(self) -> Iterator[Entry]:
        if self._parsed is not None:
            for i, raw in enumerate(self._parsed):
                yield _entry(raw, i, self.manifest)
            return
        with self._open() as fh:
            for i in range(len(self)):
                yield self._read(fh, i)

    def _open(self) -> IO[bytes]:
        fh = open(self.manifest, "rb")  # noqa: SIM115 (closed by the callers' `with`)
        if _stamp(fh) != self._stamp:
            fh.close()
            raise RunError(f"{self.manifest}: changed since the run was opened; open it again")
        return fh

    def _read(self, fh: IO[bytes], i: int) -> Entry:
        assert self._spans is not None
        start, end = (int(x) for x in self._spans[i])
        fh.seek(start)
        return _entry(json.loads(fh.read(end - start).decode("utf-8")), i, self.manifest)


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
            scanned = _scan(manifest)
            if scanned is None:  # not the layout RunWriter writes: read it all
                data = json.loads(manifest.read_text("utf-8"))
                header, examples = data, data.get("examples") if isinstance(data, dict) else None
            else:
                header, ids, spans = scanned
        except FileNotFoundError:
            raise RunError(
                f"{path} is not a run folder (no {MANIFEST}); make one with `reportgen compute`"
            ) from None
        except (OSError, ValueError) as err:
            raise RunError(f"{manifest}: cannot be read ({err})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise RunError(f"{manifest}: not a {FORMAT} manifest")
        try:
            run = header["run"]
            info = RunInfo(**{**run, "parameters": run["parameters"], "versions": run["versions"]})
        except (KeyError, TypeError) as err:
            raise RunError(f"{manifest}: the run description is incomplete ({err})") from None
        if scanned is None:
            if not isinstance(examples, list):
                raise RunError(f'{manifest}: "examples" is not a list')
            ids = [_entry(e, i, manifest).id for i, e in enumerate(examples)]
            return cls(path, info, Entries(manifest, ids, parsed=examples))
        return cls(path, info, Entries(manifest, ids, spans=spans))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every example's id, in order (without reading the manifest again)."""
        return self.entries.ids

    def result(self, index: int) -> Result:
        """The full result of example `index` (its arrays read from disk)."""
        return self._result(self.entries[index])

    def results(self) -> Iterator[Result]:
        for entry in self.entries:
            yield self._result(entry)

    def head_scores(self, metric: str) -> np.ndarray:
        """Every example's head shares under `metric`, float32 [examples, layers, heads]."""
        from safetensors import safe_open

        key = f"head_scores/{metric}"
        grids: np.ndarray | None = None
        for i, entry in enumerate(self.entries):
            with safe_open(str(self.path / entry.record), framework="numpy") as fh:
                if key not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise RunError(
                        f"{self.path}: example '{entry.id}' has no head scores for {metric}"
                    )
                grid = fh.get_tensor(key)
            if grids is None:  # filled in place: no list of arrays to stack at the end
                grids = np.empty((len(self), *grid.shape), grid.dtype)
            if grid.shape != grids.shape[1:]:
                raise RunError(
                    f"{self.path / entry.record}: head scores of shape {grid.shape}, "
                    f"not {grids.shape[1:]} as the other examples'"
                )
            grids[i] = grid
        if grids is None:
            return np.zeros((0, self.info.num_layers, self.info.num_heads))
        return grids

    def _result(self, entry: Entry) -> Result:
        arrays = self._arrays(entry)
        grids = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("head_scores/")}
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
            scores=arrays["scores"],
            head_scores=grids,
            ablation=entry.ablation,
        )

    def _arrays(self, entry: Entry) -> dict[str, np.ndarray]:
        try:
            return load_file(str(self.path / entry.record))
        except (OSError, ValueError) as err:
            raise RunError(f"{self.path / entry.record}: cannot be read ({err})") from None


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


def _entry(e: Mapping[str, Any], index: int, manifest: Path) -> Entry:
    try:
        return _entry_from(e)
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(
            f"{manifest}: entry {index + 1} is incomplete or malformed ({err!r})"
        ) from None


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


def _dumps_entry(entry: Mapping[str, Any]) -> str:
    """An entry as `_dumps` lays it out inside the manifest's list (two levels deep): json
    escapes newlines inside strings, so every newline is indentation."""
    text = json.dumps(entry, ensure_ascii=False, indent=1, allow_nan=False)
    return text.replace("\n", "\n  ")


def _manifest_head(info: RunInfo) -> str:
    """The manifest up to the opening `[` of its list "examples" (its last key), exactly as
    `_dumps` writes it; RunWriter appends the entries and the closing brackets."""
    text = _dumps({"format": FORMAT, "run": asdict(info), "examples": []})
    tail = '"examples": []\n}\n'
    assert text.endswith(tail), "examples must be the manifest's last key"
    return text[: -len(tail)] + '"examples": ['


_EXAMPLES_OPEN, _EXAMPLES_EMPTY = b' "examples": [', b' "examples": []'
_ENTRY_OPEN, _ENTRY_CLOSE, _ENTRY_CLOSE_MORE = b"  {", b"  }", b"  },"


def _scan(
    manifest: Path, header_only: bool = False
) -> tuple[dict[str, Any], list[str], np.ndarray] | None:
    """Read a manifest laid out as RunWriter writes it (`_dumps`: json with indent 1), one
    line at a time: (everything but the entries, their ids, their byte ranges [start, end)).

    In that layout an entry of "examples" is exactly the lines from `  {` to `  }` (deeper
    values are indented further, and json escapes newlines in strings). Each entry is parsed
    as it is passed (to check it and take its id), then dropped. None if the file is laid out
    otherwise (edited by hand, say): the caller then parses it whole."""
    header = bytearray()
    ids: list[str] = []
    bounds: list[int] = []
    entry: list[bytes] = []
    state, offset = "header", 0
    with open(manifest, "rb") as fh:
        for line in fh:
            bare = line.rstrip(b"\r\n")
            if state == "entry":
                entry.append(line)
                if bare in (_ENTRY_CLOSE, _ENTRY_CLOSE_MORE):
                    raw = json.loads(b"".join(entry).decode("utf-8").rstrip().rstrip(","))
                    if not isinstance(raw, dict):
                        return None
                    ids.append(_entry(raw, len(ids), manifest).id)
                    bounds.append(offset + len(_ENTRY_CLOSE))
                    entry.clear()
                    state = "next" if bare == _ENTRY_CLOSE_MORE else "last"
            elif state == "header":
                if bare in (_EXAMPLES_OPEN, _EXAMPLES_EMPTY):
                    parsed = json.loads(bytes(header + b'"examples": []}').decode("utf-8"))
                    if not isinstance(parsed, dict):
                        return None
                    if header_only:
                        return parsed, [], np.zeros((0, 2), np.int64)
                    state = "first" if bare == _EXAMPLES_OPEN else "end"
                else:
                    header += line
            elif state in ("first", "next") and bare == _ENTRY_OPEN:
                entry.append(line)
                bounds.append(offset)
                state = "entry"
            elif state in ("first", "last") and bare == b" ]":
                state = "end"
            elif state == "end" and bare == b"}":
                state = "done"
            elif not (state == "done" and not line.strip()):
                return None
            offset += len(line)
    if state != "done":
        return None
    return parsed, ids, np.array(bounds, np.int64).reshape(-1, 2)


def _stamp(file: Path | IO[bytes]) -> tuple[int, ...]:
    """What identifies a version of a file: device, inode, size, modification time."""
    st = os.stat(file) if isinstance(file, Path) else os.fstat(file.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
