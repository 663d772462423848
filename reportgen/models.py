"""Model loading: resolve a folder or cached hub id offline, detect the task, wire attention.

Every attention layer runs through one registered attention function, `reportgen`, that calls
the model's own eager attention (so its exact semantics are kept) and, inside an
`attention_control` block, records the attention weights and scales each head's output by a
gate. Scaling head h's output by g is the same as scaling its attention weights by g, since
out_h = A_h V_h; this gives ablation, integrated gradients and head-gate gradients for any model
whose attention goes through transformers' `AttentionInterface` (transformers 5 dropped
`head_mask`).

Most models' eager attention is softmax(q·kᵀ·scaling + mask)·v. `_fused_attention` computes the
same with two fewer full-size [B, H, T, T] temporaries in the forward and one fewer in the
backward (the scale goes on q, the mask is added in place), which on CPU is a quarter of the
attention's cost. It is used only where `check_attention` found it equal to the model's own
eager attention on a padded probe batch, and only for calls that carry nothing else (no
softcapping, sinks or dropout); anything else runs the model's own function.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AttentionInterface, AutoConfig, AutoTokenizer
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION_NAME = "reportgen"
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class ModelError(RuntimeError):
    """The model cannot be loaded or used; the message says why and what to do."""


class Task(str, Enum):
    """What the model computes, which decides the objective whose gradient is taken."""

    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    CLASSIFICATION = "sequence-classification"
    ENCODER = "encoder"


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
    """Whether attention runs through `_fused_attention` (checked equal to the model's own)."""

    @property
    def architecture(self) -> str:
        return type(self.model).__name__


@dataclass
class _Control:
    gates: torch.Tensor | None
    record: bool
    weights: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0


_ACTIVE: ContextVar[_Control | None] = ContextVar("reportgen_attention_control", default=None)
_OWN_EAGER: ContextVar[bool] = ContextVar("reportgen_own_eager", default=False)
_SEEN: ContextVar[list[tuple[torch.nn.Module, bool]] | None] = ContextVar(
    "reportgen_seen", default=None
)
_FUSED_FLAG = "_reportgen_fused"


@contextmanager
def attention_control(
    gates: torch.Tensor | None = None, record: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Within the block, attention layer l scales head h of batch row b by gates[b, l, h], and
    (with record) its attention weights [B, H, Tq, Tk] are appended to the yielded list in layer
    order. One forward pass per block."""
    control = _Control(gates, record)
    token = _ACTIVE.set(control)
    try:
        yield control.weights
    finally:
        _ACTIVE.reset(token)


@contextmanager
def own_eager() -> Iterator[None]:
    """Within the block, every attention layer runs the model's own eager function."""
    token = _OWN_EAGER.set(True)
    try:
        yield
    finally:
        _OWN_EAGER.reset(token)


def _eager_of(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ModelError(
            f"{type(module).__name__} has no eager attention function for reportgen to wrap; "
            "this architecture is not supported"
        )
    return eager


def _reportgen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    seen = _SEEN.get()
    found = None
    if getattr(module, _FUSED_FLAG, False) and not _OWN_EAGER.get():
        found = _fused_attention(query, key, value, attention_mask, **kwargs)
    fused = found is not None
    if found is None:
        found = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    if seen is not None:
        seen.append((module, fused))
    out, weights = found
    control = _ACTIVE.get()
    if control is None:
        return out, weights
    layer = control.calls
    control.calls += 1
    if control.record:
        control.weights.append(weights)
    if control.gates is not None:
        heads = weights.shape[1]
        if out.dim() != 4 or out.shape[2] != heads:
            raise ModelError(
                f"{type(module).__name__} returns attention output of shape {tuple(out.shape)}; "
                "reportgen expects [batch, tokens, heads, head_dim]"
            )
        out = out * control.gates[:, layer, :, None].to(out.dtype)[:, None]
    return out, weights


# Keyword arguments the standard eager attention receives and ignores (a None or False value of
# any other argument is also harmless; anything else, e.g. softcap or s_aux, needs the model's).
_IGNORED_KWARGS = frozenset(
    {"position_ids", "cache_position", "use_cache", "output_attentions", "is_causal"}
)


def _fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """softmax(q·kᵀ·scaling + mask)·v and its weights, as the standard eager attention returns
    them ([B, T, H, D] and [B, H, Tq, Tk]); None for a call with anything else in it."""
    if dropout or any(
        v is not None and v is not False and k not in _IGNORED_KWARGS for k, v in kwargs.items()
    ):
        return None
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        return None
    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: each key/value head serves a group
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # Scaling q (B·H·T·D values) instead of the scores (B·H·T·T) saves a full-size temporary in
    # the forward and another in the backward; adding the mask in place saves one more.
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if attention_mask is not None:
        scores.add_(attention_mask[:, :, :, : key.shape[-2]])
    if query.element_size() < 4:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2), weights


AttentionInterface.register(ATTENTION_NAME, _reportgen_attention)
AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A pass with gradients holds every layer's [B, H, T, T] attention tensors, and when the batch
    is done glibc gives that memory back; the next batch then page-faults all of it in again,
    which on CPU costs about a fifth of a small model's saliency pass. This keeps blocks of up to
    32 MiB on the heap and up to 512 MiB of free heap before trimming: the resident set stays at
    its peak instead of falling between batches, and the peak itself barely moves (benchmark 4:
    587 MB against 574 MB for 1,000 demo inputs).
    Process-wide, so the command line calls it and the library leaves it to the caller.
    Returns whether it applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (m_mmap_threshold, 32 * 2**20),
            (m_trim_threshold, 512 * 2**20),
            (m_top_pad, 16 * 2**20),
        )
    )


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
    back or the outputs are not finite."""
    ids = lm.tokenizer("a b", return_tensors="pt")["input_ids"].to(lm.device)
    with torch.no_grad(), attention_control(record=True) as weights:
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
    return len(weights), heads.pop()


# Largest difference allowed between the fused and the model's own attention on the probe, for
# attention weights and (relative to the largest magnitude) final outputs: rounding order only.
_PROBE_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 5e-2,
    torch.float16: 1e-2,
}


def enable_fused_attention(lm: LoadedModel) -> bool:
    """Run every attention layer through `_fused_attention` if, on a seeded probe batch with
    padding, it gives the model's own attention weights and outputs; return whether it does.
    A model whose eager attention computes anything else keeps its own."""
    vocab = lm.model.get_input_embeddings().num_embeddings
    ids = torch.randint(vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)}
    seen: list[tuple[torch.nn.Module, bool]] = []
    token = _SEEN.set(seen)
    try:
        with torch.no_grad(), own_eager(), attention_control(record=True) as own_weights:
            own = lm.model(**inputs)[0]
        modules = list(dict.fromkeys(module for module, _ in seen))
        for module in modules:
            setattr(module, _FUSED_FLAG, True)
        seen.clear()
        with torch.no_grad(), attention_control(record=True) as fused_weights:
            fused = lm.model(**inputs)[0]
    finally:
        _SEEN.reset(token)
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
            setattr(module, _FUSED_FLAG, False)
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
    import inspect

    return argument in inspect.signature(model.forward).parameters


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
