"""Write a folder completely or not at all: build it beside its destination, then swap it in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from reportgen.errors import OutputError

__all__ = ["OutputError", "atomic_dir"]


@contextmanager
def atomic_dir(out: Path, is_ours: Callable[[Path], bool], force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `out`; when the block succeeds, it replaces `out`.

    If the block raises (or is interrupted), `out` is untouched and the temporary folder is
    removed. An existing `out` is replaced only if `is_ours(out)` (a folder reportgen wrote) or
    `force`, so a typo cannot wipe an unrelated folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not (is_ours(out) or force):
        raise OutputError(
            f"{out} exists and was not written by reportgen; choose another path or pass --force"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(new: Path, out: Path) -> None:
    """Replace `out` by `new` with renames only; the old folder is deleted last."""
    new.chmod(0o755)
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
