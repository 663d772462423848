"""The whole job as three functions: compute (inputs → run folder), render (run → site), build.

This is reportgen's Python API (re-exported by the package) and what the command line calls.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.data.examples import Example
from reportgen.data.metrics import check_metric
from reportgen.fsutil import check_outputs
from reportgen.inputs import examples_from_items, read_inputs
from reportgen.records import Run, RunInfo, RunWriter, timestamp
from reportgen.settings import Settings

if TYPE_CHECKING:
    from reportgen.engine import LoadedModel

Inputs = str | Path | Sequence[str | Mapping[str, Any]]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Report:
    """What a build produced: the run folder (None if not kept), the site and the single file."""

    run: Path | None
    site: Path
    single_file: Path | None = None
    inputs: int = 0
    tokens: int = 0

    def _repr_html_(self) -> str:
        """Notebooks show the single-file report inline (an iframe with `srcdoc`)."""
        from markupsafe import escape

        from reportgen.site import iframe_html

        if self.single_file is None:
            index = escape(str(self.site / "index.html"))
            return f"<p>reportgen site: <code>{index}</code> (pass single_file to show it here)</p>"
        return iframe_html(self.single_file)


def _input_path(inputs: Inputs) -> str | Path | None:
    """The input file, if the inputs are one (for the output checks)."""
    return inputs if isinstance(inputs, (str, Path)) else None


def load_examples(inputs: Inputs) -> list[Example]:
    """Examples from a path (file or `-`) or from a list of strings / dicts."""
    if isinstance(inputs, (str, Path)):
        return read_inputs(inputs)
    return examples_from_items(inputs)


def compute(
    inputs: Inputs,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    on_loaded: Callable[[int], None] | None = None,
) -> Run:
    """Compute saliency for `inputs` into the run folder `out`; returns the opened run.

    The settings and inputs are checked before the model loads (torch is imported only then),
    and everything that needs the model before its first pass."""
    settings = (settings or Settings()).validate()
    examples = load_examples(inputs)
    check_metric(settings.metric, examples)
    check_outputs(None, None, _input_path(inputs), Path(out), settings.force, run_option="--out")
    from reportgen.engine import compute as compute_saliency
    from reportgen.engine import load_model

    lm = load_model(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        device_map=settings.device_map,
        max_memory=settings.max_memory if settings.device_map else None,
    )
    if on_loaded is not None:
        on_loaded(len(examples))
    if command is None:
        command = equivalent_command(settings, inputs, out)
    info = run_info(lm, settings, command)
    with RunWriter(Path(out), info, force=settings.force) as writer:
        for result in compute_saliency(examples, lm, settings, progress):
            writer.add(result)
    return Run.open(out)


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
        attn_implementation=_attention_path(lm.fused_attention, settings.engine),
        dtype=settings.dtype,
        device=str(lm.device),
        method=settings.method,
        metric=settings.metric.name,
        parameters={
            "steps": settings.steps if settings.method == "attattr" else None,
            "batch_size": settings.batch_size,
            "max_tokens": settings.max_tokens or lm.max_tokens,
            "truncate": settings.truncate,
            "ablate_k": settings.ablate_k,
            "ablate_draws": settings.ablate_draws,
            "seed": settings.seed,
            "engine": settings.engine,
            "store": settings.store,
            "top_k": settings.top_k,
            "pairing": settings.pairing if lm.task.value == "encoder" else None,
            "reductions": "float64" if settings.dtype == "float64" else "float32",
            "torch_threads": torch.get_num_threads(),
        },
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


def _attention_path(fused: bool, engine: str) -> str:
    """How the run's attention was computed, for the about page."""
    if engine == "eager":
        own = "reportgen's fused softmax(q·kᵀ·scale + mask)·v" if fused else "the model's own"
        return f"{own} eager attention, every layer's weights kept (the dense reference engine)"
    if fused:
        return (
            "torch's scaled_dot_product_attention forward and backward (checked equal to the "
            "model's eager attention at load), the weights recomputed a block of query rows "
            "at a time for the saliency"
        )
    return (
        "the model's own eager attention (it computes more than the standard softmax), its "
        "weights reduced a block of query rows at a time"
    )


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


def equivalent_command(settings: Settings, inputs: object = None, out: object = None) -> str:
    """The command line that computes what `settings` say (for runs made through the API)."""
    defaults = Settings()
    argv: list[str] = ["compute", str(inputs) if isinstance(inputs, (str, Path)) else "INPUTS"]
    argv += ["--out", str(out) if out is not None else "RUN"]
    for name in (
        "model", "method", "metric", "steps", "batch_size", "device", "dtype", "engine",
        "pairing", "max_memory", "device_map", "store", "max_tokens", "ablate_k",
        "ablate_draws", "seed", "top_k",
    ):  # fmt: skip
        value = getattr(settings, name)
        if value != getattr(defaults, name):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if settings.truncate:
        argv.append("--truncate")
    return shown_command(argv, settings.provenance)


def shown_path(path: Path) -> str:
    """A model folder as the report shows it: the demo model as `reportgen/demo_model`, a folder
    under the working directory relative to it, a hub cache snapshot as `hub:ORG/NAME@REV`, and
    anything else by its last two parts (a report is shared; a home folder's name is not)."""
    from reportgen.engine import demo_model_path

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


def render(
    run: str | Path | Run,
    out: str | Path,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> Report:
    """Render a run folder into a static site at `out` (and the single file, if asked)."""
    from reportgen.site import render_site

    settings = (settings or Settings()).validate()
    opened = run if isinstance(run, Run) else Run.open(run)
    site = render_site(opened, Path(out), settings, progress)
    tokens = sum(len(e.tokens) for e in opened.entries)
    return Report(opened.path, site, settings.single_file, len(opened), tokens)


def build(
    inputs: Inputs,
    out: str | Path = "site",
    settings: Settings | None = None,
    run_dir: str | Path | None = None,
    progress: Progress | None = None,
    render_progress: Progress | None = None,
    command: str | None = None,
    on_loaded: Callable[[int], None] | None = None,
) -> Report:
    """Compute and render in one go. The run folder is kept only when `run_dir` is given."""
    import tempfile

    settings = (settings or Settings()).validate()
    check_outputs(
        Path(out),
        settings.single_file,
        _input_path(inputs),
        run_dir and Path(run_dir),
        settings.force,
    )
    if run_dir is not None:
        run = compute(inputs, run_dir, settings, progress, command, on_loaded)
        return render(run, out, settings, render_progress)
    with tempfile.TemporaryDirectory(prefix="reportgen-run-") as tmp:
        run = compute(inputs, Path(tmp) / "run", settings, progress, command, on_loaded)
        report = render(run, out, settings, render_progress)
    return replace(report, run=None)
