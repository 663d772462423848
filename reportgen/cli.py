"""The `reportgen` command: options → Settings → one pipeline function.

Heavy imports (torch, transformers, altair) happen inside the commands, so `--help` is instant.
Exit codes: 0 success, 2 bad usage or bad input, 1 any other failure, 130 interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from reportgen import __version__
from reportgen.errors import ConfigError, ReportgenError
from reportgen.settings import Settings

app = typer.Typer(
    name="reportgen",
    help="Attention saliency for Hugging Face transformers models, as a static HTML report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _default(name: str) -> str:
    """` [default: X]` for a help text, from Settings (the defaults live in one place)."""
    return f" [default: {getattr(Settings(), name)}]"


# --- options shared by several commands ---------------------------------------------------------
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model folder or cached hub id [default: the demo model]."),
]
MethodOpt = Annotated[
    str | None,
    typer.Option(
        help="Saliency method: attn-grad, attention, attattr, attn-norm, rollout or "
        f"grad-rollout (README: Methods){_default('method')}."
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
    str | None,
    typer.Option(help=f"Grid head score: total, prediction or flow:SRC->DST{_default('metric')}."),
]
StepsOpt = Annotated[
    int | None, typer.Option(help=f"Integration steps of attattr{_default('steps')}.")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help=f"Inputs per pass{_default('batch_size')}.")
]
DeviceOpt = Annotated[str | None, typer.Option(help=f"auto, cpu, cuda or mps{_default('device')}.")]
DtypeOpt = Annotated[
    str | None, typer.Option(help=f"float32, bfloat16, float16 or float64{_default('dtype')}.")
]
MaxTokOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Longest input [default: the model's limit].")
]
TruncOpt = Annotated[
    bool, typer.Option("--truncate", help="Cut over-long inputs, not fail [default: off].")
]
AblateOpt = Annotated[
    int | None,
    typer.Option(
        "--ablate-k", help=f"Heads ablated by the ablation check (0: skip){_default('ablate_k')}."
    ),
]
AblationOpt = Annotated[
    str | None,
    typer.Option(
        "--ablation",
        help="What replaces an ablated head's output: mean (over every token of every input, "
        "one vector per head for all positions), resample (its output at the same position on "
        "another input, seeded; past that input's end, where it is shorter, its mean over its "
        f"tokens) or zero{_default('ablation')}.",
    ),
]
EffectOpt = Annotated[
    str | None,
    typer.Option(
        "--effect",
        help="Effect measure: logprob (log p(target)), logit-diff (target − contrast; inputs "
        f"name a contrast) or prob{_default('effect')}.",
    ),
]
DrawsOpt = Annotated[
    int | None,
    typer.Option(
        "--ablate-draws",
        help=f"Random head sets averaged for the ablation baseline{_default('ablate_draws')}.",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        help=f"Seed of the random heads, resample's donors and the bootstrap{_default('seed')}."
    ),
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
    typer.Option(
        "--device-map",
        help="auto: spread a large model over GPUs, CPU and disk [default: one device].",
    ),
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
    Path | None,
    typer.Option("--single-file", help="Also write one self-contained HTML file [default: none]."),
]
PagesOpt = Annotated[
    int | None,
    typer.Option(
        "--pages",
        help="Per-input pages only for the N inputs with the largest ablation effect "
        "|Δ top-k| (0: none), plus any --page-id; the index lists every input and says which "
        "have pages [default: a page for every input].",
    ),
]
PageIdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--page-id",
        help="Also write the page of the input with this id (repeat for more); alone, pages "
        "for the named inputs only [default: none].",
    ),
]
LinkOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--link",
        help="TEXT=URL: a link in every page's navigation (a path in the site, such as "
        "compare/index.html, or an http(s) address); repeat for more [default: none].",
    ),
]
TitleOpt = Annotated[
    str | None,
    typer.Option(help="Report title [default: from the model and the inputs]."),
]
TemplatesOpt = Annotated[
    Path | None,
    typer.Option(help="Folder of templates overriding the built-in ones [default: none]."),
]
KeysOpt = Annotated[
    bool,
    typer.Option(
        "--keys-as-rows",
        help="Heatmap rows are keys (as the reference figure) [default: off: queries].",
    ),
]
ProvenanceOpt = Annotated[
    str | None,
    typer.Option(
        help="What the report publishes of paths: relative (to the working directory) or "
        "full (absolute paths, the verbatim command) [default: relative]."
    ),
]
AblateLayersOpt = Annotated[
    bool,
    typer.Option(
        "--ablate-layers",
        help="Also ablate every head of one layer, each layer in turn (and with a flow metric "
        "knock the flow out in every head of one layer): layer-level evidence beside the "
        "heads', for 2 × layers more forward rows per input [default: off].",
    ),
]
PatchingOpt = Annotated[
    bool,
    typer.Option(
        "--patching",
        help="Attribution patching: each head's first-order estimated effect of patching it "
        "(see --patch-baseline) on log p(target), the top 3 checked by real patching (one "
        "extra forward and backward) [default: off].",
    ),
]
PatchBaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--patch-baseline",
        help="What --patching patches into a head: zero, mean (its mean output over every "
        'token of every input) or counterfactual (its output on each input\'s "counterfactual" '
        f"text, position by position){_default('patch_baseline')}.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or summary [default: off].")
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Write into a folder reportgen did not write (its files are kept); overwrite "
        "files in the way or edited since [default: off].",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks [default: off].")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted compute of the run folder (same inputs and settings, "
        "checked); nothing to do if it is complete [default: off].",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Compute only shard I of N of the inputs (I/N, 1-based) into --out; join the "
        "shards with `reportgen merge` [default: all the inputs].",
    ),
]
PrintConfigOpt = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the settings from the defaults, the config file (reportgen.toml, or "
        "[tool.reportgen] in pyproject.toml) and the command line, merged, and exit "
        "[default: off].",
    ),
]
InputsArg = Annotated[
    str,
    typer.Argument(
        help="Inputs: a .txt, .jsonl, .csv or .tsv file, or - for stdin; or a data set: a "
        ".parquet or .arrow file, a save_to_disk folder, or hf:NAME[:CONFIG] (the local "
        "Hugging Face cache)."
    ),
]
_DATA = "Data set inputs"
TextColOpt = Annotated[
    str | None,
    typer.Option(
        "--text-column", help="Data set column of the text [default: text].", rich_help_panel=_DATA
    ),
]
SegColOpt = Annotated[
    str | None,
    typer.Option(
        "--segments-column",
        help="Data set column of segments, a list of {name, text} as in .jsonl [default: none].",
        rich_help_panel=_DATA,
    ),
]
SegTemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--segments",
        help="Segments built from data set columns: NAME={column},NAME=text {column}, e.g. "
        "ENV={env},LAN={lan} [default: none].",
        rich_help_panel=_DATA,
    ),
]
TargetColOpt = Annotated[
    str | None,
    typer.Option(
        "--target-column",
        help="Data set column of the target [default: target or label, if there is one].",
        rich_help_panel=_DATA,
    ),
]
IdColOpt = Annotated[
    str | None,
    typer.Option(
        "--id-column",
        help="Data set column of the ids [default: id, if there is one].",
        rich_help_panel=_DATA,
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        help="Split of a data set folder or of hf:NAME, e.g. train [default: the only one].",
        rich_help_panel=_DATA,
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        help="Only the first N rows of the data set [default: every row].", rich_help_panel=_DATA
    ),
]
SampleOpt = Annotated[
    int | None,
    typer.Option(
        help="N rows of the data set chosen by --seed (the same rows for a seed, anywhere) "
        "[default: every row].",
        rich_help_panel=_DATA,
    ),
]


RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Compute on a Ray cluster: its address, auto (the running one) or local (start "
        "one here); the run folder must be on a file system every worker sees [default: no "
        "Ray].",
        rich_help_panel="Ray",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="Ray actors, each with one loaded model [default: as many as fit the cluster].",
        rich_help_panel="Ray",
    ),
]
GpusOpt = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-worker",
        help="GPUs per Ray actor [default: 1 if the cluster has GPUs, else 0].",
        rich_help_panel="Ray",
    ),
]
CpusOpt = Annotated[
    int | None,
    typer.Option(
        "--cpus-per-worker",
        help="CPUs (torch threads) per Ray actor [default: 1].",
        rich_help_panel="Ray",
    ),
]


def _source(inputs: str, options: dict[str, Any], seed: int) -> Any:
    """The inputs argument with the data set options: a `TableInputs` for a data set, the path
    as given otherwise (data set options refused for it)."""
    from reportgen.tables import TableInputs, is_table

    names = (
        "text_column", "segments_column", "segments", "target_column", "id_column", "split",
        "limit", "sample",
    )  # fmt: skip
    given = {k: options[k] for k in names if options.get(k) is not None}
    if inputs != "-" and is_table(inputs):
        return TableInputs(inputs, seed=seed, **given)
    if given:
        shown = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        _fail(
            f"{shown}: options of data set inputs (.parquet, .arrow, a save_to_disk folder or "
            f"hf:NAME), not of {inputs}"
        )
    return inputs


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


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


@app.command()
def build(
    ctx: typer.Context,
    inputs: InputsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Site folder.")] = Path("site"),
    run: Annotated[
        Path | None, typer.Option(help="Also keep the run folder here [default: not kept].")
    ] = None,
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
    ablate_layers: AblateLayersOpt = False,
    ablation: AblationOpt = None,
    effect: EffectOpt = None,
    patching: PatchingOpt = False,
    patch_baseline: PatchBaselineOpt = None,
    seed: SeedOpt = None,
    engine: EngineOpt = None,
    pairing: PairingOpt = None,
    max_memory: MemoryOpt = None,
    device_map: DeviceMapOpt = None,
    top_k: TopKOpt = None,
    store: StoreOpt = None,
    single_file: SingleOpt = None,
    pages: PagesOpt = None,
    page_id: PageIdOpt = None,
    link: LinkOpt = None,
    title: TitleOpt = None,
    templates: TemplatesOpt = None,
    keys_as_rows: KeysOpt = False,
    provenance: ProvenanceOpt = None,
    resume: ResumeOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    cpus_per_worker: CpusOpt = None,
    text_column: TextColOpt = None,
    segments_column: SegColOpt = None,
    segments: SegTemplateOpt = None,
    target_column: TargetColOpt = None,
    id_column: IdColOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    print_config: PrintConfigOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compute saliency for INPUTS and render the report site, in one go."""
    options = locals()
    with _errors(debug):
        settings = _settings(options, "build", print_config)
        source = _source(inputs, options, settings.seed)
        _check_ray_options(options)
        if ray is not None and run is None:
            _fail("--ray computes into --run RUN, which every worker must see; give --run RUN")
        progress = _Progress(settings.quiet)
        from reportgen.pipeline import build as run_build
        from reportgen.pipeline import shown_command

        command = shown_command(_invocation(ctx) + _configured(options), settings.provenance)
        if ray is not None and run is not None:
            from reportgen.integrations.ray import build as ray_build

            with progress:
                report = ray_build(
                    source,
                    out,
                    run,
                    settings,
                    render_progress=progress.render,
                    on_computed=progress.start_render,
                    resume=resume,
                    command=command,
                    **_ray_options(options),
                )
                progress.inputs = report.inputs
                progress.summary(report.site, report.single_file, report.tokens, size=report.size)
            return
        with progress:
            report = run_build(
                source,
                out,
                settings,
                command=command,
                run_dir=run,
                progress=progress.compute,
                render_progress=progress.render,
                on_loaded=progress.start_compute,
                resume=resume,
                on_loading=lambda: progress.loading(settings.model),
                on_warning=progress.warn,
            )
            progress.summary(report.site, report.single_file, report.tokens, size=report.size)


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
    ablate_layers: AblateLayersOpt = False,
    ablation: AblationOpt = None,
    effect: EffectOpt = None,
    patching: PatchingOpt = False,
    patch_baseline: PatchBaselineOpt = None,
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
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusOpt = None,
    cpus_per_worker: CpusOpt = None,
    text_column: TextColOpt = None,
    segments_column: SegColOpt = None,
    segments: SegTemplateOpt = None,
    target_column: TargetColOpt = None,
    id_column: IdColOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    print_config: PrintConfigOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compute saliency for INPUTS into a run folder (render it later with `render`).

    Results are kept as they come: after an interruption (Ctrl-C, a crash, a time limit),
    the same command with --resume continues where it stopped."""
    options = locals()
    with _errors(debug):
        settings = _settings(options, "compute", print_config)
        source = _source(inputs, options, settings.seed)
        _check_ray_options(options)
        if ray is not None and shard is not None:
            _fail("--ray and --shard: Ray computes every shard; give one of them")
        progress = _Progress(settings.quiet)
        from reportgen.pipeline import compute as run_compute
        from reportgen.pipeline import parse_shard, shown_command

        which = None if shard is None else parse_shard(shard)
        command = shown_command(_invocation(ctx) + _configured(options), settings.provenance)
        if ray is not None:
            from reportgen.integrations.ray import compute as ray_compute

            with progress:
                run = ray_compute(
                    source, out, settings, resume=resume, command=command, **_ray_options(options)
                )
                progress.inputs = len(run)
                tokens = sum(len(e.tokens) for e in run.entries)
                progress.summary(None, None, tokens, run_path=run.path)
            return
        with progress, _kept_on_failure(out):
            run = run_compute(
                source,
                out,
                settings,
                progress=progress.compute,
                command=command,
                on_loaded=progress.start_compute,
                resume=resume,
                shard=which,
                on_loading=lambda: progress.loading(settings.model),
                on_warning=progress.warn,
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
                f"{_plural(len(merged), 'input')} from {_plural(len(runs), 'shard')} in "
                f"{seconds:.1f} s; run folder: "
                f"{merged.path}",
                err=True,
            )


def _check_ray_options(options: dict[str, Any]) -> None:
    """The Ray options given without --ray are an error naming them."""
    if options["ray"] is not None:
        return
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("workers", "gpus_per_worker", "cpus_per_worker")
        if options[name] is not None
    ]
    if given:
        _fail(f"{', '.join(given)}: options of --ray; give --ray ADDRESS (or auto, local)")


def _ray_options(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `reportgen.integrations.ray.compute` from the Ray options."""
    return {
        "address": options["ray"],
        "workers": options["workers"],
        "gpus_per_worker": options["gpus_per_worker"],
        "cpus_per_worker": options["cpus_per_worker"],
    }


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
                f"{_plural(kept, 'result')} {'is' if kept == 1 else 'are'} kept in "
                f"{partial_folder(out)}: the same command with "
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
    pages: PagesOpt = None,
    page_id: PageIdOpt = None,
    link: LinkOpt = None,
    title: TitleOpt = None,
    templates: TemplatesOpt = None,
    keys_as_rows: KeysOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    print_config: PrintConfigOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Render a run folder into a static site."""
    options = locals()
    with _errors(debug):
        settings = _settings(options, "render", print_config)
        from reportgen.pipeline import render as run_render
        from reportgen.records import Run

        opened = Run.open(run)
        with _Progress(settings.quiet) as progress:
            progress.start_render(len(opened))
            report = run_render(
                opened, out, settings, progress=progress.render, on_warning=progress.warn
            )
            progress.summary(report.site, report.single_file, report.tokens, size=report.size)


@app.command()
def compare(
    inputs: InputsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Site folder.")] = Path("site"),
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="A model to compare (folder, or hub id ORG/NAME[@REV] in the "
            "local cache); repeat it, in order [default: none].",
        ),
    ] = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            help="A folder of checkpoints (sub-folders with a step number in their name, such "
            "as checkpoint-500), compared in step order before any --model [default: none]."
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="A label per model, in order [default: step or folder name]."),
    ] = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the models' run folders, reused when unchanged [default: OUT.runs]."
        ),
    ] = None,
    counterfactual: Annotated[
        str | None,
        typer.Option(
            help="swap:SEGMENT: each input's SEGMENT swapped in from another input, for the "
            'grounding information gain (inputs may instead give their own "counterfactual") '
            "[default: none]."
        ),
    ] = None,
    heat_input: Annotated[
        str | None,
        typer.Option(
            help="Id of the input drawn as token heatmaps per checkpoint (at most "
            "64 tokens) [default: the first input]."
        ),
    ] = None,
    method: MethodOpt = None,
    metric: MetricOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_tokens: MaxTokOpt = None,
    truncate: TruncOpt = False,
    ablate_k: AblateOpt = None,
    ablate_draws: DrawsOpt = None,
    ablate_layers: AblateLayersOpt = False,
    seed: SeedOpt = None,
    engine: EngineOpt = None,
    pairing: PairingOpt = None,
    max_memory: MemoryOpt = None,
    top_k: StoreTopKOpt = None,
    store: StoreOpt = None,
    single_file: SingleOpt = None,
    keys_as_rows: KeysOpt = False,
    title: TitleOpt = None,
    templates: TemplatesOpt = None,
    provenance: ProvenanceOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare models or training checkpoints on the same INPUTS: a run folder per model,
    and a site showing how heads change across them."""
    options = locals()
    with _errors(debug):
        settings = _settings(options, "compare")
        from reportgen.pipeline import compare as run_compare

        def say(text: str) -> None:
            if not settings.quiet:
                typer.echo(text, err=True)

        report = run_compare(
            inputs, out, models or [], checkpoints, labels or [], settings, runs, say,
            counterfactual, heat_input,
        )  # fmt: skip
        index = report.site / "index.html"
        one = f"; single file: {settings.single_file}" if settings.single_file else ""
        say(f"compared {report.inputs} inputs; site: {index}{one}; run folders: {report.run}")


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


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `compute`.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder to write the tables into, one file each."),
    ],
    format: Annotated[
        str, typer.Option("--format", "-f", help="csv, json or parquet (needs pyarrow).")
    ] = "csv",
    metric: Annotated[
        str | None,
        typer.Option(
            help="Head score of head_scores: total, prediction or flow:SRC->DST "
            "[default: the run's]."
        ),
    ] = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a run's head scores (per input and over the dataset), top cells and ablation
    results as tables: head_scores, dataset_head_scores, top_cells, ablation, and what the run
    records by layer: layer_relevance, layer_flows, layer_ablation, layer_tests (empty without
    it)."""
    with _errors(debug):
        from reportgen.export import export as run_export

        written = run_export(run, out, format, metric, force)
        if not quiet:
            typer.echo(f"wrote {', '.join(p.name for p in written)} in {out}", err=True)


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
        elif isinstance(value, (list, tuple)):  # a repeatable option: once per value, or not at all
            for item in value:
                parts += [max(param.opts, key=len), str(item)]
        else:
            parts += [max(param.opts, key=len), str(value)]
    return parts


_NOT_RECORDED = {"resume", "ray", "workers", "gpus_per_worker", "cpus_per_worker"}
"""Options that say how a command ran, not what it computed: left out of the recorded
command, so a resumed run records the command of the run it continues, and a run computed on
Ray the command that computes it in one process."""


def _parse_head(text: str | None, layers: int, heads: int) -> tuple[int, int] | None:
    if text is None:
        return None
    layer, dot, head = text.partition(".")
    if not (dot and layer.isdigit() and head.isdigit()):
        raise _UsageError(f"--head {text}: write it as LAYER.HEAD, e.g. 7.8 (1-based)")
    if not (1 <= int(layer) <= layers and 1 <= int(head) <= heads):
        raise _UsageError(f"--head {text}: the model has layers 1..{layers} and heads 1..{heads}")
    return int(layer) - 1, int(head) - 1


_SETTING_OPTIONS = {
    "model", "method", "aggregate", "metric", "steps", "batch_size", "device", "dtype",
    "max_tokens", "ablate_k", "ablate_draws", "ablation", "effect", "seed", "engine", "pairing",
    "patch_baseline", "max_memory", "device_map", "store", "provenance", "top_k", "single_file",
    "title", "templates", "pages",
}  # fmt: skip
_SETTING_FLAGS = {"truncate", "keys_as_rows", "quiet", "force", "patching", "ablate_layers"}
_RENDER_SETTINGS = {
    "top_k", "single_file", "title", "templates", "keys_as_rows", "quiet", "force", "pages",
}  # fmt: skip
"""What `render` takes from a config file (its --metric picks the metric a report shows, not
the run's: a config's `metric` is for computing)."""


def _settings(options: dict[str, Any], command: str, print_config: bool = False) -> Settings:
    """Settings from the defaults, then the config file of the working directory, then the
    command's options (only those given: not None/False). With --print-config, prints the
    merged result and exits."""
    from reportgen.config import find_config

    config = find_config(Path())  # the working directory's, named as typed: reportgen.toml
    given = {k: v for k, v in options.items() if k in _SETTING_OPTIONS and v is not None}
    given.update({k: True for k in _SETTING_FLAGS if options.get(k)})
    if options.get("page_id"):
        given["page_ids"] = tuple(options["page_id"])
    if options.get("link"):
        given["links"] = tuple(options["link"])
    from_file = dict(config.values)
    if command == "render":
        from_file = {k: v for k, v in from_file.items() if k in _RENDER_SETTINGS}
        metric = given.pop("metric", None)
        if metric is not None:
            given["report_metric"] = metric
    try:
        Settings().override(**from_file).validate()
    except ReportgenError as err:
        raise ConfigError(f"{config.where}: {err}") from None
    settings = Settings().override(**from_file).override(**given)
    if print_config:
        _print_config(settings, command, config.where, set(from_file), set(given))
        raise typer.Exit()
    return settings


def _configured(options: dict[str, Any]) -> list[str]:
    """The config file's settings that the command line did not override, as options: the
    recorded command (the about page's) must reproduce the run without the file."""
    from reportgen.config import find_config, key_name

    given = {k for k, v in options.items() if v is not None and v is not False}
    argv: list[str] = []
    for name, value in find_config(Path()).values.items():
        if name in given or name not in options:
            continue
        if isinstance(value, bool):
            argv += [f"--{key_name(name)}"] if value else []
        else:
            argv += [f"--{key_name(name)}", str(value)]
    return argv


def _print_config(
    settings: Settings, command: str, where: str, from_file: set[str], given: set[str]
) -> None:
    """The merged settings as TOML (what a reportgen.toml holding them says), each with where
    its value came from."""
    import json
    from dataclasses import fields

    from reportgen.config import KEYS, key_name
    from reportgen.data.metrics import Metric

    typer.echo(f"# reportgen {command}: defaults < {where} < command line")
    for name in (f.name for f in fields(Settings) if f.name in KEYS):
        if command == "render" and name not in _RENDER_SETTINGS:
            continue
        value = getattr(settings, name)
        source = "command line" if name in given else where if name in from_file else "default"
        if value is None:
            typer.echo(f"# {key_name(name)} is not set  # {source}")
            continue
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, int):
            shown = str(value)
        else:
            shown = json.dumps(value.name if isinstance(value, Metric) else str(value))
        typer.echo(f"{key_name(name)} = {shown}  # {source}")
    if command == "render" and settings.report_metric is not None:
        typer.echo(f"# the report shows metric {settings.report_metric.name}  # command line")


def _plural(count: int, word: str) -> str:
    """`1 input`, `2 inputs`."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


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
    """What a long command says on stderr, in steps: "loading model …", then progress bars on a
    terminal (transient), or a log line every `interval` seconds and at the end of each stage
    when stderr is not one; the summary comes after the bars have ended. Nothing when quiet."""

    def __init__(self, quiet: bool, interval: float = 10.0) -> None:
        self.quiet = quiet
        self.interval = interval
        self.started = time.perf_counter()
        self.inputs = 0
        self._loading: float | None = None
        self._summary: str | None = None
        self._logged: dict[Any, float] = {}

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
        self.live = not self.quiet and self.console.is_terminal
        self.bars = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.live,
        )
        self.bars.__enter__()
        self._compute_task: Any = None
        self._render_task: Any = None
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.bars.__exit__(kind, *exc)  # type: ignore[arg-type]
        if kind is None and self._summary is not None:
            typer.echo(self._summary, err=True)  # after the bars are gone, not over them

    def say(self, text: str) -> None:
        """One line of progress (above the bars while they run)."""
        if self.quiet:
            return
        if self.live:
            self.console.print(text, markup=False, highlight=False)
        else:
            typer.echo(text, err=True)

    def warn(self, text: str) -> None:
        self.say(f"warning: {text}")

    def loading(self, model: str | None) -> None:
        """Called when every check that needs no model has passed: torch loads from here."""
        from reportgen.engine import keep_freed_memory

        keep_freed_memory()  # before the model's memory is allocated (see its docstring)
        self._loading = time.perf_counter()
        self.say(f"loading model {model or 'reportgen/demo_model (the demo model)'} …")

    def _tick(self, task: Any, n: int) -> None:
        self.bars.advance(task, n)
        state = self.bars.tasks[task]
        elapsed = state.elapsed or 0
        rate = f"{state.completed / elapsed:.1f} inputs/s" if elapsed > 0 else ""
        self.bars.update(task, rate=rate)
        if self.live:
            return
        now = time.perf_counter()
        last = self._logged.get(task, self.started)
        done = state.total is not None and state.completed >= state.total
        if done or now - last >= self.interval:
            self._logged[task] = now
            total = int(state.total or 0)
            self.say(
                f"{state.description}: {int(state.completed)}/{_plural(total, 'input')}"
                + (f" ({rate})" if rate and not done else f" in {elapsed:.1f} s" if done else "")
            )

    def start_compute(self, total: int) -> None:
        if self._loading is not None:
            self.say(f"model loaded in {time.perf_counter() - self._loading:.1f} s")
        if total:
            self.say(f"computing {_plural(total, 'input')}")
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
        self,
        site: Path | None,
        single: Path | None,
        tokens: int,
        run_path: Path | None = None,
        size: int | None = None,
    ) -> None:
        """The last line, printed when the bars have ended (see __exit__)."""
        if self.quiet:
            return
        seconds = time.perf_counter() - self.started
        parts = [f"{_plural(self.inputs, 'input')} ({_plural(tokens, 'token')}) in {seconds:.1f} s"]
        if run_path is not None:
            parts.append(f"run folder: {run_path}")
        if site is not None:
            from reportgen.site.writer import size_text

            weight = "" if size is None else f"{size_text(size)}; "
            parts.append(f"site: {site} ({weight}open {site / 'index.html'} in a browser)")
        if single is not None:
            parts.append(f"single file: {single}")
        self._summary = "; ".join(parts)


def main() -> None:
    """Console-script entry point."""
    app()
