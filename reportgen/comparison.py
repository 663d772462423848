"""Compare models: the same inputs through several models (training checkpoints, a base model
and its fine-tune, seeds), one ordinary run folder each, and a site comparing their heads.

    SITE/index.html                 the comparison (charts.compare), linked to each model's report
    SITE/models/<label>/            each model's own report (index, input pages, about)
    SITE/assets/                    the Vega bundle, reportgen.css, reportgen.js
    RUNS/<label>/                   each model's run folder (default: SITE.runs beside SITE)
    RUNS/<label>.grounding.json     its information gains, with a counterfactual (see below)

With a counterfactual per input (the inputs' `counterfactual` fields or `--counterfactual
swap:ENV`, `reportgen.data.grounding`) each model's grounding information gain is computed
too: two plain forward passes per input, kept beside the run folder and reused on the same
terms.

A run folder is reused when it holds the same inputs, computed from the same weights (their
SHA-256) with the same settings, so adding a checkpoint computes only that checkpoint. All the
checks that need no model come first: at least two models, every folder has weights, every
hub revision is in the local cache, and the models tokenize the inputs alike (from their
tokenizer files). Models whose layer × head shapes differ are compared at the layer level.
Torch is imported only if a model must be computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reportgen import pipeline
from reportgen.data.examples import Example
from reportgen.data.grounding import Gain, counterfactuals, describe
from reportgen.data.metrics import check_metric
from reportgen.errors import ModelError, ReportgenError, RunError, SettingsError
from reportgen.fsutil import RUN_WRITES, SITE_WRITES, check_folder
from reportgen.modelpath import weights_sha256
from reportgen.records import Run, inputs_digest, is_run
from reportgen.settings import Settings
from reportgen.site.compare import MODELS_FOLDER, render_comparison

_STEP = re.compile(r"(\d+)")


class CompareError(ReportgenError, ValueError):
    """Models that cannot be compared; the message names them."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to compare: its label, what was given, and its local folder."""

    label: str
    given: str
    path: Path
    source: str
    """What names its run folder: the checkpoint's folder name, a model folder's name, or
    `ORG--NAME@REV` (not the label, so relabelling reuses the run folders)."""


@dataclass(frozen=True)
class Member:
    """A compared model, its run, and the name of its report's folder in the site."""

    model: ModelSpec
    run: Run
    folder: str
    reused: bool
    gains: tuple[Gain, ...] | None = None
    """Its information gain per input, in input order; None without a counterfactual."""


def step_number(name: str) -> int | None:
    """The step number in a checkpoint folder's name (its last number): `checkpoint-500` → 500."""
    found = _STEP.findall(name)
    return int(found[-1]) if found else None


def checkpoint_folders(root: str | Path) -> list[ModelSpec]:
    """The sub-folders of `root` with a step number in their name (Hugging Face Trainer's
    `checkpoint-N`, `step_1000`, ...), ordered by that number; labelled by the step."""
    root = Path(root)
    if not root.is_dir():
        raise SettingsError(f"--checkpoints {root}: no such folder (give a folder of checkpoints)")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        step = step_number(sub.name)
        if step is not None:
            found.append((step, sub.name, sub))
    if not found:
        raise SettingsError(
            f"--checkpoints {root}: no sub-folder has a step number in its name (such as "
            "checkpoint-500)"
        )
    steps = [s for s, _, _ in found]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    if dupes:
        names = [n for s, n, _ in found if s == dupes[0]]
        raise SettingsError(
            f"--checkpoints {root}: {' and '.join(names)} have the same step {dupes[0]}; keep one"
        )
    return [
        ModelSpec(f"step {s}", str(p), check_model_folder(p, "--checkpoints"), p.name)
        for s, _, p in sorted(found)
    ]


def check_model_folder(path: Path, option: str = "--model") -> Path:
    """`path` if it is a model folder with a config and weights, else a one-line error."""
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{option} {path}: no config.json (pass a folder written by save_pretrained)"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ModelError(
            f"{option} {path}: the folder has no weights (*.safetensors or pytorch_model*.bin); "
            "was the checkpoint saved completely?"
        )
    return path


def resolve(given: str) -> Path:
    """A local folder for `--model`: a folder, or a hub id `ORG/NAME` or `ORG/NAME@REV` in the
    local Hugging Face cache (nothing is downloaded)."""
    path = Path(given).expanduser()
    if path.is_dir():
        return check_model_folder(path)
    repo, at, revision = given.partition("@")
    if path.exists() or given.startswith((".", "/", "~")) or repo.count("/") > 1 or "\\" in given:
        raise ModelError(f"--model {given}: no such model folder")
    if at and not revision:
        raise SettingsError(f"--model {given}: give a revision after @ (e.g. {repo}@main)")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except Exception:
        what = f"revision '{revision}' of '{repo}'" if at else f"'{repo}'"
        hint = f"{repo} --revision {revision}" if at else repo
        raise ModelError(
            f"--model {given}: {what} is not in the local Hugging Face cache, and reportgen "
            f"does not download: run `hf download {hint}` first, or pass a local folder"
        ) from None
    return check_model_folder(folder)


def model_specs(
    models: Sequence[str], checkpoints: str | Path | None, labels: Sequence[str] = ()
) -> list[ModelSpec]:
    """The models to compare, in order: `--checkpoints` sub-folders, then each `--model`;
    `labels` replace the default labels in that order. Fewer than two is an error."""
    specs = [] if checkpoints is None else checkpoint_folders(checkpoints)
    for given in models:
        label = given.rstrip("/").rsplit("/", 1)[-1] or given
        local = Path(given).expanduser()
        source = local.resolve().name if local.is_dir() else given.replace("/", "--")
        specs.append(ModelSpec(label, given, resolve(given), source))
    if len(specs) < 2:
        raise SettingsError(
            f"compare needs at least two models, got {len(specs)}: give --model twice or more, "
            "or --checkpoints with two or more checkpoint folders"
        )
    if labels:
        if len(labels) != len(specs):
            raise SettingsError(
                f"--label given {len(labels)} times for {len(specs)} models; give one label "
                "per model, or none"
            )
        specs = [replace(s, label=label) for s, label in zip(specs, labels, strict=True)]
    seen: dict[str, str] = {}
    for s in specs:
        if s.label in seen:
            raise SettingsError(
                f"two models have the label '{s.label}' ({seen[s.label]} and {s.given}); "
                "give each its own with --label"
            )
        seen[s.label] = s.given
    return specs


# --- tokenizers -------------------------------------------------------------------------------


def _tokenize(path: Path, texts: Sequence[str]) -> tuple[dict[str, int], list[list[int]]]:
    """A model's vocabulary and its ids for `texts`, from its tokenizer files."""
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        return tok.get_vocab(), [tok.encode(t).ids for t in texts]
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return dict(auto.get_vocab()), [list(auto(t)["input_ids"]) for t in texts]


def check_tokenizers(specs: Sequence[ModelSpec], examples: Sequence[Example]) -> None:
    """Every model must have the first one's vocabulary and tokenize each input alike (the
    token-level views compare positions); else an error naming the two models."""
    texts = [s.text for ex in examples for s in ex.segments]
    first = specs[0]
    known: dict[str, tuple[dict[str, int], list[list[int]]]] = {}

    def files(spec: ModelSpec) -> bytes:
        names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        return b"\0".join(
            (spec.path / n).read_bytes() if (spec.path / n).is_file() else b"" for n in names
        )

    base_files = files(first)
    for spec in specs[1:]:
        if files(spec) == base_files:
            continue  # the same tokenizer files: nothing to compare
        for s in (first, spec):
            if s.label not in known:
                try:
                    known[s.label] = _tokenize(s.path, texts)
                except Exception as err:
                    why = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                    raise ModelError(
                        f"--model {s.given}: cannot read its tokenizer ({why})"
                    ) from err
        vocab_a, ids_a = known[first.label]
        vocab_b, ids_b = known[spec.label]
        if vocab_a != vocab_b:
            raise CompareError(
                f"models '{first.label}' and '{spec.label}' have different tokenizers "
                f"(vocabularies of {len(vocab_a)} and {len(vocab_b)} tokens differ); compare "
                "models that share a tokenizer"
            )
        if ids_a != ids_b:
            k = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b, strict=True)) if a != b)
            raise CompareError(
                f"models '{first.label}' and '{spec.label}' tokenize the inputs differently "
                f"(first at {texts[k][:40]!r}); compare models that share a tokenizer"
            )


# --- run folders ------------------------------------------------------------------------------


def folder_names(texts: Sequence[str]) -> list[str]:
    """A folder name per model from `texts` (its label, or its source): readable, unique, and
    stable when models are added (a checkpoint keeps its run folder)."""
    from reportgen.site.pages import slug

    names: list[str] = []
    for i, text in enumerate(texts):
        base = slug(text) or f"model-{i + 1}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def reuse_differences(
    run: Run, weights: str, examples: Sequence[Example], settings: Settings
) -> list[str]:
    """Why a run folder cannot stand for computing `examples` with these weights and
    settings (empty if it can): what the run's manifest records against what is asked (as
    `pipeline.run_info` records it, from `pipeline.recorded_parameters`). Not compared:
    torch's thread count and the library versions but reportgen's (known only once torch is
    imported)."""
    from reportgen import __version__

    info = run.info
    found = []
    if info.weights_sha256 != weights:
        found.append("the weights")
    if run.inputs != inputs_digest(examples) or run.shard is not None:
        found.append("the inputs")
    asked: dict[str, Any] = {
        "method": settings.method,
        "metric": settings.metric.name,
        "dtype": settings.dtype,
    }
    for name, value in asked.items():
        if getattr(info, name) != value:
            found.append(name)
    # What computing it again would record; torch's thread count is not compared, nor the
    # model's own token limit (known once it loads) when no --max-tokens is given.
    params = pipeline.recorded_parameters(settings, info.task, settings.max_tokens, None)
    skipped = {"torch_threads"} | ({"max_tokens"} if settings.max_tokens is None else set())
    for name in dict.fromkeys([*params, *info.parameters]):
        if name not in skipped and info.parameters.get(name) != params.get(name):
            found.append(name)
    if info.versions.get("reportgen") != __version__:
        found.append("the reportgen version")
    return found


def default_runs(out: str | Path) -> Path:
    """Where the run folders go unless `runs` is given: `SITE.runs` beside the site (not
    inside it: a site is published, run folders hold every record)."""
    out = Path(out)
    return out.parent / f"{out.name}.runs"


def compare(
    inputs: pipeline.Inputs,
    out: str | Path = "site",
    models: Sequence[str] = (),
    checkpoints: str | Path | None = None,
    labels: Sequence[str] = (),
    settings: Settings | None = None,
    runs: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    counterfactual: str | None = None,
    heat_input: str | None = None,
) -> pipeline.Report:
    """Compute (or reuse) a run folder per model under `runs` and render the comparison site
    at `out` (see the module). `settings.model` is ignored: the models are `models` and the
    sub-folders of `checkpoints`. `counterfactual` is `swap:SEGMENT` (or None: the inputs'
    own `counterfactual` fields, if any). `heat_input`: the id of the input the page draws as
    token heatmaps per checkpoint (None: the first). Returns the site's `Report` (`run` is the runs
    folder)."""
    settings = (settings or Settings()).validate()
    examples = pipeline.load_examples(inputs)
    check_metric(settings.metric, examples)
    if heat_input is not None and heat_input not in {ex.id for ex in examples}:
        raise SettingsError(
            f"--heat-input '{heat_input}': no input has that id (give one of the inputs' ids)"
        )
    others = counterfactuals(examples, counterfactual)
    specs = model_specs(models, checkpoints, labels)
    runs_dir = Path(runs) if runs is not None else default_runs(out)
    names = folder_names([s.source for s in specs])
    pages = folder_names([s.label for s in specs])
    check_folder(out, "site", settings.force, (*SITE_WRITES, f"{MODELS_FOLDER}/"))
    _check_apart(Path(out), runs_dir, specs)
    for name in names:
        check_folder(runs_dir / name, "run", settings.force, RUN_WRITES, "--runs")
    check_tokenizers(specs, examples)
    members = []
    for spec, name, page in zip(specs, names, pages, strict=True):
        folder = runs_dir / name
        weights = weights_sha256(spec.path)
        run = Run.open(folder) if is_run(folder) else None
        if run is not None and not reuse_differences(run, weights, examples, settings):
            members.append(Member(spec, run, page, True))
            continue
        if progress is not None:
            progress(f"computing {spec.label}")
        runs_dir.mkdir(parents=True, exist_ok=True)
        computed = pipeline.compute(
            examples_inputs(examples) if str(inputs) == "-" else inputs,  # stdin is read once
            folder,
            replace(settings, model=str(spec.path), single_file=None),
        )
        members.append(Member(spec, computed, page, False))
    _check_tokens(members)
    if others is not None:
        members = [
            replace(m, gains=grounding(m, runs_dir / f"{name}.grounding.json", examples, others,
                                       settings, progress))
            for m, name in zip(members, names, strict=True)
        ]  # fmt: skip
    note = None if others is None else describe(counterfactual)
    site = render_comparison(members, Path(out), settings, note, heat_input)
    tokens = sum(len(e.tokens) for e in members[-1].run.entries)
    return pipeline.Report(runs_dir, site, settings.single_file, len(examples), tokens)


def grounding(
    member: Member,
    cache: Path,
    examples: Sequence[Example],
    others: Sequence[Example],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> tuple[Gain, ...]:
    """The member's information gain per input: read from `cache` if it was computed from
    the same weights, inputs, counterfactuals and settings, else computed and kept there."""
    from reportgen import __version__

    key = {
        "weights_sha256": member.run.info.weights_sha256,
        "inputs": _pairs_digest(examples, others),
        "dtype": settings.dtype,
        "max_tokens": settings.max_tokens,
        "truncate": settings.truncate,
        "reportgen": __version__,
    }
    if cache.is_file():
        try:
            kept = json.loads(cache.read_text("utf-8"))
            if kept.get("key") == key:
                return tuple(Gain(g["id"], g["own"], g["counterfactual"]) for g in kept["gains"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or of another shape: computed again and replaced
    import reportgen.engine
    from reportgen.engine.grounding import surprisals

    if progress is not None:
        progress(f"information gain of {member.model.label}")
    lm = reportgen.engine.load_model(
        str(member.model.path), settings.device, settings.dtype, settings.device_map,
        settings.max_memory,
    )  # fmt: skip
    gains = surprisals(lm, examples, others, settings.max_tokens, settings.truncate)
    body = {
        "key": key,
        "gains": [{"id": g.id, "own": g.own, "counterfactual": g.counterfactual} for g in gains],
    }
    tmp = cache.with_name(f".{cache.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n", "utf-8")
    os.replace(tmp, cache)
    return tuple(gains)


def _pairs_digest(examples: Sequence[Example], others: Sequence[Example]) -> str:
    """A SHA-256 over each input's id, text and target and its counterfactual's text."""
    digest = hashlib.sha256()
    for ex, cf in zip(examples, others, strict=True):
        item = [ex.id, ex.text, ex.target, cf.text]
        digest.update((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


def examples_inputs(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Examples as the input items that read back to them (the inputs are read once)."""
    out: list[dict[str, Any]] = []
    for ex in examples:
        item: dict[str, Any] = {
            "id": ex.id,
            "segments": [{"name": s.name, "text": s.text} for s in ex.segments],
        }
        if ex.target is not None:
            item["target"] = ex.target
        if ex.meta:
            item["meta"] = dict(ex.meta)
        if ex.contrast is not None:
            item["contrast"] = ex.contrast
        if ex.counterfactual:
            item["counterfactual"] = {s.name: s.text for s in ex.counterfactual}
        out.append(item)
    return out


def _check_apart(out: Path, runs: Path, specs: Sequence[ModelSpec]) -> None:
    site, where = out.resolve(), runs.resolve()
    if site == where or site in where.parents or where in site.parents:
        raise SettingsError(
            f"--runs {runs} and --out {out} must be apart (neither inside the other)"
        )
    for s in specs:
        model = s.path.resolve()
        for option, folder in (("--out", site), ("--runs", where)):
            if folder == model or model in folder.parents or folder in model.parents:
                raise SettingsError(f"{option} {folder} overlaps the model folder {s.given}")


def _check_tokens(members: Sequence[Member]) -> None:
    """The runs tokenized every input alike (what the tokenizer check promised)."""
    first = members[0]
    for m in members[1:]:
        if len(m.run) != len(first.run):
            raise RunError(
                f"{m.run.path} holds {len(m.run)} inputs, {first.run.path} {len(first.run)}"
            )
        for a, b in zip(first.run.entries, m.run.entries, strict=True):
            if a.id != b.id or a.tokens != b.tokens:
                raise CompareError(
                    f"models '{first.model.label}' and '{m.model.label}' tokenized input "
                    f"'{a.id}' differently; compare models that share a tokenizer"
                )
