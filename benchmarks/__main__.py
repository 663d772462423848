"""`python -m benchmarks [--quick] [--only NAME ...]`: run the benchmarks, print their tables.

The full mode also writes `benchmarks/RESULTS.md` (tables, machine, versions, date, command),
keeping the hand-written section that follows `NOTES_HEADING` in the existing file; with
`--only`, the existing tables of the benchmarks not run are kept too (and say so). `--quick`
runs every benchmark at tiny sizes, prints the tables and writes nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    attattr,
    browser,
    build,
    compute,
    csp,
    index,
    longinputs,
    peers,
    scale,
    scaleout,
)
from benchmarks.common import Options, Table
from benchmarks.environment import describe, load

BENCHMARKS: dict[str, Callable[[Options], list[Table]]] = {
    "compute": compute.run,
    "attattr": attattr.run,
    "browser": browser.run,
    "build": build.run,
    "scale": scale.run,
    "csp": csp.run,
    "scaleout": scaleout.run,
    "peers": peers.run,
    "long": longinputs.run,
    "index": index.run,
}
NUMBERS = {
    "compute": "1",
    "attattr": "2",
    "browser": "3",
    "build": "4",
    "scale": "5",
    "csp": "6",
    "scaleout": "7",
    "peers": "8",
    "long": "9",
    "index": "10",
}
"""Each benchmark's table number (its tables are titled "### N. ..." or "### Na. ...")."""
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTES_HEADING = "## Profiles, fixes and before/after"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, no judging, nothing written (CI)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument("--reps", type=int, help="timed rounds per comparison")
    parser.add_argument(
        "--threads", type=int, help="torch threads [quick: 1; full: torch's default]"
    )
    parser.add_argument("--out", type=Path, help=f"results file of the full mode [{RESULTS}]")
    parser.add_argument(
        "--index-run",
        type=Path,
        help="benchmark 10 on this run folder (e.g. a 10,000-input demo-model run) instead of "
        "a synthetic run",
    )
    parser.add_argument(
        "--long-run",
        type=Path,
        help="benchmark 9 also measures the long inputs' pages of this run folder (e.g. a "
        "4,096-token input computed with a locally built model)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.out is not None:
        parser.error("--quick writes nothing; drop --out")
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    names = args.only or list(BENCHMARKS)
    started, load_at_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load()
    tables: list[Table] = []
    _quiet_transformers()
    # As `reportgen` does before it computes; benchmark 4 runs the command itself.
    from reportgen.engine import keep_freed_memory

    allocator = "glibc malloc keeps freed memory" if keep_freed_memory() else "default malloc"
    with tempfile.TemporaryDirectory(prefix="reportgen-bench-") as tmp:
        reps = args.reps or (1 if args.quick else 10)
        threads = args.threads or (1 if args.quick else None)
        opts = Options(
            quick=args.quick,
            work=Path(tmp),
            reps=reps,
            threads=threads,
            index_run=args.index_run,
            long_run=args.long_run,
        )
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        for name in names:
            begun = time.perf_counter()
            found = BENCHMARKS[name](opts)
            opts.log(f"{name}: done in {time.perf_counter() - begun:.1f} s")
            for table in found:
                print(table.markdown(), flush=True)
            tables += found
    if not args.quick:
        out = args.out or RESULTS
        kept = set(BENCHMARKS) - set(names)
        text = _results(tables, command, started, load_at_start, allocator, out, kept)
        out.write_text(text, "utf-8")
        opts.log(f"wrote {out}")
    return 0


def _quiet_transformers() -> None:
    """No progress bars or info logs from saving and loading the benchmark models."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _old_tables(text: str, benchmarks: set[str]) -> list[tuple[str, str]]:
    """(number, Markdown) of the tables of `benchmarks` in an existing RESULTS.md."""
    wanted = {NUMBERS[name] for name in benchmarks}
    body = text[: text.index(NOTES_HEADING)] if NOTES_HEADING in text else text
    found = []
    for chunk in re.split(r"(?m)^(?=### )", body)[1:]:
        number = re.match(r"### (\d+)", chunk)
        if number and number.group(1) in wanted:
            found.append((number.group(1), chunk.rstrip("\n") + "\n"))
    return found


def _results(
    tables: list[Table],
    command: str,
    started: str,
    load_at_start: str,
    allocator: str,
    out: Path,
    not_run: set[str] | None = None,
) -> str:
    """RESULTS.md: header, machine and versions, the tables (with those of the benchmarks
    `not_run` kept from the existing file), then the kept notes section."""
    kept, text = "", out.read_text("utf-8") if out.is_file() else ""
    if NOTES_HEADING in text:
        kept = text[text.index(NOTES_HEADING) :]
    new = [(re.match(r"(\d+)", t.title).group(1), t.markdown()) for t in tables]  # type: ignore[union-attr]
    old = _old_tables(text, not_run or set())
    ordered = [md for _, md in sorted(old + new, key=lambda pair: int(pair[0]))]
    header = (
        f"Produced by `{command}` (from the repository root), started {started}. Regenerate "
        f"with the same command on a calm machine; the section `{NOTES_HEADING[3:]}` at the end "
        "is written by hand and kept."
    )
    if old:
        header += (
            " Tables of the benchmarks this command did not run ("
            + ", ".join(sorted(not_run or set(), key=lambda n: NUMBERS[n]))
            + ") are kept from the previous file; their own runs' machine and versions are "
            "not restated here."
        )
    parts = [
        "# reportgen benchmarks",
        "",
        header,
        "",
        describe(load_at_start, allocator),
        *ordered,
        kept or f"{NOTES_HEADING}\n\n(none yet)\n",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
