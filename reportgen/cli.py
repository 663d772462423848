"""The `reportgen` command: options → Settings → one pipeline function.

Heavy imports (torch, transformers, altair) happen inside the commands, so `--help` is instant.
Exit codes: 0 success, 2 bad usage or bad input, 1 any other failure, 130 interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from reportgen import __version__
from reportgen.settings import Settings

app = typer.Typer(
    name="reportgen",
    help="Attention saliency for Hugging Face transformers models, as a static HTML report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# --- options shared by several commands ---------------------------------------------------------
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model folder or cached hub id [default: the demo model]."),
]
MethodOpt = Annotated[
    str | None,
    typer.Option(
        help="Saliency method: attn-grad, attention, attattr, attn-norm, rollout or "
        "grad-rollout (README: Methods)."
    ),
]
AggregateOpt = Annotated[
    str | None,
    typer.Option(
        help="attn-grad only: heads, or wang (also Wang et al. 2023's per-layer flow; tiled "
        "engine) [default: heads]."
    ),
]
MetricOpt = Annotated[
    str | None, typer.Option(help="Grid head score: total, prediction or flow:SRC->DST.")
]
StepsOpt = Annotated[int | None, typer.Option(help="Integration steps of attattr.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Inputs per pass.")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16, float16 or float64.")]
MaxTokOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Longest input [default: the model's limit].")
]
TruncOpt = Annotated[bool, typer.Option("--truncate", help="Cut over-long inputs, not fail.")]
AblateOpt = Annotated[
    int | None, typer.Option("--ablate-k", help="Heads ablated by the ablation check (0: skip).")
]
AblationOpt = Annotated[
    str | None,
    typer.Option(
        "--ablation",
        help="What replaces an ablated head's output: mean (over every token of every input, "
        "one vector per head for all positions), resample (its mean over another input, "
        "seeded) or zero [default: mean].",
    ),
]
EffectOpt = Annotated[
    str | None,
    typer.Option(
        "--effect",
        help="Effect measure: logprob (log p(target)), logit-diff (target − contrast; inputs "
        "name a contrast) or prob [default: logprob].",
    ),
]
DrawsOpt = Annotated[
    int | None,
    typer.Option("--ablate-draws", help="Random head sets averaged for the ablation baseline."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(help="Seed of the random heads, resample's donors and the bootstrap."),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        help="tiled (memory linear in T) or eager (the dense reference) [default: tiled]."
    ),
]
PairingOpt = Annotated[
    str | None,
    typer.Option(
        help="A bare encoder reads two segments separately (bi-encoder) or joint "
        "(cross-encoder) [default: separate]."
    ),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory to use, e.g. 8GiB, or per device with --device-map: "
        "cuda:0=20GiB,cpu=64GiB [default: half the free memory].",
    ),
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option("--device-map", help="auto: spread a large model over GPUs, CPU and disk."),
]
TopKOpt = Annotated[
    int | None,
    typer.Option("--top-k", help="Cells kept per head on a page [default: 2T, at most 512]."),
]
StoreTopKOpt = Annotated[
    int | None,
    typer.Option(
        "--top-k", help="Cells kept per head in the run folder [default: 2T, at most 512]."
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="What the run keeps of the T × T saliency: top-k (exact reductions and each "
        "head's top-k cells), dense or dense-float16 (every cell too) [default: top-k]."
    ),
]
SingleOpt = Annotated[
    Path | None, typer.Option("--single-file", help="Also write one self-contained HTML file.")
]
TitleOpt = Annotated[str | None, typer.Option(help="Report title.")]
TemplatesOpt = Annotated[
    Path | None, typer.Option(help="Folder of templates overriding the built-in ones.")
]
KeysOpt = Annotated[
    bool, typer.Option("--keys-as-rows", help="Heatmap rows are keys (as the reference figure).")
]
ProvenanceOpt = Annotated[
    str | None,
    typer.Option(
        help="What the report publishes of paths: relative (to the working directory) or "
        "full (absolute paths, the verbatim command) [default: relative]."
    ),
]
PatchingOpt = Annotated[
    bool,
    typer.Option(
        "--patching",
        help="Attribution patching: each head's first-order estimated effect of zeroing it on "
        "log p(target), the top 3 checked by real patching (one extra forward and backward).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Write into a folder reportgen did not write (its files are kept); overwrite "
        "files in the way or edited since.",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted compute of the run folder (same inputs and settings, "
        "checked); nothing to do if it is complete.",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Compute only shard I of N of the inputs (I/N, 1-based) into --out; join the "
        "shards with `reportgen merge`.",
    ),
]
InputsArg = Annotated[
    str, typer.Argument(help="Inputs: .txt, .jsonl, .csv or .tsv file, or - for stdin.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reportgen {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Attention saliency for Hugging Face transformers models, as a static HTML report."""


def _tune_allocator() -> None:
    """Before computing: keep freed memory for the next batch (see keep_freed_memory)."""
    from reportgen.engine import keep_freed_memory

    keep_freed_memory()


@app.command()
def build(
    ctx: typer.Context,
    inputs: InputsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Site folder.")] = Path("site"),
    run: Annotated[Path | None, typer.Option(help="Also keep the run folder here.")] = None,
    model: ModelOpt = None,
    method: MethodOpt = None,
    aggregate: AggregateOpt = None,
    metric: MetricOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_tokens: MaxTokOpt = None,
    truncate: TruncOpt = False,
    ablate_k: AblateOpt = None,
    ablate_draws: DrawsOpt = None,
    ablation: AblationOpt = None,
    effect: EffectOpt = None,
    patching: PatchingOpt = False,
    seed: SeedOpt = None,
    engine: EngineOpt = None,
    pairing: PairingOpt = None,
    max_memory: MemoryOpt = None,
    device_map: DeviceMapOpt = None,
    top_k: TopKOpt = None,
    store: StoreOpt = None,
    single_file: SingleOpt = None,
    title: TitleOpt = None,
    templates: TemplatesOpt = None,
    keys_as_rows: KeysOpt = False,
    provenance: ProvenanceOpt = None,
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compute saliency for INPUTS and render the report site, in one go."""
    settings = _settings(locals())
    with _errors(debug), _Progress(settings.quiet) as progress:
        from reportgen.pipeline import build as run_build
        from reportgen.pipeline import shown_command

        _tune_allocator()
        report = run_build(
            inputs,
            out,
            settings,
            command=shown_command(_invocation(ctx), settings.provenance),
            run_dir=run,
            progress=progress.compute,
            render_progress=progress.render,
            on_loaded=progress.start_compute,
            resume=resume,
        )
        progress.summary(report.site, report.single_file, report.tokens)


@app.command()
def compute(
    ctx: typer.Context,
    inputs: InputsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")],
    model: ModelOpt = None,
    method: MethodOpt = None,
    aggregate: AggregateOpt = None,
    metric: MetricOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_tokens: MaxTokOpt = None,
    truncate: TruncOpt = False,
    ablate_k: AblateOpt = None,
    ablate_draws: DrawsOpt = None,
    ablation: AblationOpt = None,
    effect: EffectOpt = None,
    patching: PatchingOpt = False,
    seed: SeedOpt = None,
    engine: EngineOpt = None,
    pairing: PairingOpt = None,
    max_memory: MemoryOpt = None,
    device_map: DeviceMapOpt = None,
    top_k: StoreTopKOpt = None,
    store: StoreOpt = None,
    title: TitleOpt = None,
    provenance: ProvenanceOpt = None,
    resume: ResumeOpt = False,
    shard: ShardOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compute saliency for INPUTS into a run folder (render it later with `render`).

    Results are kept as they come: after an interruption (Ctrl-C, a crash, a time limit),
    the same command with --resume continues where it stopped."""
    settings = _settings(locals())
    with _errors(debug), _Progress(settings.quiet) as progress:
        from reportgen.pipeline import compute as run_compute
        from reportgen.pipeline import parse_shard, shown_command

        which = None if shard is None else parse_shard(shard)
        _tune_allocator()
        with _kept_on_failure(out):
            run = run_compute(
                inputs,
                out,
                settings,
                progress=progress.compute,
                command=shown_command(_invocation(ctx), settings.provenance),
                on_loaded=progress.start_compute,
                resume=resume,
                shard=which,
            )
        tokens = sum(len(e.tokens) for e in run.entries)
        progress.inputs = len(run)  # with --resume, those computed before too
        progress.summary(None, None, tokens, run_path=run.path)


@app.command()
def merge(
    ctx: typer.Context,
    runs: Annotated[
        list[Path], typer.Argument(help="The shards' run folders (from compute --shard I/N).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")],
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Join the shards of one run into one run folder, in input order (render it as any)."""
    with _errors(debug):
        from reportgen.pipeline import merge as run_merge
        from reportgen.pipeline import shown_command

        started = time.perf_counter()
        merged = run_merge(runs, out, force, command=shown_command(_invocation(ctx)))
        if not quiet:
            seconds = time.perf_counter() - started
            typer.echo(
                f"{len(merged)} inputs from {len(runs)} shards in {seconds:.1f} s; run folder: "
                f"{merged.path}",
                err=True,
            )


@contextmanager
def _kept_on_failure(out: Path) -> Iterator[None]:
    """On any failure of a compute, say what an interruption kept for --resume."""
    from reportgen.errors import ReportgenError

    try:
        yield
    except ReportgenError:
        raise  # its message says what to do
    except BaseException:
        from reportgen.records import partial_count, partial_folder

        kept = partial_count(out)
        if kept:
            typer.echo(
                f"{kept} results are kept in {partial_folder(out)}: the same command with "
                "--resume continues from there",
                err=True,
            )
        raise


@app.command()
def render(
    run: Annotated[Path, typer.Argument(help="Run folder written by `compute`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Site folder.")] = Path("site"),
    metric: Annotated[
        str | None,
        typer.Option(
            help="Grid head score: total, prediction or flow:SRC->DST (no recompute needed) "
            "[default: the run's]."
        ),
    ] = None,
    top_k: TopKOpt = None,
    single_file: SingleOpt = None,
    title: TitleOpt = None,
    templates: TemplatesOpt = None,
    keys_as_rows: KeysOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Render a run folder into a static site."""
    options = locals()
    settings = _settings({k: v for k, v in options.items() if k != "metric"}).override(
        report_metric=metric
    )
    with _errors(debug), _Progress(settings.quiet) as progress:
        from reportgen.pipeline import render as run_render
        from reportgen.records import Run

        opened = Run.open(run)
        progress.start_render(len(opened))
        report = run_render(opened, out, settings, progress=progress.render)
        progress.summary(report.site, report.single_file, report.tokens)


@app.command()
def figure(
    run: Annotated[Path, typer.Argument(help="Run folder written by `compute`.")],
    id: Annotated[str, typer.Option("--id", help="Id of the input to draw.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file, .svg or .png.")],
    head: Annotated[
        str | None, typer.Option(help="Head as LAYER.HEAD, 1-based [default: the top head].")
    ] = None,
    keys_as_rows: KeysOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw the two-panel figure (head grid + token heatmap) of one input, offline."""
    with _errors(debug):
        from reportgen.charts import figure_spec
        from reportgen.records import Run
        from reportgen.site import save_figure

        if out.suffix.lower() not in (".svg", ".png"):
            raise _UsageError(f"--out {out}: the figure is written as .svg or .png")
        opened = Run.open(run)
        ids = opened.ids
        if id not in ids:
            shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise _UsageError(f"--id {id}: no such input in {run} (ids: {shown})")
        result = opened.result(ids.index(id))
        chosen = _parse_head(head, opened.info.num_layers, opened.info.num_heads)
        spec = figure_spec(result, chosen, keys_as_rows, metric=opened.info.metric)
        save_figure(spec, out, force=force)
        typer.echo(f"wrote {out}")


def _invocation(ctx: typer.Context) -> list[str]:
    """The current command as the user gave it: its name, then every argument and option that
    differs from its default (in the command's own order), paths as typed."""
    parts = [ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in _NOT_RECORDED:
            continue
        if param.param_type_name == "argument":
            parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value is None or value == param.default:
            continue
        elif getattr(param, "is_flag", False):
            parts.append(max(param.opts, key=len))
        else:
            parts += [max(param.opts, key=len), str(value)]
    return parts


_NOT_RECORDED = {"resume"}
"""Options that say how a command ran, not what it computed: left out of the recorded
command, so a resumed run records the command of the run it continues."""


def _parse_head(text: str | None, layers: int, heads: int) -> tuple[int, int] | None:
    if text is None:
        return None
    layer, dot, head = text.partition(".")
    if not (dot and layer.isdigit() and head.isdigit()):
        raise _UsageError(f"--head {text}: write it as LAYER.HEAD, e.g. 7.8 (1-based)")
    if not (1 <= int(layer) <= layers and 1 <= int(head) <= heads):
        raise _UsageError(f"--head {text}: the model has layers 1..{layers} and heads 1..{heads}")
    return int(layer) - 1, int(head) - 1


def _settings(options: dict[str, Any]) -> Settings:
    """Settings from a command's options: only those given (not None/False) override."""
    names = {
        "model",
        "method",
        "aggregate",
        "metric",
        "steps",
        "batch_size",
        "device",
        "dtype",
        "max_tokens",
        "ablate_k",
        "ablate_draws",
        "ablation",
        "effect",
        "seed",
        "engine",
        "pairing",
        "max_memory",
        "device_map",
        "store",
        "provenance",
        "top_k",
        "single_file",
        "title",
        "templates",
    }
    flags = {"truncate", "keys_as_rows", "quiet", "force", "patching"}
    changes = {k: v for k, v in options.items() if k in names}
    changes.update({k: True for k in flags if options.get(k)})
    return Settings().override(**changes)


class _UsageError(ValueError):
    """Bad usage found after option parsing (exit code 2)."""


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Turn known failures into one clear line and an exit code; tracebacks only with --debug."""
    from reportgen.errors import ReportgenError

    user_errors = (_UsageError, ReportgenError)
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted: every output is as it was before, or complete", err=True)
        raise typer.Exit(130) from None
    except user_errors as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        typer.echo(f"error: {type(err).__name__}: {first} (run with --debug for details)", err=True)
        raise typer.Exit(1) from None


class _Progress:
    """rich progress bars on stderr (transient, disabled when quiet or not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.perf_counter()
        self.inputs = 0

    def __enter__(self) -> _Progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=self.quiet or not self.console.is_terminal,
        )
        self.bars.__enter__()
        self._compute_task: Any = None
        self._render_task: Any = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)  # type: ignore[arg-type]

    def _tick(self, task: Any, n: int) -> None:
        self.bars.advance(task, n)
        state = self.bars.tasks[task]
        elapsed = state.elapsed or 0
        rate = f"{state.completed / elapsed:.1f} inputs/s" if elapsed > 0 else ""
        self.bars.update(task, rate=rate)

    def start_compute(self, total: int) -> None:
        self.inputs = total
        self._compute_task = self.bars.add_task("computing", total=total, rate="")
        self.start_render(total)

    def start_render(self, total: int) -> None:
        self.inputs = total
        if self._render_task is None:
            self._render_task = self.bars.add_task("rendering", total=total, rate="", start=False)

    @property
    def compute(self) -> Callable[[int], None]:
        return lambda n: self._tick(self._compute_task, n)

    @property
    def render(self) -> Callable[[int], None]:
        def tick(n: int) -> None:
            self.bars.start_task(self._render_task)
            self._tick(self._render_task, n)

        return tick

    def summary(
        self, site: Path | None, single: Path | None, tokens: int, run_path: Path | None = None
    ) -> None:
        if self.quiet:
            return
        seconds = time.perf_counter() - self.started
        parts = [f"{self.inputs} inputs ({tokens} tokens) in {seconds:.1f} s"]
        if run_path is not None:
            parts.append(f"run folder: {run_path}")
        if site is not None:
            parts.append(f"site: {site} (open {site / 'index.html'} in a browser)")
        if single is not None:
            parts.append(f"single file: {single}")
        typer.echo("; ".join(parts), err=True)


def main() -> None:
    """Console-script entry point."""
    app()
