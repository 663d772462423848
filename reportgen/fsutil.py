"""Output folders reportgen writes, without ever destroying a file it did not write.

**Ownership.** A folder reportgen writes (a site, a run) holds a record of the files it wrote
there, `RECORD` (`.reportgen-manifest.json`): each file's path, size and SHA-256, and what kind
of folder it is. That record, not a marker in a page, decides what may be replaced:

- a recorded file whose content is unchanged is reportgen's: the next update replaces it, or
  removes it when the new output no longer has it;
- everything else is someone else's (`.git`, `CNAME`, notes, a file reportgen wrote that was
  edited since): it is never removed. An update refuses, naming them, when recorded files were
  changed or when a new file would overwrite a file of someone else's; with `force` it
  overwrites just those, and still removes nothing that is not reportgen's unchanged file.
- a non-empty folder without a record of this kind is refused unless `force`; with it, the
  output is written into the folder and everything already there is kept (but overwritten
  where a new file has the same path).

So a gh-pages checkout keeps working as a site folder: `.git` and `CNAME` stay where they are.

**Updates.** `staged_update` yields an empty staging folder beside the output (inside it, when
the parent is on another device or not writable), which the writer fills; a failure or Ctrl-C
while writing leaves the output untouched and the staging folder removed. Then the commit moves
the new files in one by one with `os.replace`, each file's old version kept aside (hard-linked)
in the staging folder, removes reportgen's files that are no longer produced (also kept aside),
and writes the new record last. Every file is at all times either its old or its new version,
never partly written. Catchable signals (SIGINT, SIGTERM, SIGHUP) wait while files move (two
renames per file: seconds for 10,000 pages); an error while they move (a full disk) puts every
old file back. If the process dies anyway (SIGKILL, power loss), the staging folder
holds a journal, and the next update of the same output (or `check_folder`) finishes the
update if its record was written, and puts the old files back otherwise. So an output is
the old or the new version as a whole except while reportgen is moving files in, and readers
that open files meanwhile (a web server) see each file whole. A new output folder is renamed
into place in one step.

Staging folders are recognised by their name (`.NAME.tmp-*`) and a mark file inside, locked
(`flock`) while their build runs; a later update of the same output removes those whose lock
is free, after recovering them as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from reportgen.errors import OutputError

__all__ = [
    "RECORD",
    "RUN_WRITES",
    "SITE_WRITES",
    "OutputError",
    "check_folder",
    "check_outputs",
    "check_single_file",
    "is_sealed",
    "owned",
    "recorded_files",
    "seal",
    "staged_update",
]

RECORD = ".reportgen-manifest.json"
"""The record of the files reportgen wrote into an output folder, inside that folder."""
RECORD_FORMAT = "reportgen-files/1"
SITE_WRITES = ("index.html", "about.html", ".nojekyll", "assets/", "examples/")
"""What the site writer writes in a site folder (a trailing / marks a folder), besides RECORD
and the single file when it lies inside the site."""
RUN_WRITES = ("manifest.json", "entries.jsonl", "records/")
"""What the run writer writes in a run folder, besides RECORD."""
RESERVED = ".reportgen-"
"""Prefix of reportgen's own bookkeeping files at the top of an output or staging folder."""

_MARK = ".reportgen-staging.json"
_MARK_FORMAT = "reportgen-staging/1"
_JOURNAL = ".reportgen-journal.json"
_ASIDE_LOG = ".reportgen-aside.log"
_ASIDE = ".reportgen-old"
_INNER_PREFIX = ".reportgen-tmp-"
_STALE_WITHOUT_LOCKS = 24 * 3600
"""Age (s) after which a staging folder counts as abandoned where `flock` is not available
and its process cannot be checked (another host)."""
_SHOWN = 5
"""Paths named in an error message, at most."""

_CHUNK = 1 << 20


# --- the record of a folder's files -----------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    size: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_rel(rel: object) -> bool:
    """Whether a path read from a record is a plain relative path inside the folder (a forged
    record must not name `../x`, `/etc/x` or reportgen's own bookkeeping)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    path = PurePosixPath(rel)
    return (
        not path.is_absolute()
        and path.as_posix() == rel
        and ".." not in path.parts
        and not rel.startswith(RESERVED)
    )


def recorded_files(folder: str | Path, kind: str) -> dict[str, FileRecord] | None:
    """The files reportgen recorded writing into `folder` as a `kind` ("site" or "run"); None
    if there is no record, or it is unreadable, malformed or of another kind."""
    try:
        head = json.loads((Path(folder) / RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(head, dict) and head.get("format") == RECORD_FORMAT):
        return None
    files = head.get("files")
    if head.get("kind") != kind or not isinstance(files, dict):
        return None
    out: dict[str, FileRecord] = {}
    for rel, entry in files.items():
        if not (_safe_rel(rel) and isinstance(entry, dict)):
            return None
        size, sha = entry.get("size"), entry.get("sha256")
        if not (isinstance(size, int) and isinstance(sha, str) and len(sha) == 64):
            return None
        out[rel] = FileRecord(size, sha)
    return out


def _record_text(kind: str, files: Mapping[str, FileRecord]) -> str:
    """The record's JSON: sorted, no times, so the same output gives the same bytes."""
    body = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "files": {rel: {"size": r.size, "sha256": r.sha256} for rel, r in sorted(files.items())},
    }
    return json.dumps(body, ensure_ascii=False, indent=1) + "\n"


def _lstat_inside(
    folder: Path, rel: str, folders: dict[str, bool] | None = None
) -> os.stat_result | None:
    """`lstat` of folder/rel, or None if it is missing or any folder on the way to it is not a
    real folder (a symlinked `examples/` must not lead a removal outside the output).
    `folders` caches the verdicts on the folders on the way, for many paths in one folder."""
    base = os.fspath(folder)
    parts = rel.split("/")
    for k in range(1, len(parts)):
        sub = "/".join(parts[:k])
        known = None if folders is None else folders.get(sub)
        if known is None:
            try:
                known = stat.S_ISDIR(os.lstat(os.path.join(base, sub)).st_mode)
            except OSError:
                known = False
            if folders is not None:
                folders[sub] = known
        if not known:
            return None
    try:
        return os.lstat(os.path.join(base, rel))
    except OSError:
        return None


def _is_folder(folder: Path, rel: str) -> bool:
    """Whether folder/rel is a real folder reached through real folders."""
    st = _lstat_inside(folder, rel)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _unchanged(
    folder: Path, rel: str, record: FileRecord, folders: dict[str, bool] | None = None
) -> bool | None:
    """True if folder/rel is a regular file with the recorded content, False if it is
    something else, None if it is missing."""
    st = _lstat_inside(folder, rel, folders)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != record.size:
        return False
    return _sha256(folder / rel) == record.sha256


def owned(folder: str | Path, kind: str) -> bool:
    """Whether `folder` holds a record of kind `kind` and no recorded file was changed since
    (a missing one is no loss; files beside them that reportgen did not write do not matter)."""
    files = recorded_files(folder, kind)
    return files is not None and all(
        _unchanged(Path(folder), rel, r) is not False for rel, r in files.items()
    )


# --- files that carry their own hash ----------------------------------------------------------

SEAL = "reportgen-sha256:"
"""Written as `reportgen-sha256:` + 64 zeros into a file's first 4 KiB; `seal` replaces the
zeros with the SHA-256 of the file as written (zeros included), `is_sealed` checks it."""
SEAL_PLACEHOLDER = SEAL + "0" * 64
_SEAL_HEAD = 4096


def seal(path: Path) -> bool:
    """Write the file's own SHA-256 over the placeholder in its first 4 KiB; False (and the
    file unchanged) if it has no placeholder there."""
    with open(path, "r+b") as fh:
        head = fh.read(_SEAL_HEAD)
        at = head.find(SEAL_PLACEHOLDER.encode("ascii"))
        if at < 0:
            return False
        fh.seek(0)
        digest = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        fh.seek(at + len(SEAL))
        fh.write(digest.hexdigest().encode("ascii"))
    return True


def is_sealed(path: str | Path, marker: bytes = b"") -> bool:
    """Whether `path` is a regular file whose first 4 KiB hold `marker` and a seal matching the
    file's content: a file reportgen wrote and nobody changed since."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        data = path.read_bytes()
    except OSError:
        return False
    head = data[:_SEAL_HEAD]
    at = head.find(SEAL.encode("ascii"))
    if at < 0 or (marker and marker not in head):
        return False
    start = at + len(SEAL)
    found = data[start : start + 64]
    zeroed = data[:start] + b"0" * 64 + data[start + 64 :]
    return found == hashlib.sha256(zeroed).hexdigest().encode("ascii")


# --- what an update would do, and whether it may -------------------------------------------------


@dataclass(frozen=True)
class _Survey:
    old: dict[str, FileRecord]
    """Recorded files that are unchanged: reportgen's, to replace or remove."""
    in_the_way: list[str]
    """Entries at (or on the way to) a new file's path that are not reportgen's: overwritten
    (put aside, then deleted) only with force."""
    recognised: frozenset[str] = frozenset()
    """Files at new paths that are not recorded but `recognise` accepts (a sealed single file):
    replaced like reportgen's own."""


def _shown(paths: Iterable[str]) -> str:
    paths = sorted(paths)
    more = len(paths) - _SHOWN
    return ", ".join(paths[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _kind_name(kind: str) -> str:
    return {"site": "site", "run": "run folder"}.get(kind, kind)


def _survey(
    folder: Path,
    kind: str,
    writes: Iterable[str],
    force: bool,
    recognise: Callable[[Path], bool] | None = None,
) -> _Survey:
    """Check an existing folder before reportgen writes `writes` into it; raise OutputError
    naming what stands in the way, unless force."""
    recorded = recorded_files(folder, kind)
    entries = [p.name for p in folder.iterdir()]
    if recorded is None:
        foreign = [name for name in entries if not name.startswith(_INNER_PREFIX)]
        if foreign and not force:
            raise OutputError(
                f"{folder} exists and was not written by reportgen (it has no {RECORD} of a "
                f"{_kind_name(kind)}, and holds {_shown(foreign)}); choose another path, or "
                "pass --force to write into it (files already there are kept unless the new "
                f"{_kind_name(kind)} has a file of the same name)"
            )
        recorded = {}
    old: dict[str, FileRecord] = {}
    changed: list[str] = []
    folders: dict[str, bool] = {}
    for rel, record in recorded.items():
        state = _unchanged(folder, rel, record, folders)
        if state:
            old[rel] = record
        elif state is False:
            changed.append(rel)
    if changed and not force:
        raise OutputError(
            f"{folder}: {len(changed)} file(s) that reportgen wrote were changed since: "
            f"{_shown(changed)}; move your changes elsewhere, or pass --force to replace them"
        )
    in_the_way: set[str] = set()
    recognised: set[str] = set()
    for rel in writes:
        parts = PurePosixPath(rel.rstrip("/")).parts
        for k in range(1, len(parts) + 1):
            sub = "/".join(parts[:k])
            st = _lstat_inside(folder, sub, folders)
            if st is None:
                break
            last = k == len(parts) and not rel.endswith("/")
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    in_the_way.add(sub)  # a file (or a link) where a folder must be
                    break
                continue
            if sub in old:
                continue
            if stat.S_ISREG(st.st_mode) and recognise is not None and recognise(folder / sub):
                recognised.add(sub)
                continue
            in_the_way.add(sub)  # someone else's file, or one of ours changed (force only)
    if in_the_way and not force:
        raise OutputError(
            f"{folder}: the new {_kind_name(kind)} would overwrite {_shown(in_the_way)}, which "
            "reportgen did not write; move them away, or pass --force to overwrite them"
        )
    return _Survey(old, sorted(in_the_way), frozenset(recognised))


def _refuse_special(folder: Path, option: str, given: Path) -> None:
    """Refuse a filesystem root, the home folder and the working folder's ancestors."""
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if folder == Path(folder.anchor):
        reason = "is a filesystem root"
    elif folder == home:
        reason = "is your home folder"
    elif folder in cwd.parents:
        reason = f"contains the working folder {cwd}"
    else:
        return
    shown = str(given) if Path(given).absolute() == folder else f"{given} (= {folder})"
    raise OutputError(
        f"{option} {shown} {reason}; give the output a folder of its own, e.g. ./site"
    )


def _target(out: Path, option: str = "--out") -> Path:
    """The real folder an output path names: symbolic links are followed (the link stays and
    its target is updated in place); a file, a link to nothing, a root, home or an ancestor of
    the working folder are refused."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise OutputError(
            f"{option} {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
            "create that folder or remove the link"
        )
    target = out.resolve()
    _refuse_special(target, option, out)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{option} {out} exists and is not a folder; choose another path")
    return target


def check_folder(
    out: str | Path,
    kind: str,
    force: bool = False,
    writes: Iterable[str] = (),
    option: str = "--out",
) -> Path:
    """Raise OutputError unless reportgen may write a `kind` into `out` (see the module's
    rules); `writes` are paths it will write, for an early check of clashes. First finishes or
    undoes an update of `out` left by a process that died, and removes its staging folders.
    Returns the folder's real path; `option` names it in messages."""
    target = _target(Path(out), option)
    _clean_leftovers(target)
    if target.is_dir():
        _survey(target, kind, writes, force)
    return target


# --- staging and committing -------------------------------------------------------------------


try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: staging folders are judged by age)
    fcntl = None  # type: ignore[assignment]


def _lock(fh: IO[str]) -> bool:
    """Try to take the exclusive lock of an open file; True if taken (or locks are absent)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _claim(stage: Path, target: Path) -> IO[str] | None:
    """The locked mark of `stage` if it is a staging folder of `target` whose build is over
    (its lock was free), else None. Keep it open while recovering: the lock stays held."""
    try:
        fh = open(stage / _MARK, encoding="utf-8")  # noqa: SIM115 (returned open, or closed)
    except OSError:
        return None
    try:
        head = json.load(fh)
        ours = (
            isinstance(head, dict)
            and head.get("format") == _MARK_FORMAT
            and head.get("out") == str(target)
        )
        if ours and fcntl is not None and _lock(fh):
            return fh
        age = time.time() - float(head.get("created", 0)) if ours else 0.0
        if ours and fcntl is None and age > _STALE_WITHOUT_LOCKS:  # pragma: no cover
            return fh
    except (OSError, ValueError, TypeError):
        pass
    fh.close()
    return None


def _stage_places(target: Path) -> list[tuple[Path, str]]:
    """Where staging folders of `target` live: beside it, and inside it."""
    return [(target.parent, f".{target.name}.tmp-"), (target, _INNER_PREFIX)]


def _clean_leftovers(target: Path) -> None:
    """Recover and remove the abandoned staging folders of `target` (see the module)."""
    for parent, prefix in _stage_places(target):
        try:
            candidates = [p for p in parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            continue
        for stage in candidates:
            if not stage.is_dir() or stage.is_symlink():
                continue
            claimed = _claim(stage, target)
            if claimed is None:
                continue
            try:
                _recover(stage, target)
                shutil.rmtree(stage, ignore_errors=True)
            finally:
                claimed.close()


def _stage_parent(target: Path) -> tuple[Path, str]:
    """Beside the target when the parent is writable and on the target's device (renames
    must not cross devices), else inside it."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        same_device = os.stat(parent).st_dev == os.stat(target).st_dev
        if not (same_device and os.access(parent, os.W_OK | os.X_OK)):
            return target, _INNER_PREFIX
    return parent, f".{target.name}.tmp-"


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them (Ctrl-C then
    raises KeyboardInterrupt; SIGTERM ends the process, after the block). Python handles
    signals in the main thread only, whichever thread the kernel picks, so this works from
    there; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
    )
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    held = {s: signal.getsignal(s) for s in wanted}
    held = {s: h for s, h in held.items() if h is not None}  # None: a handler set outside Python
    for s in held:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _order(rel: str) -> tuple[int, bool, str]:
    """Files in subfolders first, then the top level, `index.html` last: a page's links point
    to files already in place (mostly: pages link to each other)."""
    depth = rel.count("/")
    return (-depth, PurePosixPath(rel).name == "index.html", rel)


class _Stage:
    """A staging folder: the new files, a locked mark, and during a commit the journal and
    the old files kept aside."""

    def __init__(self, target: Path) -> None:
        parent, prefix = _stage_parent(target)
        self.target = target
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._mark: IO[str] | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".mark-", dir=self.path)
            self._mark = os.fdopen(fd, "w", encoding="utf-8")
            _lock(self._mark)
            head = {
                "format": _MARK_FORMAT,
                "out": str(target),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "created": time.time(),
            }
            self._mark.write(json.dumps(head))
            self._mark.flush()
            os.replace(tmp, self.path / _MARK)  # named (recognisable) only once locked
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._mark is not None:
            self._mark.close()
            self._mark = None

    def files(self) -> tuple[dict[str, FileRecord], list[str]]:
        """The staged files (hashed) and folders, as relative POSIX paths."""
        files: dict[str, FileRecord] = {}
        folders: list[str] = []
        for root, dirs, names in os.walk(self.path):
            here = Path(root)
            rel_root = here.relative_to(self.path).as_posix()
            if rel_root == ".":
                dirs[:] = [d for d in dirs if not d.startswith(RESERVED)]
                names = [n for n in names if not n.startswith(RESERVED)]
            for d in dirs:
                folders.append(d if rel_root == "." else f"{rel_root}/{d}")
            for name in names:
                rel = name if rel_root == "." else f"{rel_root}/{name}"
                path = here / name
                if not path.is_file() or path.is_symlink():
                    raise RuntimeError(f"{path}: only regular files can be staged")
                files[rel] = FileRecord(path.stat().st_size, _sha256(path))
        return files, folders

    def commit(
        self, kind: str, force: bool, recognise: Callable[[Path], bool] | None = None
    ) -> None:
        """Put the staged files into the target (see the module's guarantee)."""
        new, folders = self.files()
        record = _record_text(kind, new)
        target = self.target
        if not target.exists():
            (self.path / RECORD).write_text(record, "utf-8")
            (self.path / _MARK).unlink()
            self.path.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared
            os.replace(self.path, target)
            return
        survey = _survey(target, kind, new, force, recognise)
        (self.path / RECORD).write_text(record, "utf-8")
        wanted = set(folders) | {p.as_posix() for r in new for p in PurePosixPath(r).parents}
        wanted.discard(".")
        made = sorted((d for d in wanted if not _is_folder(target, d)), key=len)
        journal = {
            "format": _MARK_FORMAT,
            "record_sha256": hashlib.sha256(record.encode("utf-8")).hexdigest(),
            "new": {rel: r.sha256 for rel, r in new.items()},
            "made": made,
        }
        with open(self.path / _JOURNAL, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(journal))
            fh.flush()
            os.fsync(fh.fileno())
        remove = sorted(set(survey.old) - set(new), key=_order)
        moves = _Moves(self.path, target)
        with _signals_deferred():
            try:
                for rel in survey.in_the_way:  # only with force: overwritten, so kept aside
                    moves.aside(rel, link=False)
                for folder in made:
                    (target / folder).mkdir(parents=True, exist_ok=True)
                for rel in sorted(new, key=_order):
                    moves.place(rel, rel in survey.old or rel in survey.recognised)
                for rel in remove:
                    moves.aside(rel, link=False)
                _prune(target, remove)
                moves.place(RECORD, os.path.lexists(target / RECORD))  # the commit point
            except BaseException:
                moves.close()
                _roll_back(self.path, target, moves.placed, moves.put_aside, made)
                raise
            moves.close()


class _Moves:
    """The commit's moves, each logged (the log is how a later build undoes a dead one)."""

    def __init__(self, stage: Path, target: Path) -> None:
        self.stage, self.target = os.fspath(stage), os.fspath(target)
        self.aside_root = os.path.join(self.stage, _ASIDE)
        self.placed: list[str] = []
        self.put_aside: list[str] = []
        self._log = open(stage / _ASIDE_LOG, "a", encoding="utf-8")  # noqa: SIM115

    def aside(self, rel: str, link: bool) -> None:
        """Keep target/rel in the staging folder: hard-linked (it stays in place until the new
        file replaces it) or moved."""
        self._log.write(json.dumps(rel) + "\n")
        self._log.flush()
        kept = os.path.join(self.aside_root, rel)
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        source = os.path.join(self.target, rel)
        if link:
            try:
                os.link(source, kept, follow_symlinks=False)
            except OSError:
                shutil.copy2(source, kept, follow_symlinks=False)
        else:
            os.replace(source, kept)
        self.put_aside.append(rel)

    def place(self, rel: str, replaces: bool) -> None:
        """Move the staged file in; `replaces`: an old file of reportgen's is there (the survey
        found it), kept aside first."""
        if replaces:
            self.aside(rel, link=True)
        os.replace(os.path.join(self.stage, rel), os.path.join(self.target, rel))
        self.placed.append(rel)

    def close(self) -> None:
        self._log.close()


def _prune(target: Path, removed: Iterable[str]) -> None:
    """Remove the folders that removing reportgen's files left empty (never the target)."""
    folders = {p for rel in removed for p in PurePosixPath(rel).parents if str(p) != "."}
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            (target / folder).rmdir()


def _roll_back(
    stage: Path, target: Path, placed: Iterable[str], put_aside: Iterable[str], made: list[str]
) -> None:
    """Undo a commit: remove the new files placed, then put back what was kept aside."""
    for rel in reversed(list(placed)):
        with contextlib.suppress(OSError):
            (target / rel).unlink()
    for folder in sorted(made, key=len, reverse=True):
        with contextlib.suppress(OSError):
            (target / folder).rmdir()
    for rel in reversed(list(put_aside)):
        kept = stage / _ASIDE / rel
        if not os.path.lexists(kept):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(kept, target / rel)


def _recover(stage: Path, target: Path) -> None:
    """Finish or undo the commit a dead process left in `stage` (nothing if it never began)."""
    try:
        journal = json.loads((stage / _JOURNAL).read_text("utf-8"))
        new: dict[str, str] = journal["new"]
        made: list[str] = journal["made"]
        record_sha = journal["record_sha256"]
        if not (isinstance(new, dict) and isinstance(made, list)):
            return
    except (OSError, ValueError, KeyError, TypeError):
        return  # no journal: the commit had not begun, the target was not touched
    if not (stage / RECORD).exists():
        try:
            done = _sha256(target / RECORD) == record_sha
        except OSError:
            done = False
        if done:
            return  # the record is in place: the update is complete
    try:
        lines = (stage / _ASIDE_LOG).read_text("utf-8").splitlines()
        put_aside = [rel for rel in map(json.loads, lines) if _safe_rel(rel) or rel == RECORD]
    except (OSError, ValueError):
        put_aside = []

    def ours(rel: str, sha: str | None) -> bool:
        st = _lstat_inside(target, rel)
        return st is not None and stat.S_ISREG(st.st_mode) and _sha256(target / rel) == sha

    placed = [
        rel
        for rel in [*filter(_safe_rel, new), RECORD]
        if not os.path.lexists(stage / rel) and ours(rel, new.get(rel, record_sha))
    ]
    _roll_back(stage, target, placed, put_aside, [d for d in made if _safe_rel(d)])


@contextmanager
def staged_update(
    out: str | Path,
    kind: str,
    force: bool = False,
    recognise: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, its files update `out` as the
    module describes (reportgen's old files replaced or removed, everything else kept, a new
    record written last). `kind` names the output ("site", "run"); `recognise(path)` may
    accept an existing file at a new file's path as reportgen's although it is not recorded
    (a sealed single file). Refusals (OutputError) come before the block runs, and again at
    the end if the folder changed meanwhile."""
    target = check_folder(out, kind, force)
    stage = _Stage(target)
    try:
        yield stage.path
        stage.commit(kind, force, recognise)
    finally:
        stage.remove()


# --- every output of one command, checked before any work -----------------------------------


def _within(path: Path, folder: Path) -> str | None:
    """`path` relative to `folder` (POSIX) if it lies inside it or is it, else None."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return None


def _written_by(rel: str, writes: Iterable[str]) -> bool:
    """Whether a writer with these `writes` writes the relative path `rel`."""
    if rel == RECORD or rel.startswith(RESERVED) or rel == ".":
        return True
    return any(rel == w or (w.endswith("/") and (rel + "/").startswith(w)) for w in writes)


def _real(path: str | Path) -> Path:
    return Path(path).resolve()


def check_outputs(
    out: str | Path | None,
    single_file: str | Path | None,
    inputs: str | Path | None,
    run: str | Path | None,
    force: bool,
    run_option: str = "--run",
    marker: bytes = b"",
) -> None:
    """Raise OutputError for any output of one command that must not be written, before any
    work: `out` (the site folder), `single_file`, `run` (the run folder), given the `inputs`
    file (`-` or None for none). Checks each folder as `check_folder` does, and that no output
    overwrites an input file, a folder or a file reportgen did not write, or lies inside
    another output it would clash with. `run_option` names the run folder's option in
    messages (`--out` for `reportgen compute`); `marker` is what a single file reportgen
    wrote starts with (see `check_single_file`)."""
    site = None if out is None else check_folder(out, "site", force, SITE_WRITES)
    runs = None if run is None else check_folder(run, "run", force, RUN_WRITES, run_option)
    source = None if inputs is None or str(inputs) == "-" else _real(inputs)
    if site is not None and runs is not None:
        if site == runs:
            raise OutputError(f"--out {out} and {run_option} {run} are the same folder")
        if _within(runs, site) is not None:
            raise OutputError(
                f"--run {run} lies inside --out {out}: the site would publish the run folder; "
                "choose a --run folder outside the site"
            )
        if _within(site, runs) is not None:
            raise OutputError(
                f"--out {out} lies inside --run {run}; choose a site folder outside the run"
            )
    if source is not None:
        for folder, writes, option, given in (
            (site, SITE_WRITES, "--out", out),
            (runs, RUN_WRITES, "--run", run),
        ):
            rel = None if folder is None else _within(source, folder)
            if rel is not None and _written_by(rel, writes):
                raise OutputError(
                    f"the input file {inputs} is a file that {option} {given} writes; move "
                    "the inputs elsewhere or choose another output folder"
                )
    if single_file is None:
        return
    single = _real(single_file)
    shown = f"--single-file {single_file}"
    if source is not None and single == source:
        raise OutputError(f"{shown} is the input file; choose another path for the report")
    if runs is not None and _within(single, runs) is not None:
        raise OutputError(f"{shown} lies inside the run folder {run}; write it elsewhere")
    check_single_file(single_file, force, out, marker)


def check_single_file(
    path: str | Path, force: bool, site: str | Path | None = None, marker: bytes = b""
) -> None:
    """Raise OutputError unless reportgen may write a single-file report at `path`: not a
    folder; inside the `site` folder only at a path the site does not write itself; and over
    an existing file only if that file carries reportgen's seal (`marker` and a matching
    hash, see `seal`), or the site's record has it unchanged, or `force`."""
    single = _real(path)
    shown = f"--single-file {path}"
    if single.is_dir():
        raise OutputError(f"{shown} is a folder; give a file path, e.g. {path}/report.html")
    if site is not None:
        folder = _real(site)
        if single == folder:
            raise OutputError(f"{shown} is the site folder; choose another path")
        rel = _within(single, folder)
        if rel is not None and _written_by(rel, SITE_WRITES):
            raise OutputError(
                f"{shown} is a file the site itself writes in {site}; choose another name, "
                f"e.g. {Path(site) / 'report.html'}"
            )
        recorded = recorded_files(folder, "site") or {}
        if rel in recorded and _unchanged(folder, rel, recorded[rel]) is not False:
            return  # the site's own single file, from the last build
    if os.path.lexists(single) and not force and not is_sealed(single, marker):
        raise OutputError(
            f"{shown} exists and was not written by reportgen (or was changed since); choose "
            "another path, or pass --force to overwrite it"
        )
