"""All of reportgen's options, with their defaults in one place.

The command line, the Python API and the tests build a `Settings` and pass it down the pipeline;
a stage reads only the fields it needs. Values are parsed once, here: `metric` becomes a
`Metric`, paths (given as `str` or `Path`) become `Path`s, and `validate()` checks every range
before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from reportgen.data.methods import AGGREGATES, parse_method
from reportgen.data.metrics import Metric, parse_metric
from reportgen.data.results import EFFECTS, INTERVENTIONS, PATCH_BASELINES
from reportgen.errors import SettingsError

TOTAL = Metric("total")
DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
PAIRINGS = ("separate", "joint")
ENGINES = ("tiled", "eager")
STORES = ("top-k", "dense", "dense-float16")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str) -> int:
    """Bytes in a size such as `8GiB`, `500MB`, `1.5GB` or `1024` (bytes)."""
    import re

    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = found.group(2).upper() if found else ""
    if not found or unit not in _UNITS or float(found.group(1)) <= 0:
        raise SettingsError(
            f"--max-memory: '{text}' is not a size; write it like 8GiB, 500MB or 1.5GB"
        )
    return int(float(found.group(1)) * _UNITS[unit])


def parse_memory(text: str) -> dict[str, int]:
    """`--max-memory` as bytes per device: `{"": n}` for a single size, else by device name
    (`cuda:0=20GiB,cpu=64GiB`; `cuda` means `cuda:0`)."""
    if "=" not in text:
        return {"": parse_size(text)}
    out: dict[str, int] = {}
    for part in text.split(","):
        device, eq, size = part.partition("=")
        device = device.strip().lower()
        if not eq or not device:
            raise SettingsError(
                f"--max-memory: '{part}' should be DEVICE=SIZE, e.g. cuda:0=20GiB,cpu=64GiB"
            )
        out["cuda:0" if device == "cuda" else device] = parse_size(size)
    return out


@dataclass(frozen=True)
class Settings:
    """Options of one reportgen job (compute, render or both)."""

    model: str | None = None
    """Local folder or hub id (resolved from the local cache); None means the demo model (a
    `Path` is taken as its string)."""
    method: str = "attn-grad"
    """Saliency method: attn-grad, attention, attattr, attn-norm, rollout or grad-rollout."""
    aggregate: str = "heads"
    """attn-grad's aggregation: `heads` (each head's |A ⊙ ∂L/∂A|) or `wang` (also Wang et
    al. 2023's per-layer flow: heads summed before the magnitude, the diagonal excluded, each
    group of token pairs averaged over its pairs; tiled engine)."""
    metric: Metric = TOTAL
    """Head score shown in the grid: total, prediction or flow:SRC->DST (a string is parsed)."""
    engine: str = "tiled"
    """`tiled`: attention × gradient from the fast kernel's forward and backward, the attention
    recomputed a block of query rows at a time (memory linear in T); `eager`: the dense
    reference, every layer's T × T attention and gradient kept (memory quadratic in T)."""
    report_metric: Metric | None = None
    """The metric a report shows (`render --metric`, any metric: a run holds them all); None
    means the run's own."""
    steps: int = 20
    """Integration steps m of attattr (alpha = k/m, k = 1..m)."""
    batch_size: int = 8
    """Inputs per forward/backward pass."""
    device: str = "auto"
    """cpu, cuda, mps or auto (the best available)."""
    dtype: str = "float32"
    """float32, bfloat16, float16 or float64."""
    pairing: str = "separate"
    """How a bare encoder reads an input's two segments: `separate` (each on its own, as a
    sentence-embedding bi-encoder is used) or `joint` (one sequence, a cross-encoder)."""
    max_memory: str | None = None
    """Memory the computation may use: one size (`8GiB`, `500MB`) for the compute device, or
    per device for --device-map (`cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB`); batches and tiles are
    sized from it. None: half the memory the device has free when the model has loaded."""
    device_map: str | None = None
    """`auto` spreads a model larger than one device over every GPU, the CPU and disk (with
    accelerate, within --max-memory per device); None puts it on --device."""
    store: str = "top-k"
    """What the run folder keeps of S: `top-k` (the exact reductions and each head's top-k
    cells) or `dense` (also every cell, float32) or `dense-float16`."""
    max_tokens: int | None = None
    """Longest input allowed, in tokens; None means the model's own limit."""
    truncate: bool = False
    """Cut over-long inputs to max_tokens instead of failing."""
    ablate_k: int = 3
    """Heads zeroed by the ablation check (top-k of the grid, and k random heads); 0 skips it."""
    patching: bool = False
    """Attribution patching: every head's first-order estimated change in log p(target) when
    its output is patched (one extra forward and backward), the top 3 checked by real patching."""
    patch_baseline: str = "zero"
    """What --patching patches into a head: `zero`, `mean` (its mean output over every token
    of every input of the run) or `counterfactual` (its output, position by position, on the
    input's `counterfactual` text, which every input then gives)."""
    ablate_draws: int = 8
    """Random head sets averaged for the ablation baseline."""
    ablate_layers: bool = False
    """Also ablate every head of each layer in turn (and, with a flow metric, knock the flow
    out in every head of each layer): 2 × layers more forward rows per input, off by default."""
    ablation: str = "mean"
    """What replaces an ablated head's output: `mean` (its mean over every token of every input
    of the run, the same vector at each position), `resample` (its output at the same position
    on another input of the run, drawn with --seed; past that input's end, where it is shorter,
    its mean over its tokens) or `zero`."""
    effect: str = "logprob"
    """The ablation's effect measure: `logprob` (log p(target)), `logit-diff` (logit(target) −
    logit(contrast), each input naming a `contrast`) or `prob` (p(target))."""
    seed: int = 0
    """Seed of the random ablation baseline, resample's donors and the bootstrap."""
    top_k: int | None = None
    """Cells kept per head in the page data; None means 2 × T, at most 512."""
    keys_as_rows: bool = False
    """Draw keys as heatmap rows (as the reference figure does) instead of queries."""
    title: str | None = None
    """Report title; None derives it from the model and the inputs."""
    templates: Path | None = None
    """Folder of user templates that override the built-in ones (a string is taken as a path)."""
    single_file: Path | None = None
    """Also write the whole report as one self-contained HTML file here (a string is a path)."""
    pages: int | None = None
    """Per-input pages for the N inputs with the largest ablation effect |Δ top-k| (plus
    `page_ids`); None: a page for every input (or, with `page_ids` alone, for those only)."""
    page_ids: tuple[str, ...] = ()
    """Ids of inputs that get a page whatever `pages` says (a list is taken as a tuple)."""
    links: tuple[str, ...] = ()
    """Links added to every page's navigation, each `TEXT=URL`: a path relative to the site
    folder (e.g. `compare/index.html`: each page links it from where it is; the single file
    leaves these out) or an `https://` / `http://` address."""
    provenance: str = "relative"
    """What a report publishes of where it came from: `relative` (paths relative to the
    working directory, a model folder by its last parts) or `full` (absolute paths and the
    verbatim command, for private reports)."""
    force: bool = False
    """Write into a folder reportgen did not write (its files are kept), and overwrite files
    in the way or edited since reportgen wrote them."""
    quiet: bool = False
    """No progress bars or summary."""

    def __post_init__(self) -> None:
        # Parse once at the edge: later stages get typed values, never strings to re-parse.
        object.__setattr__(self, "metric", parse_metric(self.metric))
        if self.report_metric is not None:
            object.__setattr__(self, "report_metric", parse_metric(self.report_metric))
        for name in ("templates", "single_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not isinstance(self.page_ids, tuple):
            object.__setattr__(self, "page_ids", tuple(self.page_ids))
        if not isinstance(self.links, tuple):
            object.__setattr__(self, "links", tuple(self.links))
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))

    def override(self, **changes: object) -> Settings:
        """A copy with the given fields replaced; None values (options not given) are skipped."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    def validate(self) -> Settings:
        """Check every option that can be checked without the model; returns self.

        Messages name the command line's options. What needs the model (the number of heads
        for --ablate-k, its token limit for --max-tokens) is checked as soon as it has loaded."""
        parse_method(self.method)
        at_least = {
            "--batch-size": (self.batch_size, 1),
            "--steps": (self.steps, 1),
            "--ablate-k": (self.ablate_k, 0),
            "--ablate-draws": (self.ablate_draws, 1),
        }
        if self.max_tokens is not None:
            at_least["--max-tokens"] = (self.max_tokens, 1)
        if self.top_k is not None:
            at_least["--top-k"] = (self.top_k, 1)
        if self.pages is not None:
            at_least["--pages"] = (self.pages, 0)
        for option, (value, low) in at_least.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"{option} must be an integer, got {value!r}")
            if value < low:
                raise SettingsError(f"{option} must be at least {low}, got {value}")
        if self.ablation not in INTERVENTIONS:
            raise SettingsError(
                f"unknown --ablation '{self.ablation}' (use {', '.join(INTERVENTIONS)})"
            )
        if self.patch_baseline not in PATCH_BASELINES:
            raise SettingsError(
                f"unknown --patch-baseline '{self.patch_baseline}' "
                f"(use {', '.join(PATCH_BASELINES)})"
            )
        if self.patch_baseline != "zero" and not self.patching:
            raise SettingsError(
                f"--patch-baseline {self.patch_baseline} is an option of --patching: add "
                "--patching (or drop --patch-baseline)"
            )
        if self.effect not in EFFECTS:
            raise SettingsError(f"unknown --effect '{self.effect}' (use {', '.join(EFFECTS)})")
        if self.aggregate not in AGGREGATES:
            raise SettingsError(
                f"unknown --aggregate '{self.aggregate}' (use {' or '.join(AGGREGATES)})"
            )
        if self.aggregate == "wang" and self.method != "attn-grad":
            raise SettingsError(
                f"--aggregate wang is an option of --method attn-grad, not {self.method}"
            )
        if self.aggregate == "wang" and self.engine != "tiled":
            raise SettingsError("--aggregate wang runs on the tiled engine: drop --engine eager")
        if self.engine not in ENGINES:
            raise SettingsError(f"unknown --engine '{self.engine}' (use {' or '.join(ENGINES)})")
        if self.pairing not in PAIRINGS:
            raise SettingsError(f"unknown --pairing '{self.pairing}' (use {' or '.join(PAIRINGS)})")
        if self.provenance not in ("relative", "full"):
            raise SettingsError(f"unknown --provenance '{self.provenance}' (use relative or full)")
        if self.store not in STORES:
            raise SettingsError(f"unknown --store '{self.store}' (use {', '.join(STORES)})")
        if self.device_map not in (None, "auto"):
            raise SettingsError(f"unknown --device-map '{self.device_map}' (use auto)")
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        if self.dtype not in DTYPES:
            raise SettingsError(f"unknown --dtype '{self.dtype}' (use {', '.join(DTYPES)})")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise SettingsError(
                f"unknown --device '{self.device}' (use auto, cpu, cuda, cuda:N or mps)"
            )
        for id_ in self.page_ids:
            if not isinstance(id_, str) or not id_:
                raise SettingsError(
                    f"--page-id must be an input's id (a non-empty string), got {id_!r}"
                )
        for link in self.links:
            parse_link(link)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SettingsError(f"--seed must be an integer, got {self.seed!r}")
        return self


def parse_link(link: object) -> tuple[str, str]:
    """`TEXT=URL` as (text, url): the URL a path relative to the site folder (no `..`, no
    leading `/`) or an http(s) address; anything else (`javascript:`, `file:`, `//host`) is
    refused, since a report is opened by others."""
    text, eq, url = str(link).partition("=") if isinstance(link, str) else ("", "", "")
    text, url = text.strip(), url.strip()
    if not (eq and text and url):
        raise SettingsError(
            f"--link {link!r}: write it as TEXT=URL, e.g. 'Over training=compare/index.html'"
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url.split("/", 1)[0] else None
    if scheme is not None:
        if scheme not in ("http", "https"):
            raise SettingsError(f"--link {link!r}: use a path in the site or an http(s) address")
        return text, url
    parts = url.split("#", 1)[0].split("?", 1)[0].split("/")
    if url.startswith("/") or "\\" in url or ".." in parts:
        raise SettingsError(
            f"--link {link!r}: a path must be relative to the site folder, inside it (no "
            "leading /, no ..)"
        )
    return text, url
