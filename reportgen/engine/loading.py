"""Model loading: resolve a folder or cached hub id offline, detect the task, wire attention.

A model is loaded with reportgen's attention function (`attention.py`) in every layer, in eval
mode, with no key/value cache, and then probed: one forward pass must return attention weights
from every layer (and finite outputs), and a seeded padded batch decides whether the fused
attention may stand in for the model's own.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
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
    attention_control,
    own_eager,
    seen_modules,
)
from reportgen.errors import ModelError

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Architecture name suffix -> task, checked in order; anything else is a bare encoder.
_TASK_SUFFIXES = (
    ("ForCausalLM", Task.CAUSAL_LM),
    ("LMHeadModel", Task.CAUSAL_LM),
    ("ForMaskedLM", Task.MASKED_LM),
    ("ForSequenceClassification", Task.CLASSIFICATION),
)
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

    @property
    def architecture(self) -> str:
        return type(self.model).__name__


def demo_model_path() -> Path:
    """The demo model shipped inside the package."""
    return Path(str(resources.files("reportgen") / "demo_model"))


def resolve_model_path(spec: str | Path | None) -> Path:
    """A local model folder for `spec`: a folder, a hub id in the local cache, or the demo model."""
    if spec is None:
        path = demo_model_path()
        if not (path / "config.json").is_file():
            raise ModelError(f"the demo model is missing from {path}; reinstall reportgen")
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder '{spec}' has no config.json; "
                "pass a folder written by save_pretrained"
            )
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise ModelError(
                f"model folder '{spec}' has no weights (*.safetensors or pytorch_model*.bin)"
            )
        return path
    text = str(spec)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelError(f"model folder '{spec}' does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:
        raise ModelError(
            f"model '{spec}' is neither a local folder nor in the Hugging Face cache, and "
            f"reportgen does not download: run `hf download {spec}` first, or pass a local folder"
        ) from None


def detect_task(config: Any) -> Task:
    """The task of a model, from the architecture named in its config."""
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{config.model_type} is an encoder-decoder model; reportgen supports decoder-only "
            "and encoder-only models"
        )
    for arch in getattr(config, "architectures", None) or []:
        for suffix, task in _TASK_SUFFIXES:
            if arch.endswith(suffix):
                return task
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
    spec: str | Path | None, device: str = "auto", dtype: str = "float32"
) -> LoadedModel:
    """Load a model and tokenizer offline, in eval mode, with attention routed through reportgen."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    path = resolve_model_path(spec)
    name = str(spec) if spec is not None else "reportgen demo model"
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise ModelError(f"model '{name}': cannot read its config ({_first_line(err)})") from None
    task = detect_task(config)
    auto_class = getattr(transformers, _AUTO_CLASSES[task])
    with _quiet_transformers():
        try:
            model = auto_class.from_pretrained(
                path, attn_implementation=ATTENTION_NAME, dtype=DTYPES[dtype], local_files_only=True
            )
        except Exception as err:
            raise ModelError(f"model '{name}' cannot be loaded: {_first_line(err)}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as err:
            raise ModelError(
                f"model '{name}': cannot load its tokenizer ({_first_line(err)})"
            ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model '{name}': reportgen needs a fast tokenizer (for offset mappings)")
    torch_device = pick_device(device)
    model.eval().to(torch_device)
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
        max_tokens=_max_positions(config, tokenizer),
        weights_sha256=weights_sha256(path),
        accepts_position_ids=_accepts(model, "position_ids"),
    )
    loaded.num_layers, loaded.num_heads = check_attention(loaded)
    loaded.fused_attention = enable_fused_attention(loaded)
    return loaded


def check_attention(lm: LoadedModel) -> tuple[int, int]:
    """Run a probe forward pass; return (layers, heads), or fail if no attention weights come
    back or the outputs are not finite. Each attention module called once per pass is given its
    layer index (the model's own `layer_idx` where it has one, else its place in the pass); a
    module shared by all layers (ALBERT) is counted per call."""
    ids = lm.tokenizer("a b", return_tensors="pt")["input_ids"].to(lm.device)
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


# Largest difference allowed between the fused and the model's own attention on the probe, for
# attention weights and (relative to the largest magnitude) final outputs: rounding order only.
_PROBE_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 5e-2,
    torch.float16: 1e-2,
}


def enable_fused_attention(lm: LoadedModel) -> bool:
    """Run every attention layer through `fused_attention` if, on a seeded probe batch with
    padding, it gives the model's own attention weights and outputs; return whether it does.
    A model whose eager attention computes anything else keeps its own."""
    vocab = lm.model.get_input_embeddings().num_embeddings
    ids = torch.randint(vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}
    with seen_modules() as seen:
        with torch.no_grad(), own_eager(), attention_control(record=True) as own_weights:
            own = lm.model(**inputs)[0]
        modules = list(dict.fromkeys(module for module, _ in seen))
        for module in modules:
            setattr(module, FUSED_FLAG, True)
        seen.clear()
        with torch.no_grad(), attention_control(record=True) as fused_weights:
            fused = lm.model(**inputs)[0]
    tol = _PROBE_TOLERANCE[lm.dtype]
    same = (
        bool(seen)
        and all(used for _, used in seen)
        and len(own_weights) == len(fused_weights)
        and all(
            a.shape == b.shape and float((a - b).abs().max()) <= tol
            for a, b in zip(own_weights, fused_weights, strict=True)
        )
        and float((own - fused).abs().max()) <= tol * max(1.0, float(own.abs().max()))
    )
    if not same:
        for module in modules:
            setattr(module, FUSED_FLAG, False)
    return same


def weights_sha256(path: Path) -> str:
    """SHA-256 over the model's weight files, in name order."""
    digest = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _max_positions(config: Any, tokenizer: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
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
