"""Records: a run folder on disk, written as results stream in and read back lazily.

    RUN/manifest.json               the format, the run's description and the entry count
    RUN/entries.jsonl               one JSON line per example: everything but its arrays
    RUN/records/000001.safetensors  the example's HeadStats: `total`, `prediction` [L, H] and
                                    `flow` [L, H, n+1, n+1] (float64, exact), `top_cells` (int32)
                                    and `top_values` (float32) [L, H, k]; with --store dense
                                    also `dense` [L, H, T, T]; rollout methods add
                                    `relevance` [L, T], attn-grad --aggregate wang adds
                                    `pair_sums` and `pair_counts` [L, n+2, n+2] (float64);
                                    inputs longer than `data.blocks.LONG_TOKENS` add
                                    `block_edges` [b+1] (int64) and `blocks` [L, H, b, b]
                                    (float32 block sums; float64 in runs from before
                                    `data.blocks.TOKENS_PER_BLOCK`)

Any metric's head scores come from `total`, `prediction` and `flow`, so a run renders under
any metric without recomputing. Nothing but numpy arrays and plain values is stored; loading
gives back equal `Result`s. A run folder is data: record paths stay inside it, are regular
files, and every array's shape is checked against its entry. The
writer appends each entry line as its result arrives and writes the manifest last; the reader
keeps only each entry's id and byte offset, parsing a line again when it is asked for. So memory
does not grow with the number of examples.

The manifest also names the inputs (their count and a SHA-256 over them) and, for a shard of a
larger run, which shard it is and the inputs it covers (`--shard I/N`); `merge_shards` joins
complete shards into one run folder equal to the run computed in one go.

**Resumable runs.** `reportgen compute` writes through a *partial run*, `.NAME.partial/` beside
the run folder: `partial.json` (the run's description as it started, its inputs and settings),
then each record (written under a temporary name and renamed, so a record with its final name is
whole) and its entry line (appended after the record, and synced to disk every few seconds). So
whatever kills the process, the partial run holds a valid prefix of the run: `--resume` finds it,
checks that the inputs and settings are the same, keeps the entries whose records are complete
and computes the rest. When the last result is written the run is *sealed*: its files are
hard-linked into a staged update of the run folder (`fsutil.staged_update`), the manifest written
and the update committed; then the partial run is removed. A resumed run records the run as it
started (its command and start time), so it equals, byte for byte, the run computed without a
break.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, overload

import numpy as np
from safetensors.numpy import load_file, save

from reportgen.data.examples import Example, Segment
from reportgen.data.metrics import Metric, parse_metric, shares
from reportgen.data.results import (
    PATCH_CHECKED,
    Ablation,
    HeadStats,
    Knockout,
    PairFlow,
    Patching,
    Result,
    TokenSpan,
    UnknownToken,
)
from reportgen.errors import OutputError, RunError
from reportgen.fsutil import RUN_WRITES, check_folder, staged_update

MANIFEST = "manifest.json"
ENTRIES = "entries.jsonl"
FORMAT = "reportgen-run/3"
OLD_FORMATS = {
    "reportgen-run/1": "reportgen 0.1",
    "reportgen-run/2": "a reportgen without mean/resample ablation, effects and knockouts",
}
PARTIAL_STATE = "partial.json"
PARTIAL_FORMAT = "reportgen-partial/1"
_PARTIAL_LOCK = "lock"
SYNC_SECONDS = 2.0
"""A partial run's records and entries are synced to disk at most this often (a crash of the
machine loses at most the last seconds; a killed process loses nothing written)."""


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
class InputsInfo:
    """Which inputs a run computed: how many, and a SHA-256 over them (`inputs_digest`)."""

    count: int
    sha256: str


@dataclass(frozen=True)
class ShardInfo:
    """A shard of a larger run: shard `index` of `count` (1-based), computing the inputs
    [first, last) (0-based positions in the whole run's inputs)."""

    index: int
    count: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"


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
    unknown: tuple[UnknownToken, ...] = ()
    """The tokens read as the unknown token, with the words they replaced (see Result)."""

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


def inputs_digest(examples: Iterable[Example]) -> InputsInfo:
    """The count of `examples` and a SHA-256 over each one as its entry records it (id, where
    it came from, segments, target, meta): what a resumed run and the shards of one run must
    share. Streams (one example at a time)."""
    digest, count = hashlib.sha256(), 0
    for ex in examples:
        digest.update(_dumps_line(_example_json(ex)).encode("utf-8"))
        count += 1
    return InputsInfo(count, digest.hexdigest())


def _example_json(ex: Example) -> dict[str, Any]:
    out = {
        "id": ex.id,
        "source": ex.source,
        "segments": [{"name": s.name, "text": s.text} for s in ex.segments],
        "target": ex.target,
        "meta": dict(ex.meta),
    }
    if ex.contrast is not None:  # only when given: digests of inputs without one stay as they were
        out["contrast"] = ex.contrast
    if ex.counterfactual:  # likewise
        out["counterfactual"] = _segments_json(ex.counterfactual)
    return out


def _segments_json(segments: Sequence[Segment]) -> list[dict[str, str]]:
    return [{"name": s.name, "text": s.text} for s in segments]


def partial_folder(out: str | Path) -> Path:
    """Where the partial run of the run folder `out` is kept: `.NAME.partial` beside it."""
    target = Path(out).resolve()
    return target.parent / f".{target.name}.partial"


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
    temporary place until then) is swapped in. Given a claimed `partial` run, the writer
    appends to it from entry `partial.kept` on (see the module) and seals it on success; on a
    failure the partial run is kept for `--resume` if it holds any result, else removed.
    `inputs` and `shard` go into the manifest."""

    def __init__(
        self,
        out: Path,
        info: RunInfo,
        force: bool = False,
        *,
        inputs: InputsInfo | None = None,
        shard: ShardInfo | None = None,
        partial: PartialRun | None = None,
    ) -> None:
        self.out, self.info, self.force = Path(out), info, force
        self.inputs, self.shard, self.partial = inputs, shard, partial
        self._count = 0 if partial is None else partial.kept

    @property
    def count(self) -> int:
        """Entries written so far (with a resumed partial run, those it kept too)."""
        return self._count

    def __enter__(self) -> RunWriter:
        if self.partial is not None:
            try:
                check_folder(self.out, "run", self.force, RUN_WRITES)  # refusals come first
                self._tmp = self.partial.path
                self._entries = self.partial.open_entries()
            except BaseException:
                self.partial.release(remove=self.partial.kept == 0)
                raise
            return self
        self._ctx = staged_update(self.out, "run", self.force)
        self._tmp = self._ctx.__enter__()
        try:
            (self._tmp / "records").mkdir()
            self._entries = open(self._tmp / ENTRIES, "w", encoding="utf-8", newline="\n")
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
        if stats.blocks is not None and stats.edges is not None:
            arrays["block_edges"] = np.ascontiguousarray(stats.edges, dtype=np.int64)
            # float32: the page draws them in float16; the exact totals are stored apart.
            arrays["blocks"] = np.ascontiguousarray(stats.blocks, dtype=np.float32)
        if result.dense is not None:
            arrays["dense"] = np.ascontiguousarray(result.dense)
        if result.relevance is not None:
            arrays["relevance"] = np.ascontiguousarray(result.relevance, dtype=np.float64)
        if result.pairs is not None:
            arrays["pair_sums"] = np.ascontiguousarray(result.pairs.sums, dtype=np.float64)
            arrays["pair_counts"] = np.ascontiguousarray(result.pairs.pairs, dtype=np.float64)
        if result.patching is not None:
            patching = result.patching
            arrays["patch_estimate"] = np.ascontiguousarray(patching.estimate, dtype=np.float64)
            arrays["patch_heads"] = np.ascontiguousarray(patching.heads, dtype=np.int32)
            arrays["patch_real"] = np.ascontiguousarray(patching.real, dtype=np.float64)
        if self.partial is None:
            _write_record(self._tmp / record, arrays)
            self._entries.write(line)
        else:
            self.partial.append(record, arrays, line)
        self._count += 1

    def _manifest(self) -> str:
        head: dict[str, Any] = {"format": FORMAT, "run": asdict(self.info)}
        if self.inputs is not None:
            head["inputs"] = asdict(self.inputs)
        if self.shard is not None:
            head["shard"] = asdict(self.shard)
        head["count"] = self._count
        return _dumps(head)

    def __exit__(self, *exc: object) -> None:
        if self.partial is not None:
            self._exit_partial(exc[0] is None)
            return
        try:
            self._entries.close()
            if exc[0] is None:
                (self._tmp / MANIFEST).write_text(self._manifest(), "utf-8")
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]

    def _exit_partial(self, ok: bool) -> None:
        partial = self.partial
        assert partial is not None
        sealed = False
        try:
            partial.close_entries()
            if ok:
                with staged_update(self.out, "run", self.force) as stage:
                    (stage / "records").mkdir()
                    for n in range(1, self._count + 1):
                        name = f"records/{n:06d}.safetensors"
                        _link_or_copy(partial.path / name, stage / name)
                    _link_or_copy(partial.path / ENTRIES, stage / ENTRIES)
                    (stage / MANIFEST).write_text(self._manifest(), "utf-8")
                sealed = True
        finally:
            partial.release(remove=sealed or self._count == 0)


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link (no bytes copied), or a copy where links cannot be made (another device, a
    file system without them)."""
    try:
        os.link(source, dest)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(source, dest)


try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no lock; one writer at a time is on the user)
    fcntl = None  # type: ignore[assignment]


class PartialRun:
    """The partial run of a run folder being computed (`.NAME.partial/` beside it, see the
    module), claimed by one process at a time (a lock held while it writes)."""

    def __init__(self, path: Path, lock: IO[str]) -> None:
        self.path = path
        self._lock: IO[str] | None = lock
        self.state: dict[str, Any] | None = read_partial_state(path)
        """What `partial.json` says (None for a new partial run): `run` (the RunInfo as it
        started), `inputs`, `shard`, `settings`."""
        self.kept = 0
        """Entries kept from before (set by `keep`)."""
        self._entries: IO[str] | None = None
        self._unsynced: list[Path] = []
        self._synced_at = time.monotonic()

    @classmethod
    def claim(cls, out: str | Path) -> PartialRun:
        """Open (or create) and lock the partial run of `out`; OutputError if another process
        is writing it."""
        path = partial_folder(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(exist_ok=True)
        fh = open(path / _PARTIAL_LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (kept open)
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise OutputError(
                    f"{out} is being computed right now by {holder} (its partial run {path} "
                    "is locked); wait for that compute to end, or stop it"
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"reportgen (pid {os.getpid()} on {socket.gethostname()})")
        fh.flush()
        return cls(path, fh)

    def start(self, state: Mapping[str, Any]) -> None:
        """Begin a new partial run: no entries, no records, `state` as its description."""
        for name in (ENTRIES, "records"):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
        (self.path / "records").mkdir()
        tmp = self.path / f".{PARTIAL_STATE}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(_dumps({"format": PARTIAL_FORMAT, **state}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / PARTIAL_STATE)
        _fsync_folder(self.path)
        self.state = read_partial_state(self.path)
        self.kept = 0

    def prefix(self, ids: Iterable[str]) -> int:
        """How many entries from the start are whole, in order and for the examples `ids`
        names, with their records whole: what a crash left that can be kept."""
        return len(self._valid(ids))

    def _valid(self, ids: Iterable[str]) -> list[int]:
        """The end offset of each valid entry line, in order (see `prefix`)."""
        ends: list[int] = []
        expected = iter(ids)
        try:
            fh = open(self.path / ENTRIES, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return ends
        with fh:
            offset = 0
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # cut short by the crash
                n = len(ends) + 1
                try:
                    raw = json.loads(line.decode("utf-8"))
                    good = (
                        isinstance(raw, dict)
                        and raw.get("id") == next(expected, None)
                        and raw.get("record") == f"records/{n:06d}.safetensors"
                        and _record_whole(self.path / raw["record"])
                    )
                except ValueError:
                    good = False
                if not good:
                    break
                offset += len(line)
                ends.append(offset)
        return ends

    def keep(self, count: int, ids: Iterable[str]) -> None:
        """Keep the first `count` entries (at most `prefix(ids)`) and their records; drop the
        rest."""
        ends = self._valid(ids)
        if count > len(ends):
            raise ValueError(f"only {len(ends)} entries can be kept, not {count}")
        entries = self.path / ENTRIES
        if entries.exists():
            os.truncate(entries, ends[count - 1] if count else 0)
        records = self.path / "records"
        records.mkdir(exist_ok=True)
        for item in records.iterdir():
            stem = item.name.removesuffix(".safetensors")
            if not (item.name.endswith(".safetensors") and stem.isdigit() and int(stem) <= count):
                item.unlink()
        self.kept = count

    def open_entries(self) -> IO[str]:
        self._entries = open(self.path / ENTRIES, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        return self._entries

    def append(self, record: str, arrays: Mapping[str, np.ndarray], line: str) -> None:
        """A result: its record (whole under its name, or not there), then its entry line."""
        assert self._entries is not None
        final = self.path / record
        tmp = final.with_name(f".{final.name}.tmp")
        _write_record(tmp, arrays)
        os.replace(tmp, final)
        self._entries.write(line)
        self._entries.flush()
        self._unsynced.append(final)
        if time.monotonic() - self._synced_at > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """The records, then the entries that name them, onto the disk."""
        for path in self._unsynced:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if self._unsynced:
            _fsync_folder(self.path / "records")
        self._unsynced = []
        if self._entries is not None and not self._entries.closed:
            self._entries.flush()
            os.fsync(self._entries.fileno())
        self._synced_at = time.monotonic()

    def close_entries(self) -> None:
        if self._entries is not None and not self._entries.closed:
            self.sync()
            self._entries.close()

    def release(self, remove: bool) -> None:
        """Let the partial run go: removed (sealed, or nothing in it), or kept for --resume."""
        with contextlib.suppress(OSError):
            self.close_entries()
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def read_partial_state(path: Path) -> dict[str, Any] | None:
    """The state of the partial run in folder `path`, or None if it has none (or not ours)."""
    try:
        state = json.loads((path / PARTIAL_STATE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(state, dict) and state.get("format") == PARTIAL_FORMAT):
        return None
    return state


def partial_state(out: str | Path) -> dict[str, Any] | None:
    """The state of `out`'s partial run, if an interrupted compute left one (not claimed)."""
    return read_partial_state(partial_folder(out))


def partial_count(out: str | Path) -> int:
    """How many entry lines `out`'s partial run holds (0 if there is none)."""
    path = partial_folder(out) / ENTRIES
    if read_partial_state(path.parent) is None:
        return 0
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


def _record_whole(path: Path) -> bool:
    """Whether a safetensors file is whole: its size is what its header says (a record cut
    short by a crash is not)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= size - 8:
                return False
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _fsync_folder(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_INFO_LABELS = {
    "weights_sha256": "the model's weights (SHA-256)",
    "architecture": "the model's architecture",
    "task": "the model's task",
    "num_layers": "the model's layers",
    "num_heads": "the model's heads",
    "attn_implementation": "the attention path",
    "dtype": "--dtype",
    "device": "the device",
    "method": "--method",
    "metric": "--metric",
    "title": "--title",
}
_PARAMETER_LABELS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "max_tokens": "--max-tokens",
    "truncate": "--truncate",
    "ablate_k": "--ablate-k",
    "ablate_draws": "--ablate-draws",
    "ablation": "--ablation",
    "effect": "--effect",
    "seed": "--seed",
    "engine": "--engine",
    "store": "--store",
    "top_k": "--top-k",
    "pairing": "--pairing",
    "reductions": "the reduction dtype (from --dtype)",
    "torch_threads": "torch's thread count (set OMP_NUM_THREADS to the same value)",
    "resample": "resample ablation's replacement (the donor's mean over its tokens before "
    "reportgen took its output at each position)",
}


def info_differences(
    a: RunInfo, b: RunInfo, device_type_only: bool = False
) -> list[tuple[str, str, str]]:
    """What differs between two runs' descriptions in anything that changes their results:
    (what, value in a, value in b). Not compared: the model's name and path as shown (the
    weights are), the command and the start time; `device_type_only` compares `cuda:0` and
    `cuda:1` as equal (shards on different GPUs)."""
    out: list[tuple[str, str, str]] = []

    def shown(name: str, value: object) -> str:
        if name == "weights_sha256" and isinstance(value, str):
            return value[:12] + "…"
        return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value

    for name, label in _INFO_LABELS.items():
        x, y = getattr(a, name), getattr(b, name)
        if name == "device" and device_type_only:
            x, y = str(x).split(":")[0], str(y).split(":")[0]
        if x != y:
            out.append((label, shown(name, x), shown(name, y)))
    for key in dict.fromkeys([*a.parameters, *b.parameters]):
        x, y = a.parameters.get(key), b.parameters.get(key)
        if x != y:
            out.append((_PARAMETER_LABELS.get(key, key), shown(key, x), shown(key, y)))
    for key in dict.fromkeys([*a.versions, *b.versions]):
        x, y = a.versions.get(key), b.versions.get(key)
        if x != y:
            out.append((f"the {key} version", str(x), str(y)))
    return out


def merge_shards(shards: Sequence[Run], out: str | Path, command: str, force: bool = False) -> Run:
    """Join the shards of one run (`--shard I/N`) into the run folder `out`, in input order:
    one run folder like any other, equal to the run computed in one go but for its command,
    start time (the earliest shard's) and device (every shard's, where they differ). The
    shards must agree on the model, the settings and the inputs, and cover every input exactly
    once; records are hard-linked (copied only across file systems)."""
    if not shards:
        raise RunError("merge: no run folders given; name the shards to merge")
    for run in shards:
        if run.shard is None or run.inputs is None:
            raise RunError(
                f"{run.path} is not a shard (it was not computed with --shard I/N); merge joins "
                "the shards of one run"
            )
    first = shards[0]
    assert first.shard is not None and first.inputs is not None
    target = Path(out).resolve()
    for run in shards:
        assert run.shard is not None and run.inputs is not None
        where = Path(run.path).resolve()
        if target == where or target in where.parents or where in target.parents:
            raise RunError(f"--out {out} is (or holds, or lies in) the shard {run.path}")
        if run.shard.count != first.shard.count:
            raise RunError(
                f"{run.path} is shard {run.shard.name} and {first.path} is shard "
                f"{first.shard.name}: shards of different splits of the inputs; merge the "
                f"{first.shard.count} shards of one split"
            )
        if run.inputs != first.inputs:
            raise RunError(
                f"{run.path} and {first.path} computed different inputs ({run.inputs.count} "
                f"inputs, SHA-256 {run.inputs.sha256[:12]}…, against {first.inputs.count}, "
                f"{first.inputs.sha256[:12]}…); merge the shards of one input file"
            )
        found = info_differences(first.info, run.info, device_type_only=True)
        if found:
            shown = "; ".join(
                f"{what}: {x} in {first.path}, {y} in {run.path}" for what, x, y in found
            )
            raise RunError(f"the shards were computed differently: {shown}")
    by_index: dict[int, Run] = {}
    for run in shards:
        assert run.shard is not None
        if run.shard.index in by_index:
            raise RunError(
                f"shard {run.shard.name} is given twice ({by_index[run.shard.index].path} and "
                f"{run.path}); give each shard once"
            )
        by_index[run.shard.index] = run
    count = first.shard.count
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise RunError(
            f"shard(s) {', '.join(missing)} missing (given: "
            f"{', '.join(f'{i}/{count}' for i in sorted(by_index))}); compute them with "
            "--shard, then merge all of them"
        )
    ordered = [by_index[i] for i in range(1, count + 1)]
    at = 0
    for run in ordered:
        assert run.shard is not None
        if run.shard.first != at or len(run) != run.shard.last - run.shard.first:
            raise RunError(
                f"{run.path}: shard {run.shard.name} covers inputs {run.shard.first + 1} to "
                f"{run.shard.last} with {len(run)} entries, where inputs {at + 1} on were "
                "expected; the shards overlap or leave inputs out (were they computed with "
                "the same --batch-size and --store?)"
            )
        at = run.shard.last
    if at != first.inputs.count:
        raise RunError(
            f"the shards cover {at} of the {first.inputs.count} inputs; the run folders are damaged"
        )
    devices = sorted({r.info.device for r in ordered})
    info = RunInfo(
        **{
            **asdict(first.info),
            "command": command,
            "created": min(r.info.created for r in ordered),
            "device": ", ".join(devices),
        }
    )
    n = 0
    with staged_update(out, "run", force) as stage:
        (stage / "records").mkdir()
        with open(stage / ENTRIES, "w", encoding="utf-8", newline="\n") as fh:
            for run in ordered:
                with open(run.path / ENTRIES, "rb") as lines:
                    for line in lines:
                        if not line.strip():
                            continue
                        raw = json.loads(line.decode("utf-8"))
                        source = run._record(_entry(line, n, run.path / ENTRIES))
                        n += 1
                        raw["record"] = f"records/{n:06d}.safetensors"
                        _link_or_copy(source, stage / raw["record"])
                        fh.write(_dumps_line(raw))
        head = {
            "format": FORMAT,
            "run": asdict(info),
            "inputs": asdict(first.inputs),
            "count": n,
        }
        (stage / MANIFEST).write_text(_dumps(head), "utf-8")
    return Run.open(out)


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
    inputs: InputsInfo | None = None
    """The inputs it computed (None in a run folder written without them)."""
    shard: ShardInfo | None = None
    """Which shard of a larger run it is (None: a whole run)."""

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        manifest = path / MANIFEST
        try:
            head = json.loads(manifest.read_text("utf-8"))
        except FileNotFoundError:
            waiting = partial_count(path) if partial_state(path) is not None else 0
            if waiting:
                raise RunError(
                    f"{path} is not complete: an interrupted compute left {waiting} of its "
                    f"inputs in {partial_folder(path)}; finish it with `reportgen compute ... "
                    "--resume` (the same command with --resume)"
                ) from None
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
            inputs = None if head.get("inputs") is None else InputsInfo(**head["inputs"])
            shard = None if head.get("shard") is None else ShardInfo(**head["shard"])
        except (KeyError, TypeError) as err:
            raise RunError(f"{manifest}: the run description is incomplete ({err})") from None
        ids, offsets = _scan(path / ENTRIES)
        if len(ids) != count:
            raise RunError(
                f"{path / ENTRIES}: {len(ids)} entries, but the manifest counts {count}; the run "
                "folder was changed after it was written: compute it again"
            )
        return cls(path, info, Entries(path / ENTRIES, ids, offsets), inputs, shard)

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
                if key in _OPTIONAL:
                    continue
                raise RunError(f"{path}: no '{key}' array; the run folder is damaged")
            _check_shape(path, key, arrays[key], shape)
        edges, blocks = _blocks(path, arrays, self.info, len(entry.tokens))
        stats = HeadStats(
            segments=tuple(s.name for s in entry.spans),
            total=arrays["total"],
            prediction=arrays["prediction"],
            flow=arrays["flow"],
            top_cells=arrays["top_cells"],
            top_values=arrays["top_values"],
            edges=edges,
            blocks=blocks,
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
            unknown=entry.unknown,
            dense=arrays.get("dense"),
            relevance=arrays.get("relevance"),
            pairs=None
            if "pair_sums" not in arrays or "pair_counts" not in arrays
            else PairFlow(stats.segments, arrays["pair_sums"], arrays["pair_counts"]),
            patching=None
            if "patch_estimate" not in arrays
            else Patching(
                arrays["patch_estimate"],
                arrays["patch_heads"],
                arrays["patch_real"],
                str(self.info.parameters.get("patching") or "zero"),
            ),
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
        "relevance": (layers, tokens),
        "pair_sums": (layers, groups + 1, groups + 1),
        "pair_counts": (layers, groups + 1, groups + 1),
        "patch_estimate": (layers, heads),
        "patch_heads": (min(PATCH_CHECKED, layers * heads), 2),
        "patch_real": (min(PATCH_CHECKED, layers * heads),),
    }


_OPTIONAL = frozenset(
    {
        "dense",
        "relevance",
        "pair_sums",
        "pair_counts",
        "patch_estimate",
        "patch_heads",
        "patch_real",
    }
)
"""Record arrays only some runs have (--store dense, rollout methods, --aggregate wang,
--patching)."""


def _blocks(
    path: Path, arrays: Mapping[str, np.ndarray], info: RunInfo, tokens: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A long input's block edges and block sums (both or neither), checked: edges rising from
    0 to T, sums [L, H, n, n]. (None, None) for a short input, or a run from before them."""
    if "block_edges" not in arrays and "blocks" not in arrays:
        return None, None
    if "block_edges" not in arrays or "blocks" not in arrays:
        raise RunError(
            f"{path}: 'blocks' and 'block_edges' come together; the run folder is damaged"
        )
    edges, blocks = arrays["block_edges"], arrays["blocks"]
    ok = (
        edges.ndim == 1
        and edges.size >= 2
        and int(edges[0]) == 0
        and int(edges[-1]) == tokens
        and bool((np.diff(edges) > 0).all())
    )
    if not ok:
        raise RunError(
            f"{path}: 'block_edges' must rise from 0 to the input's {tokens} tokens; the run "
            "folder is damaged"
        )
    n = edges.size - 1
    _check_shape(path, "blocks", blocks, (info.num_layers, info.num_heads, n, n))
    return edges, blocks.astype(np.float64, copy=False)  # float32 now, float64 in older runs


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
        "contrast": ex.contrast,
        **({"counterfactual": _segments_json(ex.counterfactual)} if ex.counterfactual else {}),
        "predicted": result.predicted,
        "value": result.value,
        "loss": result.loss,
        "prediction_position": result.prediction_position,
        "ablation": None if result.ablation is None else _ablation_json(result.ablation),
        # Only written where the tokenizer did not know a token.
        **({"unknown": [asdict(u) for u in result.unknown]} if result.unknown else {}),
    }


def _ablation_json(a: Ablation) -> dict[str, Any]:
    return {
        "intervention": a.intervention,
        "effect": a.effect,
        "heads": [list(h) for h in a.heads],
        "value": a.value,
        "value_top": a.value_top,
        "random_heads": [[list(h) for h in drawn] for drawn in a.random_heads],
        "random_values": list(a.random_values),
        "curve": list(a.curve),
        "layers": list(a.layers),
        "donor": a.donor,
        "knockout": None
        if a.knockout is None
        else {
            "src": a.knockout.src,
            "dst": a.knockout.dst,
            "value": a.knockout.value,
            "layers": list(a.knockout.layers),
        },
    }


def _pairs(items: Any) -> tuple[tuple[int, int], ...]:
    return tuple([(int(x), int(y)) for x, y in items])


def _ablation_from(a: Mapping[str, Any]) -> Ablation:
    knock = a["knockout"]
    return Ablation(
        intervention=str(a["intervention"]),
        effect=str(a["effect"]),
        heads=_pairs(a["heads"]),
        value=float(a["value"]),
        value_top=float(a["value_top"]),
        random_heads=tuple([_pairs(drawn) for drawn in a["random_heads"]]),
        random_values=tuple([float(v) for v in a["random_values"]]),
        curve=tuple([float(v) for v in a["curve"]]),
        # Optional: runs written before the layer-level ablation and knockout have none.
        layers=tuple([float(v) for v in a.get("layers", ())]),
        donor=a["donor"],
        knockout=None
        if knock is None
        else Knockout(
            str(knock["src"]),
            str(knock["dst"]),
            float(knock["value"]),
            tuple([float(v) for v in knock.get("layers", ())]),
        ),
    )


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
    example = Example(
        e["id"],
        tuple(Segment(s["name"], s["text"]) for s in e["segments"]),
        e["target"] if e["target_given"] else None,
        e["meta"],
        e["source"],
        e["contrast"],
        # Only written where an input has one.
        tuple(Segment(s["name"], s["text"]) for s in e.get("counterfactual", ())),
    )
    tokens = tuple(e["tokens"])
    return Entry(
        record=e["record"],
        example=example,
        tokens=tokens,
        # Only written where a token is unknown (and not at all before they were recorded).
        unknown=tuple(_unknown_from(u, example.text, len(tokens)) for u in e.get("unknown", ())),
        spans=tuple(TokenSpan(s["name"], s["start"], s["end"]) for s in e["spans"]),
        target=e["target"],
        target_given=e["target_given"],
        predicted=e["predicted"],
        value=e["value"],
        loss=e["loss"],
        prediction_position=e["prediction_position"],
        ablation=None if ablation is None else _ablation_from(ablation),
    )


def _unknown_from(u: Mapping[str, Any], text: str, tokens: int) -> UnknownToken:
    """An unknown token of an entry, checked against the entry: a position among its tokens,
    and the text its characters hold in the input (a page shows that text as the word)."""
    position, start, end = (u[key] for key in ("position", "start", "end"))
    if not all(type(v) is int for v in (position, start, end)):
        raise TypeError(f"unknown token {u!r}: position, start and end must be integers")
    if not (0 <= position < tokens and 0 <= start <= end <= len(text)):
        raise ValueError(f"unknown token {u!r} lies outside the input's tokens or text")
    if text[start:end] != u["text"]:
        raise ValueError(f"unknown token {u!r}: the input's text there is {text[start:end]!r}")
    return UnknownToken(position, text[start:end], start, end)


def _dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def _dumps_line(data: object) -> str:
    """One JSON line: json escapes newlines inside strings, so the line holds no LF."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def _stamp(file: Path | IO[bytes]) -> tuple[int, ...]:
    """What identifies a version of a file: device, inode, size, modification time."""
    st = os.stat(file) if isinstance(file, Path) else os.fstat(file.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _write_record(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A record as safetensors bytes, written like every other file of the run (mode from the
    umask: safetensors' own `save_file` writes 0600, which a shared run folder cannot read)."""
    path.write_bytes(save(dict(arrays)))
