"""Model loading: resolve a folder or cached hub id offline, detect the task, wire attention.

A model is loaded with reportgen's attention function (`attention.py`) in every layer, in eval
mode, with no key/value cache, and then probed: one forward pass must return attention weights
from every layer (and finite outputs), and a seeded padded batch decides whether the fused
attention may stand in for the model's own.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from reportgen.data.tasks import Task
from reportgen.engine.attention import (
    ATTENTION_NAME,
    FUSED_FLAG,
    LAYER_ATTR,
    Capture,
    attention_control,
    own_eager,
    seen_modules,
)
from reportgen.engine.memory import Footprint, saved_bytes
from reportgen.errors import ModelError
from reportgen.modelpath import resolve_model_path, weights_sha256

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Architecture name suffix -> task, checked in order; a bare model (`BertModel`) is an encoder.
_TASK_SUFFIXES = (
    ("ForCausalLM", Task.CAUSAL_LM),
    ("LMHeadModel", Task.CAUSAL_LM),
    ("ForMaskedLM", Task.MASKED_LM),
    ("ForSequenceClassification", Task.CLASSIFICATION),
)
# Heads reportgen has no objective for, with what they compute (for the error message).
_UNSUPPORTED_HEADS = {
    "ForTokenClassification": "per-token labels (token classification)",
    "ForQuestionAnswering": "answer spans (question answering)",
    "ForMultipleChoice": "multiple choice",
    "ForNextSentencePrediction": "next-sentence prediction",
    "ForPreTraining": "pre-training objectives",
    "ForConditionalGeneration": "conditional generation",
}
_AUTO_CLASSES = {
    Task.CAUSAL_LM: "AutoModelForCausalLM",
    Task.MASKED_LM: "AutoModelForMaskedLM",
    Task.CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.ENCODER: "AutoModel",
}


@dataclass
class LoadedModel:
    """A model ready for saliency: eval mode, on its device, attention routed through reportgen."""

    model: Any
    tokenizer: Any
    task: Task
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    num_layers: int
    num_heads: int
    max_tokens: int | None
    weights_sha256: str
    accepts_position_ids: bool
    fused_attention: bool = False
    """Whether attention runs through `fused_attention` (checked equal to the model's own)."""
    fused_activations: int = 0
    """How many tanh GELUs written out in Python run as torch's kernel (`fuse_activations`)."""

    padding: Padding = field(default_factory=lambda: Padding(None, False, True))
    """How batches are padded, decided by the padding probe at load."""
    footprint: Footprint = field(default_factory=lambda: Footprint(0.0, 0.0))
    """What a pass with gradients keeps per row, measured at load (sizes batches and tiles)."""

    @property
    def architecture(self) -> str:
        return type(self.model).__name__


@dataclass(frozen=True)
class Padding:
    """How a batch of inputs of different lengths is right-padded for this model."""

    pad_id: int | None
    """The id pad positions hold: the model's own pad token (what it treats as padding); None
    if it has none (a causal LM is then padded with any id: the mask hides it)."""
    position_ids: bool
    """Whether explicit position ids 0..T-1 are passed (only where the probe needed them)."""
    safe: bool
    """Whether a padded batch gives each input the outputs it has alone (the probe checked)."""
    reason: str = ""
    """Why padding is not safe, for the error that asks for --batch-size 1."""
    filler: int = 0
    """The id pad positions hold: `pad_id`, or for a model without one any id (the mask hides
    it from the real tokens)."""
    batches: bool = True
    """Whether the model takes more than one row per pass at all (a classifier without a pad
    id does not, even of equal lengths: transformers cannot tell where to pool)."""


def detect_task(config: Any) -> Task:
    """The task of a model, from the architecture named in its config."""
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{config.model_type} is an encoder-decoder model; reportgen supports decoder-only "
            "and encoder-only models (cross-attention is not supported yet)"
        )
    for arch in getattr(config, "architectures", None) or []:
        for suffix, task in _TASK_SUFFIXES:
            if arch.endswith(suffix):
                return task
        for suffix, what in _UNSUPPORTED_HEADS.items():
            if arch.endswith(suffix):
                raise ModelError(
                    f"{arch} predicts {what}, for which reportgen has no objective; supported are "
                    "causal LMs, masked LMs, sequence classifiers and bare encoders"
                )
    return Task.ENCODER


def pick_device(device: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' requested but MPS is not available; use --device cpu")
    return torch.device(device)


def load_model(
    spec: str | Path | None,
    device: str = "auto",
    dtype: str = "float32",
    device_map: str | None = None,
    max_memory: str | None = None,
) -> LoadedModel:
    """Load a model and tokenizer offline, in eval mode, with attention routed through reportgen.

    The weights go straight to `device` (never all into CPU memory first), or, with
    `device_map="auto"`, are spread by accelerate over the GPUs, the CPU and disk within
    `max_memory` per device; gradients flow across them. No code from the model folder ever
    runs (`trust_remote_code=False` everywhere)."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    path = resolve_model_path(spec)
    name = str(spec) if spec is not None else "reportgen demo model"
    _refuse_remote_code(path, name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as err:
        raise ModelError(f"model '{name}': cannot read its config ({_first_line(err)})") from err
    task = detect_task(config)
    auto_class = getattr(transformers, _AUTO_CLASSES[task])
    model_class = _model_class(auto_class, config, name)
    if not getattr(model_class, "_supports_attention_backend", False):
        raise ModelError(
            f"model '{name}': {model_class.__name__} is not supported: its attention does not go "
            "through transformers' AttentionInterface, so reportgen cannot read or gate it"
        )
    torch_device = pick_device(device)
    options: dict[str, Any] = {}
    if device_map == "auto":
        options.update(_spread(max_memory))
    elif torch_device.type != "cpu":
        options["device_map"] = str(torch_device)
    if DTYPES[dtype] == torch.float64 and model_class._can_set_experts_implementation():
        # The grouped expert matmuls reject float64; the eager loop over experts is exact.
        options["experts_implementation"] = "eager"
    with _quiet_transformers():
        try:
            model = auto_class.from_pretrained(
                path,
                attn_implementation=ATTENTION_NAME,
                dtype=DTYPES[dtype],
                local_files_only=True,
                trust_remote_code=False,
                **options,
            )
        except Exception as err:
            raise ModelError(f"model '{name}' cannot be loaded: {_first_line(err)}") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                path, local_files_only=True, trust_remote_code=False
            )
        except Exception as err:
            raise ModelError(
                f"model '{name}': cannot load its tokenizer ({_first_line(err)})"
            ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model '{name}': reportgen needs a fast tokenizer (for offset mappings)")
    model.eval()
    # Gradients flow to activations only (the graph starts at the embeddings' output): no
    # weight gradient is ever computed, and no tensor is kept for one.
    model.requires_grad_(False)
    # No key/value cache: nothing here generates, and filling it costs a copy per layer.
    model.config.use_cache = False
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=task,
        name=name,
        path=path,
        device=torch_device,
        dtype=DTYPES[dtype],
        num_layers=0,
        num_heads=0,
        max_tokens=_max_positions(config, tokenizer, model),
        weights_sha256=weights_sha256(path),
        accepts_position_ids=_accepts(model, "position_ids"),
    )
    try:
        loaded.num_layers, loaded.num_heads = check_attention(loaded)
        loaded.fused_activations = fuse_activations(loaded)
        loaded.padding = check_padding(loaded)
        loaded.fused_attention = enable_fused_attention(loaded)
        loaded.footprint = measure_footprint(loaded)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"model '{name}' ({loaded.architecture}) fails a probe forward pass in {dtype}: "
            f"{_first_line(err)}"
        ) from err
    return loaded


def _spread(max_memory: str | None) -> dict[str, Any]:
    """from_pretrained's options for device_map="auto": accelerate's own placement, within
    --max-memory per device, offloading what fits nowhere to a temporary folder."""
    import tempfile

    from reportgen.settings import parse_memory

    options: dict[str, Any] = {
        "device_map": "auto",
        "offload_folder": tempfile.mkdtemp(prefix="reportgen-offload-"),
    }
    if max_memory is not None:
        sizes = parse_memory(max_memory)
        if "" in sizes:
            raise ModelError(
                "--device-map auto needs --max-memory per device, e.g. cuda:0=20GiB,cpu=64GiB"
            )
        options["max_memory"] = {
            int(name.split(":")[1]) if name.startswith("cuda:") else name: size
            for name, size in sizes.items()
        }
    return options


def _refuse_remote_code(path: Path, name: str) -> None:
    """A config that maps to code in the folder (`auto_map`) would make transformers ask to run
    it; reportgen never does, so say so before transformers gets the chance."""
    try:
        raw = json.loads((path / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return  # AutoConfig reports it
    if isinstance(raw, dict) and raw.get("auto_map"):
        raise ModelError(
            f"model '{name}' needs code shipped in its folder (config.json has auto_map), and "
            "reportgen never runs a model folder's code; use a model that transformers supports "
            "natively"
        )


def _model_class(auto_class: Any, config: Any, name: str) -> Any:
    try:
        return auto_class._model_mapping[type(config)]
    except (KeyError, AttributeError):
        raise ModelError(
            f"model '{name}': transformers has no {auto_class.__name__} for model type "
            f"'{config.model_type}'"
        ) from None


def check_attention(lm: LoadedModel) -> tuple[int, int]:
    """Run a probe forward pass; return (layers, heads), or fail if no attention weights come
    back or the outputs are not finite. Each attention module called once per pass is given its
    layer index (the model's own `layer_idx` where it has one, else its place in the pass); a
    module shared by all layers (ALBERT) is counted per call."""
    ids = _probe_ids(lm, 1, _probe_length(lm)).to(lm.device)
    with torch.no_grad(), seen_modules() as seen, attention_control(record=True) as weights:
        output = lm.model(input_ids=ids)
    if not weights or any(w is None or w.numel() == 0 for w in weights):
        impl = getattr(lm.model.config, "_attn_implementation", "?")
        raise ModelError(
            f"model '{lm.name}' ({lm.architecture}) returned no attention weights with attention "
            f"implementation '{impl}'; reportgen needs eager attention weights"
        )
    logits = output[0]
    if not torch.isfinite(logits).all():
        raise ModelError(
            f"model '{lm.name}' produces NaN or infinite outputs; check its weights and --dtype"
        )
    heads = {w.shape[1] for w in weights}
    if len(heads) != 1:
        raise ModelError(
            f"model '{lm.name}' has layers with different head counts: {sorted(heads)}"
        )
    _number_layers([module for module, _ in seen])
    return len(seen), heads.pop()


def _number_layers(calls: list[torch.nn.Module]) -> None:
    """Give each attention module its layer index, if every module is called once per pass."""
    if len(set(map(id, calls))) != len(calls):
        for module in calls:  # shared: counted per call
            if hasattr(module, LAYER_ATTR):
                delattr(module, LAYER_ATTR)
        return
    own = [getattr(module, "layer_idx", None) for module in calls]
    numbers = [i for i in own if isinstance(i, int)]
    use_own = len(numbers) == len(calls) and sorted(numbers) == list(range(len(calls)))
    for place, module in enumerate(calls):
        setattr(module, LAYER_ATTR, numbers[place] if use_own else place)


def pad_id(lm: LoadedModel) -> int | None:
    """The id the model itself treats as padding: its config's pad token (RoBERTa counts
    positions past it, a causal classifier pools before it), else the tokenizer's."""
    for value in (lm.model.config.pad_token_id, lm.tokenizer.pad_token_id):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _probe_ids(lm: LoadedModel, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids without special tokens (a pad or mask id inside a real input
    would change what the probe measures)."""
    vocab = lm.model.get_input_embeddings().num_embeddings
    special = set(lm.tokenizer.all_special_ids) | {pad_id(lm)}
    allowed = torch.tensor([i for i in range(vocab) if i not in special] or [0])
    pick = torch.randint(
        len(allowed), (rows, length), generator=torch.Generator().manual_seed(seed)
    )
    return allowed[pick]


def _probe_length(lm: LoadedModel) -> int:
    return max(2, min(12, lm.max_tokens or 12))


def _outputs(lm: LoadedModel, output: Any) -> torch.Tensor:
    """What a forward pass gives per input: logits (per token, or pooled for a classifier), or
    the last hidden state of a bare encoder."""
    return output.last_hidden_state if lm.task is Task.ENCODER else output.logits


def check_padding(lm: LoadedModel) -> Padding:
    """Decide how to pad: a right-padded batch of two inputs must give each input the outputs
    it has alone, at its own positions. Without explicit position ids first (most models count
    positions from 0, or from the mask; RoBERTa from its pad id), then with them (a model that
    counts positions without the mask and would shift them). If neither holds, padding is not
    safe and only batches of one run."""
    pad = pad_id(lm)
    n = _probe_length(lm)
    short = max(1, n - 3)
    ids = _probe_ids(lm, 2, n)
    if pad is None and lm.task is Task.CLASSIFICATION:
        return Padding(
            None,
            False,
            False,
            f"model '{lm.name}' defines no pad token (config.pad_token_id), so its classifier "
            "cannot find the last token of a padded input",
            batches=False,
        )
    filler = pad if pad is not None else int(lm.tokenizer.eos_token_id or 0)
    batch = ids.clone()
    batch[1, short:] = filler
    mask = torch.ones_like(batch)
    mask[1, short:] = 0
    tol = _PROBE_TOLERANCE[lm.dtype]
    with torch.no_grad():
        alone = [
            _outputs(lm, lm.model(input_ids=ids[:1].to(lm.device)))[0],
            _outputs(lm, lm.model(input_ids=ids[1:, :short].to(lm.device)))[0],
        ]
        choices = [False, True] if lm.accepts_position_ids else [False]
        for explicit in choices:
            kwargs = {"input_ids": batch.to(lm.device), "attention_mask": mask.to(lm.device)}
            if explicit:
                kwargs["position_ids"] = torch.arange(n).expand(2, -1).to(lm.device)
            padded = _outputs(lm, lm.model(**kwargs))
            together = [padded[0], padded[1] if padded.dim() == 2 else padded[1, :short]]
            if all(
                bool(torch.isfinite(b).all())
                and float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))
                for a, b in zip(alone, together, strict=True)
            ):
                return Padding(pad, explicit, True, filler=filler)
    return Padding(
        pad,
        False,
        False,
        f"model '{lm.name}' gives a right-padded input other outputs than the same input alone",
        filler,
    )


# Largest difference allowed between the fused and the model's own attention on the probe, for
# attention weights and (relative to the largest magnitude) final outputs: rounding order only.
_PROBE_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 5e-2,
    torch.float16: 1e-2,
}


def fuse_activations(lm: LoadedModel) -> int:
    """Replace each tanh-approximated GELU written out in Python (transformers'
    `NewGELUActivation`: GPT-2, GPT-Neo, GPT-J, CodeGen and the demo model) by torch's kernel
    of the same function (`GELUTanh`), if on a probe range they agree to rounding; return how
    many were replaced. One kernel instead of eight in the forward and ten in the backward: on
    CPU a tenth of a small GPT-2's saliency pass. Anything else keeps the model's own."""
    from transformers.activations import GELUTanh, NewGELUActivation

    found = [
        (parent, name)
        for parent in lm.model.modules()
        for name, child in parent.named_children()
        if type(child) is NewGELUActivation
    ]
    if not found:
        return 0
    probe = torch.linspace(-12.0, 12.0, 4801, dtype=lm.dtype, device=lm.device)
    with torch.no_grad():
        gap = (NewGELUActivation()(probe) - GELUTanh()(probe)).abs().max()
    if float(gap) > _PROBE_TOLERANCE[lm.dtype]:
        return 0
    for parent, name in found:
        setattr(parent, name, GELUTanh())
    return len(found)


def enable_fused_attention(lm: LoadedModel) -> bool:
    """Run every attention layer through `fused_attention` (and, in a captured pass, through
    scaled_dot_product_attention) if, on a seeded probe batch with padding, they give the
    model's own attention weights and outputs; return whether they do. A model whose eager
    attention computes anything else keeps its own."""
    n = _probe_length(lm)
    ids = _probe_ids(lm, 2, n)
    mask = torch.ones_like(ids)
    if lm.padding.safe:  # the mask's path too; else one input at a time, as the runs will be
        ids[1, n - n // 3 :] = lm.padding.filler
        mask[1, n - n // 3 :] = 0
    else:
        ids, mask = ids[:1], mask[:1]
    inputs = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}
    if lm.padding.position_ids:
        inputs["position_ids"] = torch.arange(n).expand(len(ids), -1).to(lm.device)
    tol = _PROBE_TOLERANCE[lm.dtype]

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        real = mask.to(a.device).bool()
        if a.dim() == 3 and a.shape[:2] == real.shape:  # per token: only real tokens count
            a, b = a[real], b[real]
        return a.shape == b.shape and float((a - b).abs().max()) <= tol * max(
            1.0, float(a.abs().max())
        )

    with seen_modules() as seen:
        with torch.no_grad(), own_eager(), attention_control(record=True) as own_weights:
            own = _outputs(lm, lm.model(**inputs))
        modules = list(dict.fromkeys(module for module, _ in seen))
        for module in modules:
            setattr(module, FUSED_FLAG, True)
        seen.clear()
        with torch.no_grad(), attention_control(record=True) as fused_weights:
            fused = _outputs(lm, lm.model(**inputs))
        capture = Capture()
        with torch.no_grad(), attention_control(capture=capture):
            fast = _outputs(lm, lm.model(**inputs))
    same = (
        bool(seen)
        and all(used for _, used in seen)
        and len(own_weights) == len(fused_weights)
        and all(
            a.shape == b.shape and float((a - b).abs().max()) <= tol
            for a, b in zip(own_weights, fused_weights, strict=True)
        )
        and close(own, fused)
        and all(c.fast for c in capture.layers.values())
        and close(own, fast)
    )
    if not same:
        for module in modules:
            setattr(module, FUSED_FLAG, False)
    return same


def measure_footprint(lm: LoadedModel) -> Footprint:
    """Bytes a captured pass with gradients saves for its backward, per token and per T × T
    cell of a row: counted (autograd's saved tensors) at two probe lengths and solved for the
    linear and the quadratic term. The head is left out: it runs at the loss positions only."""
    limit = lm.max_tokens or 64
    short = max(2, min(32, limit // 2))
    long = min(2 * short, limit)

    def saved_at(n: int) -> int:
        ids = _probe_ids(lm, 1, n).to(lm.device)
        hook = lm.model.get_input_embeddings().register_forward_hook(
            lambda module, args, out: out.requires_grad_()
        )
        try:
            with attention_control(capture=Capture()):
                return saved_bytes(lambda: lm.model.base_model(input_ids=ids), lm.model)
        finally:
            hook.remove()

    small, large = saved_at(short), saved_at(long)
    if long == short:
        return Footprint(small / short, 0.0)
    per_cell = max(0.0, (large / long - small / short) / (long - short))
    per_token = max(0.0, small / short - per_cell * short)
    return Footprint(per_token, per_cell)


def _max_positions(config: Any, tokenizer: Any, model: Any) -> int | None:
    """The longest input the model takes: its position table (less the rows a model that counts
    positions past its pad id, as RoBERTa does, never uses), else the tokenizer's limit."""
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            for module in model.modules():
                table = getattr(module, "position_embeddings", None)
                offset = getattr(module, "padding_idx", None)
                if isinstance(table, torch.nn.Embedding) and isinstance(offset, int):
                    return min(value, table.num_embeddings - offset - 1)
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading logs and progress bars, restoring them afterwards."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _accepts(model: Any, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
