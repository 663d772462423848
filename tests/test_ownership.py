"""reportgen replaces only what it wrote: the record of an output folder's files decides, not a
marker anyone can write. Files it did not write (`.git`, `CNAME`, notes, edits) are kept or the
update is refused naming them; an update interrupted at any point, even by a killed process,
leaves the old or the new output; its leftovers are cleaned by the next update.

Sites rendered from synthetic runs (no model): the unit tier."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_INPUTS
from synthetic import write_run

from reportgen import fsutil
from reportgen.errors import OutputError
from reportgen.records import Run, RunWriter
from reportgen.settings import Settings
from reportgen.site import render_site
from reportgen.site.writer import is_single_file, is_site, render_single_file

pytestmark = pytest.mark.unit

GIT_HEAD = b"ref: refs/heads/gh-pages\n"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (dotfiles too), and symbolic links as their target."""
    out: dict[str, bytes] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "three", DEMO_INPUTS)
    write_run(root / "two", DEMO_INPUTS[:2])
    return {"three": Run.open(root / "three"), "two": Run.open(root / "two")}


def gh_pages(folder: Path) -> Path:
    """A folder like a gh-pages checkout: a .git folder and a custom domain."""
    (folder / ".git" / "refs").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_bytes(GIT_HEAD)
    (folder / "CNAME").write_text("reports.example.org\n")
    return folder


def foreign(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(folder).items() if k.startswith(".git/") or k == "CNAME"}


def leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_gh_pages_checkout_keeps_its_git_folder_and_cname(runs, tmp_path):
    site = gh_pages(tmp_path / "site")
    kept = foreign(site)
    with pytest.raises(
        OutputError, match=r"not written by reportgen .* holds \.git, CNAME.*--force"
    ):
        render_site(runs["three"], site, Settings())
    assert tree(site) == kept, "refused before anything was written"
    render_site(runs["three"], site, Settings(force=True))
    assert foreign(site) == kept and is_site(site)
    three = sorted(p.name for p in (site / "examples").iterdir())
    assert len(three) == 3
    render_site(runs["two"], site, Settings(single_file=site / "report.html"))  # no --force
    assert foreign(site) == kept, ".git and CNAME stay, byte for byte"
    assert sorted(p.name for p in (site / "examples").iterdir()) == three[:2], "old page removed"
    record = fsutil.recorded_files(site, "site")
    assert record is not None and "report.html" in record and "CNAME" not in record
    assert not any(rel.startswith(".git") for rel in record)
    render_site(runs["three"], site, Settings())
    assert not (site / "report.html").exists(), "reportgen's own file, no longer produced"
    assert foreign(site) == kept and leftovers(tmp_path, site) == []


def test_the_record_lists_every_file_the_site_writes_and_nothing_else(runs, tmp_path):
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings(single_file=site / "report.html"))
    files = set(tree(site))
    record = fsutil.recorded_files(site, "site")
    assert record is not None and set(record) == files - {fsutil.RECORD}
    for rel in files - {fsutil.RECORD, "report.html"}:
        assert fsutil._written_by(rel, fsutil.SITE_WRITES), f"{rel} not in SITE_WRITES"
    text = (site / fsutil.RECORD).read_text("utf-8")
    assert json.loads(text)["kind"] == "site" and "mtime" not in text  # deterministic bytes


@pytest.mark.parametrize(
    "forgery",
    ["meta tag", "record of another kind", "record naming files outside", "record, wrong hashes"],
)
def test_a_forged_marker_or_record_does_not_make_a_folder_replaceable(runs, tmp_path, forgery):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "index.html").write_text('<meta name="generator" content="reportgen 0.1.0">')
    record = {"format": fsutil.RECORD_FORMAT, "kind": "site", "files": {}}
    if forgery == "record of another kind":
        record["kind"] = "run"
    elif forgery == "record naming files outside":
        record["files"] = {"../outside.txt": {"size": 4, "sha256": "0" * 64}}
        (tmp_path / "outside.txt").write_text("mine")
    elif forgery == "record, wrong hashes":
        record["files"] = {n: {"size": 4, "sha256": "0" * 64} for n in ("notes.txt", "index.html")}
    if forgery != "meta tag":
        (folder / fsutil.RECORD).write_text(json.dumps(record))
    before = tree(tmp_path)
    expected = "were changed since" if forgery == "record, wrong hashes" else "not written by"
    with pytest.raises(OutputError, match=expected):
        render_site(runs["three"], folder, Settings())
    assert tree(tmp_path) == before
    assert not is_site(folder)


def test_a_forged_run_manifest_does_not_make_a_folder_replaceable(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "reportgen-run/2"}))
    (folder / "thesis.tex").write_text("mine")
    refused = pytest.raises(OutputError, match="not written by reportgen")
    with refused, RunWriter(folder, runs["three"].info):  # what records.py calls
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "thesis.tex"]
    with pytest.raises(OutputError, match="not written by"), fsutil.staged_update(folder, "run"):
        pass
    assert not fsutil.owned(folder, "run")


def test_an_edited_page_is_refused_by_name_and_kept_unless_forced(runs, tmp_path):
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings())
    about = site / "about.html"
    about.write_text("my notes about this run")
    page = sorted((site / "examples").iterdir())[2]
    page.write_text("edited")
    with pytest.raises(OutputError, match=r"2 file\(s\) .* changed since: about.html, examples/"):
        render_site(runs["two"], site, Settings())
    assert about.read_text() == "my notes about this run"
    render_site(runs["two"], site, Settings(force=True))
    assert "my notes" not in about.read_text(), "--force replaces an edited page it rewrites"
    assert page.read_text() == "edited", "but never removes one it no longer writes"
    assert page.name not in (fsutil.recorded_files(site, "site") or {})


def test_a_file_of_someone_elses_in_the_way_is_refused_by_name(runs, tmp_path):
    site = tmp_path / "site"
    render_site(runs["two"], site, Settings())
    name = sorted(p.name for p in (site / "examples").iterdir())
    render_site(runs["three"], tmp_path / "other", Settings())
    [third] = sorted(
        p.name for p in (tmp_path / "other" / "examples").iterdir() if p.name not in name
    )
    (site / "examples" / third).write_text("someone's page")
    with pytest.raises(OutputError, match=f"would overwrite examples/{third}, which reportgen did"):
        render_site(runs["three"], site, Settings())
    assert (site / "examples" / third).read_text() == "someone's page"
    render_site(runs["three"], site, Settings(force=True))
    assert (site / "examples" / third).read_text() != "someone's page"
    assert leftovers(tmp_path, site) == []


def test_nothing_in_the_way_of_a_folder_nor_through_a_symlinked_folder(runs, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.html").write_text("keep")
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings())
    record = json.loads((site / fsutil.RECORD).read_text())
    record["files"]["examples/keep.html"] = {
        "size": 4,
        "sha256": fsutil._sha256(outside / "keep.html"),
    }
    (site / fsutil.RECORD).write_text(json.dumps(record))
    for page in (site / "examples").iterdir():
        page.unlink()
    (site / "examples").rmdir()
    (site / "examples").symlink_to(outside)  # a recorded path now leads outside the site
    with pytest.raises(OutputError, match="would overwrite examples, which reportgen did not"):
        render_site(runs["three"], site, Settings())
    assert fsutil.owned(site, "site") is True  # missing recorded files are no one's loss
    render_site(runs["three"], site, Settings(force=True))
    assert (outside / "keep.html").read_text() == "keep", "nothing removed through the link"
    assert (site / "examples").is_dir() and not (site / "examples").is_symlink()


def _make_update_fail(monkeypatch, at: int, error: BaseException) -> None:
    real = fsutil._Moves.place
    calls = {"n": 0}

    def place(self, rel, replaces):
        calls["n"] += 1
        if calls["n"] == at:
            raise error
        return real(self, rel, replaces)

    monkeypatch.setattr(fsutil._Moves, "place", place)


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt(), OSError(28, "No space left on device")], ids=["ctrl-c", "enospc"]
)
@pytest.mark.parametrize("at", [1, 5, 9])
def test_an_update_interrupted_while_files_move_puts_the_old_site_back(
    runs, tmp_path, monkeypatch, error, at
):
    site = gh_pages(tmp_path / "site")
    render_site(runs["three"], site, Settings(force=True, single_file=site / "report.html"))
    before = tree(site)
    _make_update_fail(monkeypatch, at, error)
    with pytest.raises(type(error)):
        render_site(runs["two"], site, Settings(keys_as_rows=True))
    assert tree(site) == before, f"the old site, byte for byte, after {at - 1} files moved"
    assert leftovers(tmp_path, site) == []


def test_an_interrupted_update_restores_a_single_file_it_recognised(runs, tmp_path, monkeypatch):
    """A sealed single file in the site folder, not in its record, is replaced like reportgen's
    own file: kept aside first, so an interruption puts it back too."""
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings())
    render_single_file(runs["two"], site / "report.html", Settings())  # sealed, not recorded
    before = tree(site)
    other = tmp_path / "other"
    render_site(runs["three"], other, Settings(single_file=other / "report.html"))
    last = len(fsutil.recorded_files(other, "site") or {}) + 1  # the record itself
    _make_update_fail(monkeypatch, last, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        render_site(runs["three"], site, Settings(single_file=site / "report.html"))
    assert tree(site) == before
    monkeypatch.undo()
    render_site(runs["three"], site, Settings(single_file=site / "report.html"))
    assert (site / "report.html").read_bytes() == (other / "report.html").read_bytes()


CRASH = """
import os, sys
from pathlib import Path
from reportgen import fsutil
from reportgen.records import Run
from reportgen.settings import Settings
from reportgen.site import render_site

run, site, at = Run.open(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
real, calls = fsutil._Moves.place, [0]

def place(self, rel, replaces):
    real(self, rel, replaces)
    calls[0] += 1
    if calls[0] == at:
        os._exit(9)  # as SIGKILL or a power cut would: no cleanup at all

fsutil._Moves.place = place
render_site(run, site, Settings(keys_as_rows=True))
"""


@pytest.mark.parametrize("at", [5, "all"])
def test_a_killed_update_is_undone_or_finished_by_the_next_one(runs, tmp_path, at):
    """Killed after 5 files moved (3 identical assets, 2 changed pages): mixed on disk, until
    the next check puts the old site back. Killed after the record (the commit point): the
    next check keeps the new site."""
    site = gh_pages(tmp_path / "site")
    render_site(runs["three"], site, Settings(force=True))
    before = tree(site)
    render_site(runs["two"], tmp_path / "new", Settings(keys_as_rows=True))
    new = {**tree(tmp_path / "new"), **foreign(site)}
    count = len(fsutil.recorded_files(tmp_path / "new", "site") or {}) + 1  # and the record
    stop = count if at == "all" else at
    done = subprocess.run(
        [sys.executable, "-c", CRASH, str(runs["two"].path), str(site), str(stop)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 9, done.stderr
    [stage] = [p for p in tmp_path.iterdir() if p.name.startswith(".site.tmp-")]
    assert tree(site) not in (before, new) or at == "all", "mixed, until the next update"
    fsutil.check_folder(site, "site")  # what the next build does first
    assert tree(site) == (new if at == "all" else before)
    assert not stage.exists() and leftovers(tmp_path, site) == []


def test_signals_wait_while_files_move():
    # Python's own Ctrl-C handler, whatever an earlier test's library left installed (a
    # once-seen CI failure: no KeyboardInterrupt at all, as under an ignoring handler)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = False
    try:
        with pytest.raises(KeyboardInterrupt), fsutil._signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached = True
    finally:
        if before is not None:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGINT, before)
    assert reached, "SIGINT arrived only after the block"


def test_leftover_staging_folders_are_removed_when_abandoned_only(runs, tmp_path):
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings())
    abandoned = fsutil._Stage(site.resolve())
    (abandoned.path / "index.html").write_text("half a build")
    abandoned._mark.close()  # as when its process died: the lock is free
    abandoned._mark = None
    busy = fsutil._Stage(site.resolve())  # a build still running (its lock is held)
    stranger = tmp_path / ".site.tmp-notours"
    stranger.mkdir()
    (stranger / "data.csv").write_text("not ours")
    render_site(runs["three"], site, Settings())
    assert not abandoned.path.exists()
    assert busy.path.exists() and stranger.exists(), "in use, or not recognisably ours"
    busy.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".site.tmp-notours", "site"]


def test_a_symlinked_output_updates_its_target_in_place(runs, tmp_path):
    real = gh_pages(tmp_path / "real-site")
    render_site(runs["three"], real, Settings(force=True))
    link = tmp_path / "site"
    link.symlink_to(real)
    render_site(runs["two"], link, Settings(keys_as_rows=True))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(list((real / "examples").iterdir())) == 2 and is_site(real)
    assert (real / ".git" / "HEAD").read_bytes() == GIT_HEAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real-site", "site"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(OutputError, match="is a symbolic link to .*missing, which does not exist"):
        render_site(runs["two"], dangling, Settings())
    assert not (tmp_path / "missing").exists()


def test_roots_home_and_the_working_folders_ancestors_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "home" / "me" / "project"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    monkeypatch.chdir(work)
    for path, reason in [
        ("/", "is a filesystem root"),
        (tmp_path / "home" / "me", "is your home folder"),
        (tmp_path / "home", "contains the working folder"),
        ("..", r"\(= .*/home/me\) is your home folder"),
    ]:
        with pytest.raises(OutputError, match=reason):
            fsutil.check_outputs(path, None, None, None, force=True)
        with pytest.raises(OutputError, match=f"--out {path} {reason}"):
            fsutil.check_outputs(None, None, None, path, force=True, run_option="--out")
    fsutil.check_outputs(".", None, None, None, force=True)  # the working folder itself is fine
    fsutil.check_outputs("site", None, None, "runs/a", force=False)


def test_a_run_folder_and_a_site_folder_are_not_each_other(runs, tmp_path):
    site = tmp_path / "site"
    render_site(runs["three"], site, Settings())
    refused = pytest.raises(OutputError, match="not written by reportgen .* of a run folder")
    with refused, RunWriter(site, runs["three"].info):
        pass
    with RunWriter(tmp_path / "run", runs["three"].info) as writer:
        writer.add(runs["three"].result(0))
    assert fsutil.owned(tmp_path / "run", "run") and not fsutil.owned(tmp_path / "run", "site")
    with pytest.raises(OutputError, match="not written by reportgen .* of a site"):
        render_site(runs["three"], tmp_path / "run", Settings())
    files = set(tree(tmp_path / "run")) - {fsutil.RECORD}
    assert all(fsutil._written_by(rel, fsutil.RUN_WRITES) for rel in files), files


# --- every output of a command, checked before the work -------------------------------------


def test_outputs_inside_one_another_are_refused(tmp_path):
    site = tmp_path / "site"
    for out, run, message in [
        (site, site / "run", "--run .* lies inside --out"),
        (site / "x", site, "--out .* lies inside --run"),
        (site, site, "are the same folder"),
    ]:
        with pytest.raises(OutputError, match=message):
            fsutil.check_outputs(out, None, None, run, force=True)
    fsutil.check_outputs(site, None, None, tmp_path / "run", force=False)
    assert not site.exists(), "a check writes nothing"


def test_single_file_paths_that_would_clash_are_refused(runs, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("a b c\n")
    site, run = tmp_path / "site", tmp_path / "run"
    cases = [
        (inputs, "is the input file"),
        (tmp_path, "is a folder; give a file path"),
        (site, "is the site folder"),
        (site / "index.html", "is a file the site itself writes"),
        (site / "examples" / "x.html", "is a file the site itself writes"),
        (site / fsutil.RECORD, "is a file the site itself writes"),
        (run / "report.html", "lies inside the run folder"),
    ]
    for single, message in cases:
        with pytest.raises(OutputError, match=message):
            fsutil.check_outputs(site, single, inputs, run, force=True)
    with pytest.raises(OutputError, match="is the input file"):
        fsutil.check_outputs(site, inputs, inputs, None, force=True)  # even with --force
    entries = tmp_path / "run2" / "entries.jsonl"
    entries.parent.mkdir()
    entries.write_text("{}\n")
    with pytest.raises(OutputError, match="is a file that --run .* writes"):
        fsutil.check_outputs(None, None, entries, entries.parent, force=True)
    fsutil.check_outputs(site, site / "report.html", inputs, run, force=False)  # README usage


def test_single_file_overwrites_only_its_own_unchanged_file(runs, tmp_path):
    path = tmp_path / "report.html"
    path.write_text("<p>my own report</p>")
    with pytest.raises(OutputError, match="exists and was not written by reportgen"):
        render_single_file(runs["two"], path, Settings())
    assert path.read_text() == "<p>my own report</p>"
    render_single_file(runs["two"], path, Settings(force=True))
    assert is_single_file(path)
    render_single_file(runs["three"], path, Settings())  # its own file: no --force needed
    html = path.read_text("utf-8")
    assert html.startswith("<!doctype html>")
    assert re.search(r'<meta name="reportgen-seal" content="reportgen-sha256:[0-9a-f]{64}">', html)
    forged = tmp_path / "forged.html"
    forged.write_text(html.replace("<title>", "<title>edited "))  # marker kept, content changed
    assert not is_single_file(forged)
    with pytest.raises(OutputError, match="not written by reportgen"):
        fsutil.check_outputs(None, forged, None, None, force=False)
    meta_only = tmp_path / "meta.html"
    meta_only.write_text('<!doctype html><meta name="generator" content="reportgen 0.1.0">')
    with pytest.raises(OutputError, match="not written by reportgen"):
        render_site(runs["two"], tmp_path / "site", Settings(single_file=meta_only))
    assert not (tmp_path / "site").exists(), "refused before rendering"


def test_single_file_inside_the_site_follows_the_sites_record(runs, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "report.html").write_text("a report of mine")
    with pytest.raises(OutputError, match="report.html exists and was not written by reportgen"):
        render_site(runs["two"], site, Settings(single_file=site / "report.html"))
    (site / "report.html").unlink()
    render_site(runs["two"], site, Settings(single_file=site / "report.html"))
    render_site(runs["three"], site, Settings(single_file=site / "report.html"))
    assert is_single_file(site / "report.html") and is_site(site)
    single = (site / "report.html").read_bytes()
    render_single_file(runs["three"], tmp_path / "alone.html", Settings())
    assert (tmp_path / "alone.html").read_bytes() == single, "the same file, sealed the same"


def test_a_folder_whose_parent_is_not_writable_is_staged_inside_it(runs, tmp_path, monkeypatch):
    """A mount point or a folder in a read-only parent: staged inside the folder itself (renames
    cannot cross devices), and the staging folder never becomes part of the site."""
    site = gh_pages(tmp_path / "site")
    render_site(runs["three"], site, Settings(force=True))
    real_access = os.access
    monkeypatch.setattr(
        fsutil.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode)
    )
    seen: list[str] = []
    real_place = fsutil._Moves.place

    def place(self, rel, replaces):
        seen.append(Path(self.stage).parent.name)
        return real_place(self, rel, replaces)

    monkeypatch.setattr(fsutil._Moves, "place", place)
    render_site(runs["two"], site, Settings(keys_as_rows=True))
    assert set(seen) == {"site"}, "staged inside the site folder"
    assert sorted(p.name for p in site.iterdir() if p.name.startswith(".reportgen-")) == [
        fsutil.RECORD
    ]
    record = fsutil.recorded_files(site, "site") or {}
    assert not any(rel.startswith(".reportgen-") for rel in record)
    assert len(list((site / "examples").iterdir())) == 2 and foreign(site)
    assert leftovers(tmp_path, site) == []
