"""`python -m benchmarks [--quick] [--only NAME ...]`: run the benchmarks, print their tables.

The full mode also writes `benchmarks/RESULTS.md` (tables, machine, versions, date, command),
keeping the hand-written section that follows `NOTES_HEADING` in the existing file. `--quick`
runs every benchmark at tiny sizes, prints the tables and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import attattr, browser, build, compute, csp, scale, scaleout
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
}
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
        opts = Options(quick=args.quick, work=Path(tmp), reps=reps, threads=threads)
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
        out.write_text(_results(tables, command, started, load_at_start, allocator, out), "utf-8")
        opts.log(f"wrote {out}")
    return 0


def _quiet_transformers() -> None:
    """No progress bars or info logs from saving and loading the benchmark models."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _results(
    tables: list[Table], command: str, started: str, load_at_start: str, allocator: str, out: Path
) -> str:
    """RESULTS.md: header, machine and versions, the tables, then the kept notes section."""
    kept = ""
    if out.is_file():
        text = out.read_text("utf-8")
        if NOTES_HEADING in text:
            kept = text[text.index(NOTES_HEADING) :]
    parts = [
        "# reportgen benchmarks",
        "",
        f"Produced by `{command}` (from the repository root), started {started}. Regenerate "
        f"with the same command on a calm machine; the section `{NOTES_HEADING[3:]}` at the end "
        "is written by hand and kept.",
        "",
        describe(load_at_start, allocator),
        *[table.markdown() for table in tables],
        kept or f"{NOTES_HEADING}\n\n(none yet)\n",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
