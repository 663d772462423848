"""Experiment-log helpers: attach a single-file report to an MLflow or W&B run."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reportgen.pipeline import Report
from reportgen.records import Run, is_run
from reportgen.settings import Settings

Source = Report | Run | str | Path


@contextmanager
def single_file(source: Source, settings: Settings | None = None) -> Iterator[Path]:
    """A single-file report for `source`: a Report's own file, an .html file, or one rendered
    into a temporary folder from a run folder (deleted afterwards)."""
    from reportgen.site import render_single_file

    if isinstance(source, Report):
        if source.single_file is not None:
            yield source.single_file
            return
        if source.run is None:
            raise ValueError(
                "this report has no single file and no run folder; build it with "
                "Settings(single_file=...) or run_dir=..."
            )
        source = source.run
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".html":
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such report file")
        yield Path(source)
        return
    run = source if isinstance(source, Run) else Run.open(source)
    with tempfile.TemporaryDirectory(prefix="reportgen-log-") as tmp:
        yield render_single_file(run, Path(tmp) / "report.html", settings or Settings())


def run_folder(source: Source) -> Path | None:
    """The run folder behind `source`, if there is one."""
    if isinstance(source, Report):
        return source.run
    if isinstance(source, Run):
        return source.path
    return Path(source) if is_run(Path(source)) else None
