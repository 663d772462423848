"""Records: a run folder on disk, written as results stream in and read back lazily.

    RUN/manifest.json               run information and one entry per example
    RUN/records/000001.safetensors  `scores` [L, H, T, T] and `head_scores/<metric>` [L, H]

Nothing but numpy arrays and plain values is stored; loading gives back equal `Result`s.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    """Whether a folder looks like a reportgen run."""
    try:
        return json.loads((path / MANIFEST).read_text("utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class RunWriter:
    """Stream results into a new run folder that replaces `out` only once complete."""

    def __init__(self, out: Path, info: RunInfo, force: bool = False) -> None:
        self.out, self.info, self.force = Path(out), info, force
        self._entries: list[dict[str, Any]] = []

    def __enter__(self) -> RunWriter:
        self._ctx = atomic_dir(self.out, is_run, self.force)
        self._tmp = self._ctx.__enter__()
        (self._tmp / "records").mkdir()
        return self

    def add(self, result: Result) -> None:
        record = f"records/{len(self._entries) + 1:06d}.safetensors"
        arrays = {"scores": np.ascontiguousarray(result.scores, dtype=np.float32)}
        for name, grid in result.head_scores.items():
            arrays[f"head_scores/{name}"] = np.ascontiguousarray(grid, dtype=np.float32)
        save_file(arrays, str(self._tmp / record))
        self._entries.append(_entry_json(result, record))

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            manifest = {"format": FORMAT, "run": asdict(self.info), "examples": self._entries}
            (self._tmp / MANIFEST).write_text(_dumps(manifest), "utf-8")
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Run:
    """A run folder opened for reading; arrays are loaded one example at a time."""

    path: Path
    info: RunInfo
    entries: tuple[Entry, ...]

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        try:
            data = json.loads((path / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            raise RunError(
                f"{path} is not a run folder (no {MANIFEST}); make one with `reportgen compute`"
            ) from None
        except (OSError, ValueError) as err:
            raise RunError(f"{path / MANIFEST}: cannot be read ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunError(f"{path / MANIFEST}: not a {FORMAT} manifest")
        run = data["run"]
        info = RunInfo(**{**run, "parameters": run["parameters"], "versions": run["versions"]})
        entries = tuple(_entry(e) for e in data["examples"])
        return cls(path, info, entries)

    def __len__(self) -> int:
        return len(self.entries)

    def result(self, index: int) -> Result:
        """The full result of example `index` (its arrays read from disk)."""
        entry = self.entries[index]
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

    def results(self) -> Iterator[Result]:
        for index in range(len(self.entries)):
            yield self.result(index)

    def head_scores(self, metric: str) -> np.ndarray:
        """Every example's head shares under `metric`, float32 [examples, layers, heads]."""
        from safetensors import safe_open

        grids = []
        for entry in self.entries:
            with safe_open(str(self.path / entry.record), framework="numpy") as fh:
                key = f"head_scores/{metric}"
                if key not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise RunError(
                        f"{self.path}: example '{entry.id}' has no head scores for {metric}"
                    )
                grids.append(fh.get_tensor(key))
        return (
            np.stack(grids) if grids else np.zeros((0, self.info.num_layers, self.info.num_heads))
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


def _entry(e: Mapping[str, Any]) -> Entry:
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
