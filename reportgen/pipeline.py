"""The whole job as three functions: compute (inputs → run folder), render (run → site), build.

This is reportgen's Python API (re-exported by the package) and what the command line calls.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.data.examples import Example
from reportgen.data.metrics import check_discriminates, check_metric, parse_metric
from reportgen.errors import OutputError, SettingsError
from reportgen.fsutil import check_outputs
from reportgen.inputs import examples_from_items, read_inputs
from reportgen.modelpath import demo_model_path, resolve_model_path
from reportgen.records import (
    InputsInfo,
    PartialRun,
    Run,
    RunInfo,
    RunWriter,
    ShardInfo,
    info_differences,
    inputs_digest,
    is_run,
    merge_shards,
    partial_count,
    partial_folder,
    partial_state,
    timestamp,
)
from reportgen.settings import Settings
from reportgen.tables import TableInputs, read_table

if TYPE_CHECKING:
    from reportgen.engine import LoadedModel

Inputs = str | Path | TableInputs | Sequence[str | Mapping[str, Any]] | Sequence[Example]
"""A file (or `-`), a data set (`TableInputs`), Python values shaped like .jsonl lines, or
examples already read (`load_examples`)."""
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Report:
    """What a build produced: the run folder, the site and the single file (paths given as
    `str` are taken as `Path`s).

    A `build` without `run_dir` computes its run in a temporary folder that lives as long as
    the Report (and is deleted with it, or when the interpreter exits): `run` points there, so
    `log_report(report, include_run=True)` works; pass `run_dir` to keep the run."""

    run: Path | None
    site: Path
    single_file: Path | None = None
    inputs: int = 0
    tokens: int = 0
    size: int | None = None
    """The site's size in bytes (its single file too, when inside it)."""
    _temporary: Any = field(default=None, repr=False, compare=False)
    """The temporary folder holding `run`, if the build made one (see _TemporaryFolder)."""
    settings: Settings | None = field(default=None, repr=False, compare=False)
    """The settings the site was rendered with (a notebook renders the same report inline)."""

    def __post_init__(self) -> None:
        for name in ("run", "site", "single_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    def _repr_html_(self) -> str:
        """Notebooks show the report inline: its single file in an iframe with `srcdoc`, sized
        to the report; without one, the same report rendered as one from the run folder (with
        the site's settings)."""
        import tempfile

        from markupsafe import escape

        from reportgen.site import iframe_html, render_single_file

        if self.single_file is not None:
            return iframe_html(self.single_file)
        if self.run is None:
            index = escape(str(self.site / "index.html"))
            return f"<p>reportgen site: <code>{index}</code> (no run folder to show it here)</p>"
        settings = replace(self.settings or Settings(), single_file=None, force=True, quiet=True)
        with tempfile.TemporaryDirectory(prefix="reportgen-show-") as tmp:
            shown = render_single_file(Run.open(self.run), Path(tmp) / "report.html", settings)
            return iframe_html(shown)


class _TemporaryFolder:
    """A temporary folder removed when the last Report holding it is garbage-collected, or when
    the interpreter exits (weakref.finalize: quietly, unlike TemporaryDirectory's warning)."""

    def __init__(self) -> None:
        import shutil
        import tempfile
        import weakref

        self.path = Path(tempfile.mkdtemp(prefix="reportgen-run-"))
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cleanup(self) -> None:
        self._remove()


def _input_path(inputs: Inputs) -> str | Path | None:
    """The input file, if the inputs are one (for the output checks)."""
    if isinstance(inputs, TableInputs):
        return inputs.path
    return inputs if isinstance(inputs, (str, Path)) else None


def load_examples(inputs: Inputs) -> list[Example]:
    """Examples from a path (file or `-`), a data set, or a list of strings / dicts; a list of
    examples (read before, e.g. by a driver handing them to workers) is taken as it is."""
    if isinstance(inputs, TableInputs):
        return read_table(inputs)
    if isinstance(inputs, (str, Path)):
        return read_inputs(inputs)
    items = list(inputs)
    if items and all(isinstance(x, Example) for x in items):
        return items  # type: ignore[return-value]
    return examples_from_items(items)  # type: ignore[arg-type]


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` as (I, N): shard I (1-based) of N."""
    index, slash, count = text.partition("/")
    if not (slash and index.strip().isdigit() and count.strip().isdigit()):
        raise SettingsError(f"--shard {text}: write it as I/N, e.g. 2/8 (the 2nd of 8 shards)")
    i, n = int(index), int(count)
    if n < 1 or not 1 <= i <= n:
        raise SettingsError(
            f"--shard {text}: shards are numbered 1 to N (with N at least 1), e.g. 1/{max(n, 1)}; "
            "with a SLURM array, use --array=1-N"
        )
    return i, n


def compute(
    inputs: Inputs,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    on_loaded: Callable[[int], None] | None = None,
    *,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    model: LoadedModel | None = None,
    on_loading: Callable[[], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Run:
    """Compute saliency for `inputs` into the run folder `out`; returns the opened run.

    The settings and inputs are checked before the model loads (torch is imported only then),
    and everything that needs the model before its first pass. Results go to a partial run
    beside `out` as they come (see `reportgen.records`), so an interrupted compute continues
    with `resume=True`: the same inputs and settings (checked; a difference is an error naming
    it), the results already written kept, the rest computed; the run folder is then the one an
    uninterrupted compute writes, byte for byte. `resume` on a complete run with the same
    inputs and settings does nothing; where nothing was interrupted, it computes everything.
    `shard=(i, n)` computes only the i-th of n shards of the inputs (`merge` joins them).
    `model` is a model already loaded with the same settings (a worker computing many shards).
    `on_loading` is called when every check that needs no model has passed, just before the
    model loads (the first import of torch): the command line says "loading model" there.
    `on_warning` receives what the user should know but is no error (inputs with words the
    tokenizer does not know); without it, warnings go to the `reportgen` logger."""
    settings = (settings or Settings()).validate()
    check_discriminates(settings.method, settings.metric)
    examples = load_examples(inputs)
    check_metric(settings.metric, examples)
    check_outputs(None, None, _input_path(inputs), Path(out), settings.force, run_option="--out")
    digest = inputs_digest(examples)
    job = _job_settings(settings)
    waiting = partial_state(out)
    if waiting is not None and not resume and not settings.force:
        raise OutputError(
            f"{out}: an interrupted compute left {partial_count(out)} of its inputs in "
            f"{partial_folder(out)}; add --resume to continue it, or --force to start over"
        )
    complete = None
    if resume and waiting is not None:
        _check_resumable(out, waiting, digest, shard, job)
    elif resume and is_run(Path(out)):
        complete = Run.open(out)
        _check_complete(complete, digest, shard)
    if model is None:
        resolve_model_path(settings.model)  # a missing folder is reported before torch loads
        if on_loading is not None:
            on_loading()
        from reportgen.engine import load_model

        lm = load_model(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            device_map=settings.device_map,
            max_memory=settings.max_memory if settings.device_map else None,
        )
    else:
        lm = model
    if command is None:
        command = equivalent_command(settings, inputs, out)
    info = run_info(lm, settings, command)
    unknown = unknown_tokens(examples, lm, settings)  # before the partial run is claimed
    if unknown:
        (on_warning or logging.getLogger("reportgen").warning)(unknown)
    if complete is not None:
        _refuse_differences(out, complete.info, info, "is a complete run")
        if on_loaded is not None:
            on_loaded(0)
        return complete
    partial = PartialRun.claim(out)
    try:
        state = partial.state if resume else None
        if state is not None:
            _check_resumable(out, state, digest, shard, job)
            started = RunInfo(**state["run"])
            _refuse_differences(out, started, info, "was started")
            info = started  # the run as it started: its command and start time
        lengths = _lengths(examples, lm, settings) if shard is not None else None
        placed = None if shard is None else shard_range(lengths or [], lm, settings, *shard)
        first, last = (0, len(examples)) if placed is None else (placed.first, placed.last)
        if state is None:
            partial.start(
                {
                    "run": asdict(info),
                    "inputs": asdict(digest),
                    "shard": None if placed is None else asdict(placed),
                    "settings": job,
                }
            )
        else:
            ids = (ex.id for ex in examples[first:last])
            valid = partial.prefix(ids)
            if 0 < valid < last - first:
                lengths = lengths or _lengths(examples, lm, settings)
                valid = _window_start(lengths[first:last], valid, lm, settings)
            partial.keep(valid, (ex.id for ex in examples[first:last]))
    except BaseException:
        partial.release(remove=state is None)
        raise
    todo = examples[first + partial.kept : last]
    if on_loaded is not None:
        on_loaded(len(todo))
    from reportgen.engine import compute as compute_saliency

    with RunWriter(
        Path(out), info, force=settings.force, inputs=digest, shard=placed, partial=partial
    ) as writer:
        for result in compute_saliency(todo, lm, settings, progress, pool=examples):
            writer.add(result)
    return Run.open(out)


def _job_settings(settings: Settings) -> dict[str, Any]:
    """The options that decide a run's results, by option name: a resumed run must have the
    same. (--model is compared by its weights once loaded, the device once resolved;
    --max-memory may change, e.g. to resume after running out of memory.)"""
    return {
        "--method": settings.method,
        "--metric": settings.metric.name,
        "--steps": settings.steps,
        "--batch-size": settings.batch_size,
        "--dtype": settings.dtype,
        "--engine": settings.engine,
        "--pairing": settings.pairing,
        "--store": settings.store,
        "--max-tokens": settings.max_tokens,
        "--truncate": settings.truncate,
        "--ablate-k": settings.ablate_k,
        "--ablate-draws": settings.ablate_draws,
        "--ablate-layers": settings.ablate_layers or None,  # None: as runs from before it
        "--ablation": settings.ablation,
        "--effect": settings.effect,
        "--patch-baseline": settings.patch_baseline if settings.patching else None,
        "--seed": settings.seed,
        "--top-k": settings.top_k,
        "--title": settings.title,
    }


def _check_resumable(
    out: str | Path,
    state: Mapping[str, Any],
    digest: InputsInfo,
    shard: tuple[int, int] | None,
    job: Mapping[str, Any],
) -> None:
    """A resumed run has the interrupted run's inputs, shard and settings (before the model
    loads); SettingsError naming every difference otherwise."""
    found: list[str] = []
    then = state.get("inputs") or {}
    if then != asdict(digest):
        found.append(_inputs_difference(then, digest))
    was = state.get("shard")
    was_shard = None if was is None else (was.get("index"), was.get("count"))
    if was_shard != shard:
        found.append(f"--shard: {_shard_text(was_shard)} then, {_shard_text(shard)} now")
    settings = state.get("settings") or {}
    for option in dict.fromkeys([*settings, *job]):
        was_value, value = settings.get(option), job.get(option)
        if was_value != value:
            found.append(f"{option}: {_shown(was_value)} then, {_shown(value)} now")
    if found:
        raise SettingsError(
            f"--resume: {out} was started with other inputs or settings: {'; '.join(found)}; "
            "resume with the same ones, or drop --resume and pass --force to start over"
        )


def _check_complete(run: Run, digest: InputsInfo, shard: tuple[int, int] | None) -> None:
    found = []
    if run.inputs is not None and run.inputs != digest:
        found.append(_inputs_difference(asdict(run.inputs), digest))
    was = None if run.shard is None else (run.shard.index, run.shard.count)
    if was != shard:
        found.append(f"--shard: {_shard_text(was)} then, {_shard_text(shard)} now")
    if found:
        raise SettingsError(
            f"--resume: {run.path} is a complete run of other inputs: {'; '.join(found)}; drop "
            "--resume to replace it"
        )


def _refuse_differences(out: str | Path, then: RunInfo, now: RunInfo, what: str) -> None:
    found = info_differences(then, now)
    if found:
        shown = "; ".join(f"{label}: {x} then, {y} now" for label, x, y in found)
        raise SettingsError(
            f"--resume: {out} {what} with another model or settings ({then.model}): {shown}; "
            "resume with the same ones, or drop --resume and pass --force to start over"
        )


def _inputs_difference(then: Mapping[str, Any], now: InputsInfo) -> str:
    count = then.get("count")
    if count != now.count:
        return f"the inputs: {count} then, {now.count} now"
    sha = str(then.get("sha256", ""))[:12]
    return f"the inputs: their content changed (SHA-256 {sha}… then, {now.sha256[:12]}… now)"


def _shard_text(shard: object) -> str:
    return "none" if not isinstance(shard, tuple) else f"{shard[0]}/{shard[1]}"


def _shown(value: object) -> str:
    return "not given" if value is None else str(value)


def unknown_tokens(examples: Sequence[Example], lm: LoadedModel, settings: Settings) -> str:
    """A warning naming how many tokens of the inputs the tokenizer does not know (the model
    reads its unknown token there, e.g. [UNK]), with an example word; empty if none."""
    from reportgen.engine.encoding import encode

    unknown = tokens = inputs = 0
    example = ""
    for ex in examples:
        encoded = encode(ex, lm, settings.max_tokens, settings.truncate, settings.pairing)
        tokens += len(encoded.ids)
        if encoded.unknown:
            unknown += len(encoded.unknown)
            inputs += 1
            example = example or f"'{encoded.unknown[0].text}' in input '{ex.id}' ({ex.source})"
    if not unknown:
        return ""
    unk = lm.tokenizer.unk_token
    many = "inputs" if len(examples) != 1 else "input"
    return (
        f"{unknown} of {tokens} tokens in {inputs} of {len(examples)} {many} are not in the "
        f"model's vocabulary and read as {unk}, e.g. {example}; the report labels them {unk}"
    )


def _lengths(examples: Sequence[Example], lm: LoadedModel, settings: Settings) -> list[int]:
    """Every input's length in tokens, as the engine encodes it (what its batching uses)."""
    from reportgen.engine.encoding import encode

    return [
        len(encode(ex, lm, settings.max_tokens, settings.truncate, settings.pairing).ids)
        for ex in examples
    ]


def _window_starts(lengths: Sequence[int], lm: LoadedModel, settings: Settings) -> list[int]:
    from reportgen.engine.runner import windows

    return [first for first, _ in windows(lengths, lm, settings.batch_size, settings.store)]


def _window_start(lengths: Sequence[int], done: int, lm: LoadedModel, settings: Settings) -> int:
    """The start of the engine's window that holds input `done`: a resumed run restarts there,
    so that every batch is the one an uninterrupted run computes (a batch's padding changes the
    float rounding of its inputs' results)."""
    return max(s for s in _window_starts(lengths, lm, settings) if s <= done)


def shard_range(
    lengths: Sequence[int], lm: LoadedModel, settings: Settings, index: int, count: int
) -> ShardInfo:
    """Shard `index` of `count` (1-based): a contiguous run of the engine's windows, balanced
    by tokens. Whole windows, so that each batch is the one a single run computes and the
    merged shards equal it byte for byte; a window's tokens go to the shard their middle falls
    in, so a shard may be empty when there are fewer windows than shards."""
    starts = _window_starts(lengths, lm, settings)
    bounds = [*starts, len(lengths)]
    total = sum(lengths) or 1
    firsts = [len(lengths)] * (count + 1)
    done = 0
    for w, start in enumerate(starts):
        tokens = sum(lengths[start : bounds[w + 1]])
        owner = min(count - 1, int((done + tokens / 2) * count / total))
        for k in range(owner + 1):
            firsts[k] = min(firsts[k], start)
        done += tokens
    firsts[0] = 0
    return ShardInfo(index, count, firsts[index - 1], firsts[index])


def recorded_parameters(
    settings: Settings, task: str, max_tokens: int | None, torch_threads: int | None
) -> dict[str, Any]:
    """The parameters a run's manifest records (`run_info`), from its settings, the model's
    task and token limit and torch's thread count; torch-free, so that `compare` asks of a run
    folder exactly what computing it again would record."""
    return {
        "steps": settings.steps if settings.method == "attattr" else None,
        "batch_size": settings.batch_size,
        "max_tokens": max_tokens,
        "truncate": settings.truncate,
        "ablate_k": settings.ablate_k,
        "ablate_draws": settings.ablate_draws,
        "ablation": settings.ablation if settings.ablate_k else None,
        "effect": settings.effect if settings.ablate_k else None,
        "seed": settings.seed,
        "engine": settings.engine,
        "store": settings.store,
        "top_k": settings.top_k,
        "pairing": settings.pairing if task == "encoder" else None,
        "reductions": "float64" if settings.dtype == "float64" else "float32",
        "torch_threads": torch_threads,
        # Only where it is not the default, so runs from before the option read the same.
        **({"aggregate": settings.aggregate} if settings.aggregate != "heads" else {}),
        **({"patching": settings.patch_baseline} if settings.patching else {}),
        **({"ablate_layers": True} if settings.ablate_layers and settings.ablate_k else {}),
        # Resample ablation took the donor's mean over its tokens before it took its output
        # at each position: a run recorded without this key is not resumed or reused as one.
        **(
            {"resample": "by-position"}
            if settings.ablation == "resample" and settings.ablate_k
            else {}
        ),
    }


def run_info(lm: LoadedModel, settings: Settings, command: str | None) -> RunInfo:
    """The manifest's description of a run: model, versions, method and parameters."""
    import torch
    import transformers

    from reportgen import __version__

    return RunInfo(
        model=lm.name if settings.provenance == "full" else _shown_name(lm.name),
        model_path=str(lm.path) if settings.provenance == "full" else shown_path(lm.path),
        weights_sha256=lm.weights_sha256,
        architecture=lm.architecture,
        task=lm.task.value,
        num_layers=lm.num_layers,
        num_heads=lm.num_heads,
        attn_implementation=_attention_path(
            lm.fused_attention, settings.engine, lm.fused_activations
        ),
        dtype=settings.dtype,
        device=str(lm.device),
        method=settings.method,
        metric=settings.metric.name,
        parameters=recorded_parameters(
            settings, lm.task.value, settings.max_tokens or lm.max_tokens, torch.get_num_threads()
        ),
        versions={
            "reportgen": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        command=command if command is not None else equivalent_command(settings),
        created=timestamp(),
        title=settings.title or "",
    )


def _attention_path(fused: bool, engine: str, activations: int = 0) -> str:
    """How the run's attention was computed, for the about page (and the MLPs' activation,
    where `fuse_activations` replaced it)."""
    if engine == "eager":
        own = "reportgen's fused softmax(q·kᵀ·scale + mask)·v" if fused else "the model's own"
        path = f"{own} eager attention, every layer's weights kept (the dense reference engine)"
    elif fused:
        path = (
            "torch's scaled_dot_product_attention forward and backward (checked equal to the "
            "model's eager attention at load), the weights recomputed a block of query rows "
            "at a time for the saliency"
        )
    else:
        path = (
            "the model's own eager attention (it computes more than the standard softmax), its "
            "weights reduced a block of query rows at a time"
        )
    if activations:
        path += (
            f"; its {activations} tanh GELUs (gelu_new) as torch's fused kernel of the same "
            "function (checked equal at load)"
        )
    return path


def _shown_name(name: str) -> str:
    """A model's name as a shared report shows it: a path like `shown_path`, a hub id as is."""
    path = Path(name).expanduser()
    return shown_path(path) if path.is_absolute() or path.exists() else name


def shown_command(argv: Sequence[str], provenance: str = "relative") -> str:
    """The command line as a report shows it, ready to paste: paths relative to the working
    directory (or shortened as `shown_path` does), unless `provenance` is `full`."""
    import shlex

    shown = []
    for arg in argv:
        path = Path(arg).expanduser()
        if (
            provenance != "full"
            and arg
            and not arg.startswith("-")
            and (path.is_absolute() or path.exists())
        ):
            arg = shown_path(path)
        shown.append(shlex.quote(arg))
    return " ".join(["reportgen", *shown])


def equivalent_command(
    settings: Settings,
    inputs: object = None,
    out: object = None,
    command: str = "compute",
    run_dir: object = None,
) -> str:
    """The command line that computes what `settings` say (for runs made through the API):
    `compute`, or `build` with its site and single-file options; inputs given as a list (not a
    file) are written INPUTS."""
    defaults = Settings()
    if isinstance(inputs, TableInputs):
        source = inputs.argv()
    else:
        source = [str(inputs) if isinstance(inputs, (str, Path)) else "INPUTS"]
    argv: list[str] = [command, *source]
    argv += ["--out", str(out) if out is not None else "RUN" if command == "compute" else "SITE"]
    if command == "build" and run_dir is not None:
        argv += ["--run", str(run_dir)]
    names = [
        "model", "method", "aggregate", "metric", "steps", "batch_size", "device", "dtype",
        "engine", "pairing", "max_memory", "device_map", "store", "max_tokens", "ablate_k",
        "ablate_draws", "ablation", "effect", "patch_baseline", "seed", "top_k",
    ]  # fmt: skip
    if command == "build":
        names += ["single_file", "pages", "title", "templates"]
    for name in names:
        value = getattr(settings, name)
        if value != getattr(defaults, name):
            shown = value.name if name == "metric" else str(value)
            argv += [f"--{name.replace('_', '-')}", shown]
    if settings.truncate:
        argv.append("--truncate")
    if settings.patching:
        argv.append("--patching")
    if settings.ablate_layers:
        argv.append("--ablate-layers")
    if command == "build" and settings.keys_as_rows:
        argv.append("--keys-as-rows")
    if command == "build":
        for id_ in settings.page_ids:
            argv += ["--page-id", id_]
        for link in settings.links:
            argv += ["--link", link]
    if settings.provenance != defaults.provenance:
        argv += ["--provenance", settings.provenance]
    return shown_command(argv, settings.provenance)


def shown_path(path: Path) -> str:
    """A model folder as the report shows it: the demo model as `reportgen/demo_model`, a folder
    under the working directory relative to it, a hub cache snapshot as `hub:ORG/NAME@REV`, and
    anything else by its last two parts (a report is shared; a home folder's name is not)."""
    if Path(path).resolve() == demo_model_path().resolve():
        return "reportgen/demo_model"
    path = Path(os.path.abspath(path))  # symlinks kept: the path as the user gave it
    for cwd in dict.fromkeys((Path(os.path.abspath(os.getcwd())), Path.cwd().resolve())):
        try:
            return path.relative_to(cwd).as_posix() or "."
        except ValueError:
            pass
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        repo = parts[-3][len("models--") :].replace("--", "/")
        return f"hub:{repo}@{parts[-1][:12]}"
    return "…/" + "/".join(parts[-2:])


def merge(
    runs: Sequence[str | Path | Run],
    out: str | Path,
    force: bool = False,
    command: str | None = None,
) -> Run:
    """Join the shards of one run (computed with `shard=(i, n)`, on any machines) into the run
    folder `out`, in input order; see `reportgen.records.merge_shards`."""
    opened = [r if isinstance(r, Run) else Run.open(r) for r in runs]
    if command is None:
        command = shown_command(["merge", *(str(r.path) for r in opened), "--out", str(out)])
    return merge_shards(opened, out, command, force)


def render(
    run: str | Path | Run,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Report:
    """Render a run folder into a static site at `out` (and the single file, if asked); a site
    over GitHub Pages' 1 GB calls `on_warning` (default: a Python warning) with its size."""
    from reportgen.site import render_site
    from reportgen.site.writer import SiteSize

    settings = (settings or Settings()).validate()
    opened = run if isinstance(run, Run) else Run.open(run)
    shown = settings.report_metric or parse_metric(opened.info.metric)
    check_discriminates(opened.info.method, shown)
    size = SiteSize()
    site = render_site(
        opened, Path(out), settings, progress, on_warning=on_warning or _warn, size=size
    )
    tokens = sum(len(e.tokens) for e in opened.entries)
    return Report(
        opened.path, site, settings.single_file, len(opened), tokens, size.bytes, settings=settings
    )


def _warn(text: str) -> None:
    import warnings

    warnings.warn(text, stacklevel=3)


def build(
    inputs: Inputs,
    out: str | Path = "site",
    settings: Settings | None = None,
    run_dir: str | Path | None = None,
    progress: Progress | None = None,
    render_progress: Progress | None = None,
    command: str | None = None,
    on_loaded: Callable[[int], None] | None = None,
    resume: bool = False,
    on_loading: Callable[[], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Report:
    """Compute and render in one go. The run folder is kept at `run_dir` if given (and then
    `resume` continues an interrupted compute of it, as `compute` does); else in a temporary
    folder that lives as long as the returned Report (see `Report`)."""
    settings = (settings or Settings()).validate()
    if resume and run_dir is None:
        raise SettingsError("--resume continues the run folder of --run; give --run RUN")
    check_outputs(
        Path(out),
        settings.single_file,
        _input_path(inputs),
        run_dir and Path(run_dir),
        settings.force,
    )
    if command is None:
        command = equivalent_command(settings, inputs, out, "build", run_dir)
    if run_dir is not None:
        run = compute(
            inputs,
            run_dir,
            settings,
            progress,
            command,
            on_loaded,
            resume=resume,
            on_loading=on_loading,
            on_warning=on_warning,
        )
        return render(run, out, settings, render_progress, on_warning)
    temporary = _TemporaryFolder()
    try:
        folder = temporary.path / "run"
        run = compute(
            inputs,
            folder,
            settings,
            progress,
            command,
            on_loaded,
            on_loading=on_loading,
            on_warning=on_warning,
        )
        report = render(run, out, settings, render_progress, on_warning)
    except BaseException:
        temporary.cleanup()
        raise
    return replace(report, _temporary=temporary)


def compare(
    inputs: Inputs,
    out: str | Path = "site",
    models: Sequence[str] = (),
    checkpoints: str | Path | None = None,
    labels: Sequence[str] = (),
    settings: Settings | None = None,
    runs: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    counterfactual: str | None = None,
    heat_input: str | None = None,
) -> Report:
    """Compare models (or the checkpoints in `checkpoints`) on the same inputs: a run folder
    per model under `runs` (reused when its weights and settings match), and a comparison
    site at `out`, with each model's grounding information gain if the inputs have a
    `counterfactual` or `counterfactual` is `swap:SEGMENT`, and input `heat_input`'s (the
    first's if None) token heatmaps per checkpoint; see `reportgen.comparison`."""
    from reportgen.comparison import compare as run_compare

    return run_compare(
        inputs, out, models, checkpoints, labels, settings, runs, progress, counterfactual,
        heat_input,
    )  # fmt: skip
