"""The attention function every layer runs through: the model's own eager attention, wrapped.

It is registered as `reportgen` in transformers' `AttentionInterface` (with the eager mask), so
a model loaded with `attn_implementation="reportgen"` calls it in every attention layer. It calls
the model's own eager attention (so the model's exact semantics are kept) and, inside an
`attention_control` block, records the attention weights and scales each head's output by a
gate. Scaling head h's output by g is the same as scaling its attention weights by g, since
out_h = A_h V_h; this gives ablation, integrated gradients and head-gate gradients for any model
whose attention goes through the interface (transformers 5 dropped `head_mask`).

Most models' eager attention is softmax(q·kᵀ·scaling + mask)·v. `fused_attention` computes the
same with two fewer full-size [B, H, T, T] temporaries in the forward and one fewer in the
backward (the scale goes on q, the mask is added in place), which on CPU is a quarter of the
attention's cost. A module runs it only where the load-time probe found it equal to the model's
own eager attention, and only for calls that carry nothing else (no softcapping, sinks or
dropout); anything else runs the model's own function.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from reportgen.errors import ModelError

ATTENTION_NAME = "reportgen"
FUSED_FLAG = "_reportgen_fused"
"""Set on an attention module that may run `fused_attention` (the probe found it equal)."""
LAYER_ATTR = "_reportgen_layer"
"""Set on an attention module that is one layer (not shared): the layer's index."""


@dataclass
class _Control:
    gates: torch.Tensor | None
    record: bool
    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    calls: int = 0


_ACTIVE: ContextVar[_Control | None] = ContextVar("reportgen_attention_control", default=None)
_OWN_EAGER: ContextVar[bool] = ContextVar("reportgen_own_eager", default=False)
_SEEN: ContextVar[list[tuple[torch.nn.Module, bool]] | None] = ContextVar(
    "reportgen_seen", default=None
)


class Recorded(list[torch.Tensor]):
    """Attention weights [B, H, Tq, Tk] of one forward pass, in layer order (filled when the
    `attention_control` block ends)."""


@contextmanager
def attention_control(
    gates: torch.Tensor | None = None, record: bool = False
) -> Iterator[Recorded]:
    """Within the block, attention layer l scales head h of batch row b by gates[b, l, h], and
    (with record) its attention weights [B, H, Tq, Tk] are recorded, in layer order, in the
    yielded list. One forward pass per block."""
    control = _Control(gates, record)
    recorded = Recorded()
    token = _ACTIVE.set(control)
    try:
        yield recorded
    finally:
        _ACTIVE.reset(token)
        recorded.extend(control.weights[layer] for layer in sorted(control.weights))


@contextmanager
def own_eager() -> Iterator[None]:
    """Within the block, every attention layer runs the model's own eager function."""
    token = _OWN_EAGER.set(True)
    try:
        yield
    finally:
        _OWN_EAGER.reset(token)


@contextmanager
def seen_modules() -> Iterator[list[tuple[torch.nn.Module, bool]]]:
    """Within the block, every attention call appends (module, whether it ran fused)."""
    seen: list[tuple[torch.nn.Module, bool]] = []
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


def eager_of(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The eager attention function of the module's own modeling file."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ModelError(
            f"{type(module).__name__} has no eager attention function for reportgen to wrap; "
            "this architecture is not supported"
        )
    return eager


def _layer(module: torch.nn.Module, control: _Control) -> int:
    """The layer index of this call: the module's own (set at load) or, for a module shared by
    several layers (ALBERT), the number of calls so far in this forward pass."""
    layer = getattr(module, LAYER_ATTR, None)
    if layer is None:
        layer = control.calls
    control.calls += 1
    return int(layer)


def reportgen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    seen = _SEEN.get()
    found = None
    if getattr(module, FUSED_FLAG, False) and not _OWN_EAGER.get():
        found = fused_attention(query, key, value, attention_mask, **kwargs)
    fused = found is not None
    if found is None:
        found = eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    if seen is not None:
        seen.append((module, fused))
    out, weights = found
    control = _ACTIVE.get()
    if control is None:
        return out, weights
    layer = _layer(module, control)
    if control.record:
        control.weights[layer] = weights
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


def fused_attention(
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


def reportgen_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The eager mask, with masked entries at float32's lowest value in a float64 model.

    A padded query row can have no key inside a sliding window; float64's lowest value, cast
    by the model's float32 softmax, becomes -inf, the row's softmax NaN, and the NaN reaches
    every real position through the next layer (0 × NaN). float32's lowest is as good a -inf
    for the softmax (its exp is 0 beside any unmasked score) and stays finite."""
    mask = eager_mask(*args, **kwargs)
    if mask is not None and mask.dtype == torch.float64:
        mask = mask.clamp(min=torch.finfo(torch.float32).min)
    return mask


AttentionInterface.register(ATTENTION_NAME, reportgen_attention)
AttentionMaskInterface.register(ATTENTION_NAME, reportgen_mask)
