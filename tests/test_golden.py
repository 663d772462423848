"""The committed demo site (site/, published on GitHub Pages) is byte for byte what the README's
demo command builds now: every change to the report shows in review as a change to site/.

The build is the session's `readme_outputs` (the README's commands, in a scratch folder whose
`examples/` is the project's, with SOURCE_DATE_EPOCH fixed, one CPU thread and no network), in
a process of its own, so this is also a check that building is reproducible across processes.
When a change to the output is intended, regenerate site/ and review it with git:

    python -m pytest tests/test_golden.py --regenerate-golden
    git diff --stat site/
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, SOURCE_DATE_EPOCH, demo_command

pytestmark = pytest.mark.e2e

GOLDEN = ROOT / "site"
COMPARISON = "compare"
"""`site/compare/`: the demo comparison, built from checkpoints the repository does not hold
(README, "Emergence"); not part of the demo build, and kept when site/ is regenerated
(tests/test_compare_demo.py checks it against the README)."""


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (dotfiles too), by relative path, but the comparison's."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != COMPARISON
    }


def first_difference(a: bytes, b: bytes, context: int = 60) -> str:
    """Where two files part: the line, and a few characters of each around the first byte that
    differs (pages hold long lines, so whole lines would not be readable)."""
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    line = a[:at].count(b"\n") + 1
    start = max(0, at - context)

    def excerpt(data: bytes) -> str:
        return repr(data[start : at + context].decode("utf-8", "replace"))

    return f"line {line}, byte {at}:\n      site/: {excerpt(a)}\n      build: {excerpt(b)}"


def differences(golden: dict[str, bytes], fresh: dict[str, bytes]) -> list[str]:
    found = [f"  only in site/: {name}" for name in sorted(golden.keys() - fresh.keys())]
    found += [f"  only in the build: {name}" for name in sorted(fresh.keys() - golden.keys())]
    for name in sorted(golden.keys() & fresh.keys()):
        a, b = golden[name], fresh[name]
        if a != b:
            found.append(
                f"  differs: {name} ({len(a)} bytes in site/, {len(b)} in the build), "
                + first_difference(a, b)
            )
    return found


def regenerate(fresh: Path, golden: Path) -> None:
    """Replace site/ with the fresh build (the only way this suite writes into the project),
    keeping site/compare/."""
    for item in golden.iterdir() if golden.is_dir() else ():
        if item.name != COMPARISON:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.copytree(fresh, golden, dirs_exist_ok=True)


def test_committed_site_is_the_readme_demo_build(
    demo_site: Path, request: pytest.FixtureRequest
) -> None:
    if request.config.getoption("--regenerate-golden"):
        regenerate(demo_site, GOLDEN)
        pytest.skip(f"regenerated site/ ({len(tree(GOLDEN))} files); review: git diff --stat site/")
    golden, fresh = tree(GOLDEN), tree(demo_site)
    found = differences(golden, fresh)
    assert not found, (
        f"site/ is not what `{demo_command()}` builds now (SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}, "
        f"{len(found)} of {len(golden.keys() | fresh.keys())} files):\n"
        + "\n".join(found)
        + "\nIf the change is intended: python -m pytest tests/test_golden.py --regenerate-golden,"
        " then review `git diff --stat site/` and commit site/."
    )
