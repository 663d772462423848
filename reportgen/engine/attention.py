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
from functools import partial
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
class Captured:
    """What one attention layer received and returned in a captured pass: enough to recompute
    any block of query rows of its attention weights with the model's own function."""

    module: torch.nn.Module
    query: torch.Tensor
    """[B, H, T, d], as the layer passed it (positions applied)."""
    key: torch.Tensor
    """[B, H_kv, T, d]; key/value head h // (H / H_kv) serves query head h."""
    value: torch.Tensor
    mask: torch.Tensor | None
    """The additive mask [B, 1, T, T] (or None)."""
    kwargs: dict[str, Any]
    out: torch.Tensor
    """The layer's output [B, T, H, d] before any gate: A V per head."""
    fast: bool
    """Whether the pass ran scaled_dot_product_attention (else the model's own eager)."""
    weights: torch.Tensor | None = None
    """The attention weights [B, H, T, T], where the pass kept them (`Capture.keep_weights`)."""
    target: torch.Tensor | None = None
    """The tensor whose gradient the layer's hook reports: the weights where they are kept
    (autograd forms ∂L/∂A for the softmax's backward anyway), else `out`."""


@dataclass
class Capture:
    """Collects every layer's `Captured` in a pass; with `on_grad` set before the backward, it
    is called with (layer, gradient) as each layer's gradient arrives: ∂L/∂A [B, H, T, T] for
    a layer whose weights were kept by the model's own eager attention, else ∂L/∂out
    [B, T, H, d]. A layer whose weights reportgen's own attention kept (`kept_attention`)
    reports S = A ⊙ ∂L/∂A to `on_product` instead, which its backward forms anyway."""

    layers: dict[int, Captured] = field(default_factory=dict)
    on_grad: Callable[[int, torch.Tensor], None] | None = None
    on_product: Callable[[int, torch.Tensor], None] | None = None
    """Called with (layer, S) [B, H, T, T] from inside the backward; S is valid during the call
    only (the backward goes on with it in place)."""
    hooks: bool = False
    """Register gradient hooks on the layers' outputs (a pass that will be differentiated)."""
    keep_weights: bool = False
    """Run the layers' eager attention and keep its weights (which its backward keeps anyway)
    instead of the fast kernel: for short inputs, where recomputing them costs more than
    keeping them."""
    on_layer: Callable[[int, Captured], None] | None = None
    """Called with each layer's capture as the forward makes it, instead of keeping it in
    `layers` (a pass without gradients reduces a layer at once, and its weights go before the
    next layer's are made)."""
    lengths: tuple[int, ...] = ()
    """Each batch row's real length (right padding), for `causal_only`."""
    _causal: dict[int, bool] = field(default_factory=dict)

    def causal_only(self, mask: torch.Tensor) -> bool:
        """Whether, on every row's real queries, `mask` allows exactly the keys up to the query
        (a causal mask with right padding, no window, no bias): then the kernel's own causal
        path computes those rows exactly (pad rows differ, and no real row ever reads them).
        Checked once per mask tensor (the layers share it)."""
        key = id(mask)
        if key not in self._causal:
            width = mask.shape[-1]
            tril = torch.ones(mask.shape[-2], width, dtype=torch.bool, device=mask.device).tril()
            self._causal[key] = len(self.lengths) == mask.shape[0] and all(
                bool(((mask[b, :, :n] == 0) == tril[:n]).all()) for b, n in enumerate(self.lengths)
            )
        return self._causal[key]

    def _grad(self, layer: int, grad: torch.Tensor) -> None:
        if self.on_grad is not None:
            self.on_grad(layer, grad)

    def _product(self, layer: int, product: torch.Tensor) -> None:
        if self.on_product is not None:
            self.on_product(layer, product)
        elif self.on_grad is not None:
            raise RuntimeError(
                f"layer {layer}'s attention reports A ⊙ ∂L/∂A, not ∂L/∂A: set Capture.on_product"
            )


@dataclass(frozen=True)
class Knock:
    """Edges to block before the softmax: in batch row b and layer l, head h's queries at
    positions `queries[b]` may not read keys at positions `keys[b]` where `heads[b, l, h]`."""

    heads: torch.Tensor
    """bool [rows, layers, heads]."""
    queries: torch.Tensor
    """bool [rows, T]."""
    keys: torch.Tensor
    """bool [rows, T]."""


@dataclass
class _Control:
    gates: torch.Tensor | None
    record: bool
    capture: Capture | None = None
    replace: torch.Tensor | None = None
    knock: Knock | None = None
    outputs: dict[int, torch.Tensor] | None = None
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
    gates: torch.Tensor | None = None,
    record: bool = False,
    capture: Capture | None = None,
    replace: torch.Tensor | None = None,
    knock: Knock | None = None,
    outputs: dict[int, torch.Tensor] | None = None,
) -> Iterator[Recorded]:
    """Within the block, attention layer l scales head h of batch row b by gates[b, l, h], and
    (with record) its attention weights [B, H, Tq, Tk] are recorded, in layer order, in the
    yielded list. With `capture`, layers run scaled_dot_product_attention where the load-time
    probe allowed it (no T × T weights at all) and leave their inputs in the capture instead.
    With `replace` [B, L, H, d], a gated head's output becomes g·out + (1 − g)·replace at every
    position (mean and resample ablation; [B, L, T, H, d]: per position, patching from a
    counterfactual input); with `knock`, its edges are masked before the
    softmax; `outputs` receives each layer's output [B, T, H, d] before any gate.
    One forward pass per block."""
    control = _Control(gates, record, capture, replace, knock, outputs)
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    control = _ACTIVE.get()
    if control is not None and control.capture is not None:
        return _captured_attention(control, module, query, key, value, attention_mask, kwargs)
    layer = -1 if control is None else _layer(module, control)
    if control is not None and control.knock is not None:
        attention_mask = _knocked(control.knock, layer, attention_mask, query, key)
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
    if control is None:
        return out, weights
    if control.record:
        control.weights[layer] = weights
    if control.outputs is not None:
        control.outputs[layer] = out.detach()
    return _gated(control, module, layer, out), weights


def _knocked(
    knock: Knock,
    layer: int,
    mask: torch.Tensor | None,
    query: torch.Tensor,
    key: torch.Tensor,
) -> torch.Tensor:
    """The additive (or boolean) mask with the knocked-out edges of this layer's chosen heads
    blocked: [B, H, Tq, Tk]. Blocked entries get the dtype's lowest value (float32's in a float64
    model, as `reportgen_mask` does), never -inf, so no row's softmax becomes NaN."""
    tq, tk = query.shape[-2], key.shape[-2]
    heads = knock.heads[:, layer].to(query.device)
    block = (
        heads[:, :, None, None]
        & knock.queries[:, None, :tq, None].to(query.device)
        & knock.keys[:, None, None, :tk].to(query.device)
    )
    if mask is not None and mask.dtype == torch.bool:
        return mask[:, :, :, :tk] & ~block
    dtype = query.dtype if mask is None else mask.dtype
    low = torch.finfo(torch.float32 if dtype == torch.float64 else dtype).min
    base = (
        torch.zeros((1, 1, tq, tk), dtype=dtype, device=query.device)
        if mask is None
        else mask[:, :, :, :tk]
    )
    return (base + block.to(dtype) * low).clamp(min=low)


def _gated(
    control: _Control, module: torch.nn.Module, layer: int, out: torch.Tensor
) -> torch.Tensor:
    if control.gates is not None:
        heads = control.gates.shape[-1]
        if out.dim() != 4 or out.shape[2] != heads:
            raise ModelError(
                f"{type(module).__name__} returns attention output of shape {tuple(out.shape)}; "
                "reportgen expects [batch, tokens, heads, head_dim]"
            )
        gate = control.gates[:, layer, :, None].to(out.dtype)[:, None]
        if control.replace is None:
            out = out * gate
        else:
            out = out * gate + (1 - gate) * _replacement(control.replace, layer, out)
    return out


def _replacement(replace: torch.Tensor, layer: int, out: torch.Tensor) -> torch.Tensor:
    """What a gated head's output [B, T, H, d] moves to: `replace` [B, L, H, d] is one vector
    per head at every position, [B, L, T', H, d] (T' ≥ T) one per position."""
    if replace.dim() == 4:
        return replace[:, layer].to(out.dtype)[:, None]
    return replace[:, layer, : out.shape[1]].to(out.dtype)


def _captured_attention(
    control: _Control,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    """A layer of a captured pass: the fast kernel where the probe allowed it (its causal path
    where the mask is plain causal), else the model's eager attention; inputs and output kept
    for the tiles, and the weights too where the capture keeps them."""
    capture = control.capture
    assert capture is not None
    out, weights = None, None
    layer = _layer(module, control)
    standard = getattr(module, FUSED_FLAG, False) and not _OWN_EAGER.get()
    reports = False  # whether the attention itself reports ∂L/∂A in the backward
    if standard and not capture.keep_weights:
        causal = (
            attention_mask is not None
            and query.shape[-2] == key.shape[-2]
            and bool(getattr(module, "is_causal", False))
            and capture.causal_only(attention_mask)
        )
        mask = None if causal else attention_mask
        out = sdpa_attention(query, key, value, mask, causal, **kwargs)
    elif standard and capture.hooks and torch.is_grad_enabled():
        found = kept_attention(
            query, key, value, attention_mask, partial(capture._product, layer), **kwargs
        )
        if found is not None:
            out, weights = found
            reports = True
    elif standard:
        found = fused_attention(query, key, value, attention_mask, **kwargs)
        if found is not None:
            out, weights = found
    fast = out is not None and weights is None
    if out is None:
        out, weights = eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    keep = capture.keep_weights and weights is not None
    # The gradient the backward is asked for: the query where the attention reports ∂L/∂A
    # itself (the backward then stops at the lowest layer's attention), else what the hook is on.
    target = query if reports else weights if keep and weights is not None else out
    capture.layers[layer] = Captured(
        module,
        query.detach(),
        key.detach(),
        value.detach(),
        attention_mask,
        kwargs,
        out,
        fast,
        weights.detach() if keep and weights is not None else None,
        target,
    )
    if capture.hooks and not reports and target.requires_grad:
        target.register_hook(lambda grad, layer=layer: capture._grad(layer, grad))
    if capture.on_layer is not None:
        capture.on_layer(layer, capture.layers.pop(layer))
    return _gated(control, module, layer, out), None


# Keyword arguments the standard eager attention receives and ignores (a None or False value of
# any other argument is also harmless; anything else, e.g. softcap or s_aux, needs the model's).
_IGNORED_KWARGS = frozenset(
    {"position_ids", "cache_position", "use_cache", "output_attentions", "is_causal"}
)


def _standard_call(
    attention_mask: torch.Tensor | None, dropout: float, kwargs: dict[str, Any]
) -> bool:
    """Whether a call is plain softmax(q·kᵀ·scaling + mask)·v: no dropout, nothing beyond the
    arguments the standard eager attention ignores, an additive (float) mask."""
    if dropout or any(
        v is not None and v is not False and k not in _IGNORED_KWARGS for k, v in kwargs.items()
    ):
        return False
    return attention_mask is None or attention_mask.dtype != torch.bool


def sdpa_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    causal: bool = False,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> torch.Tensor | None:
    """softmax(q·kᵀ·scaling + mask)·v by torch's fused kernel (no T × T weights kept for the
    backward), as the standard eager attention returns it ([B, T, H, D]); with `causal` and no
    mask, the kernel's causal path. None for a call with anything else in it."""
    if not _standard_call(attention_mask, dropout, kwargs):
        return None
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        is_causal=causal and mask is None,
        scale=query.shape[-1] ** -0.5 if scaling is None else scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous()


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
    weights = fused_weights(query, key, attention_mask, scaling, dropout, **kwargs)
    if weights is None:
        return None
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each value head serves a group
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    return _weighted_values(weights, value).transpose(1, 2), weights


def _weighted_values(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """weights · value [B, H, Tq, D], written (valueᵀ · weightsᵀ)ᵀ: the head width D as the
    product's rows (on the CPU, torch's batched [T, T] × [T, D] product runs at a quarter of the
    speed of [D, T] × [T, T] for small D; see `kept_attention`)."""
    return torch.matmul(value.transpose(-1, -2), weights.transpose(-1, -2)).transpose(-1, -2)


def kept_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    on_product: Callable[[torch.Tensor], None],
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`fused_attention` for a pass whose backward needs S = A ⊙ ∂L/∂A: the same values, the
    weights returned detached, and `on_product` called with S [B, H, Tq, Tk] as the backward
    forms it (valid during the call only). Its own backward (`_KeptAttention`) writes every
    product with a head-width side so that side is the rows: on the CPU, torch's batched
    product of [T, T] by [T, d] runs at a quarter of the speed of [d, T] by [T, T] for small d
    (the demo model's d = 8: 1.8 against 0.44 ms at batch 8, T 128). None for a call with
    anything else in it."""
    if not _standard_call(attention_mask, dropout, kwargs):
        return None
    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: each key/value head serves a group
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out, weights = _KeptAttention.apply(query, key, value, attention_mask, scale, on_product)
    return out.transpose(1, 2), weights


class _KeptAttention(torch.autograd.Function):
    """softmax(q·kᵀ·scale + mask)·v and the weights (not differentiable: S = A ⊙ ∂L/∂A goes to
    `on_product` in the backward instead)."""

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
        on_product: Callable[[torch.Tensor], None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = fused_weights(query, key, mask, scale)
        assert weights is not None  # `kept_attention` checked the call is standard
        ctx.save_for_backward(query, key, value, weights)
        ctx.scale, ctx.on_product = scale, on_product
        ctx.mark_non_differentiable(weights)
        ctx.set_materialize_grads(False)  # no zeros of the weights' size for their gradient
        return _weighted_values(weights, value), weights

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor | None, _: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        if grad is None:  # the loss does not depend on this layer's output
            return None, None, None, None, None, None
        query, key, value, weights = ctx.saved_tensors
        scaled = query * ctx.scale  # as the forward scaled it
        grad_value = torch.matmul(grad.transpose(-1, -2), weights).transpose(-1, -2)
        product = torch.matmul(grad, value.transpose(-1, -2)).mul_(weights)  # S = A ⊙ ∂L/∂A
        ctx.on_product(product)
        # The softmax's backward from S: ∂L/∂scores = S − A · Σ_keys S (in place of S).
        wide = torch.float32 if product.element_size() < 4 else None
        rows = product.sum(-1, keepdim=True, dtype=wide).to(product.dtype)
        grad_scores = product.addcmul_(weights, rows, value=-1)
        grad_key = torch.matmul(scaled.transpose(-1, -2), grad_scores).transpose(-1, -2)
        grad_query = torch.matmul(key.transpose(-1, -2), grad_scores.transpose(-1, -2))
        return grad_query.transpose(-1, -2) * ctx.scale, grad_key, grad_value, None, None, None


def fused_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> torch.Tensor | None:
    """`fused_attention`'s weights alone (what the tiles recompute: no weights · v product)."""
    if not _standard_call(attention_mask, dropout, kwargs):
        return None
    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: each key/value head serves a group
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # Scaling q (B·H·T·D values) instead of the scores (B·H·T·T) saves a full-size temporary in
    # the forward and another in the backward; the mask goes in with the product.
    scores = _masked_scores(query * scale, key.transpose(-1, -2), attention_mask)
    if query.element_size() < 4:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.softmax(scores, dim=-1)


def _masked_scores(
    query: torch.Tensor, key_t: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """q · kᵀ + mask, [B, H, Tq, Tk]: where the mask is of the scores' dtype, each batch row's
    mask is the product's starting value (one baddbmm, 10% faster than the product and then an
    addition over the T × T scores on the CPU)."""
    if attention_mask is None:
        return torch.matmul(query, key_t)
    mask = attention_mask[:, :, :, : key_t.shape[-1]]
    batch, heads, rows, _ = query.shape
    plain = (
        mask.dim() != 4
        or mask.dtype != query.dtype
        or mask.shape[0] not in (1, batch)
        or mask.shape[1] not in (1, heads)
        or (torch.is_grad_enabled() and (query.requires_grad or key_t.requires_grad))
    )  # (a product into `out` has no gradient)
    if plain:
        return torch.matmul(query, key_t).add_(mask)
    scores = query.new_empty(batch, heads, rows, key_t.shape[-1])
    for b in range(batch):
        row = mask[b if mask.shape[0] == batch else 0]
        torch.baddbmm(row.expand(heads, rows, -1), query[b], key_t[b], out=scores[b])
    return scores


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
