"""attn-norm (Kobayashi et al. 2020, arXiv:2004.10102): ‖α_ij f_h(x_j)‖ per head, where
f_h(x_j) = v_j W_O^h is key j's value vector passed through head h's slice of the layer's
output projection: what head h actually moves from key j into query i (the output bias is
added once per position, outside the sum over keys, so it is left out).

The value vectors come from the captured pass (as the layer handed them to its attention, bias
included); the slice of the output projection from the attention module itself. Supported:
the attention classes in `SUPPORTED_CLASSES`, whose output projection reads the heads' outputs
directly, head-major (`o_proj`, or GPT-2's `c_proj` Conv1D), each checked in tests. Anything
else is refused by name rather than guessed: a family may gate or normalise the heads' output
before projecting it (Qwen3-Next gates it), which would make the norm wrong.
"""

from __future__ import annotations

import torch

from reportgen.engine.attention import Captured
from reportgen.errors import ModelError

SUPPORTED_CLASSES = frozenset(
    {
        "GPT2Attention",
        "LlamaAttention",
        "MistralAttention",
        "Qwen2Attention",
        "Qwen3Attention",
        "Gemma2Attention",
        "Phi3Attention",
    }
)
SUPPORTED = "GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma 2, Phi-3"


def head_projections(module: torch.nn.Module, heads: int, head_dim: int) -> torch.Tensor:
    """Each head's slice of the attention module's output projection, [H, d, E]: head h's
    output [d] times it is that head's share of the projected output (before the bias)."""
    name = type(module).__name__
    if _splittable(module):
        o_proj = getattr(module, "o_proj", None)
        if isinstance(o_proj, torch.nn.Linear):
            weight = o_proj.weight  # [E, H * d]: out = x Wᵀ
            if weight.shape[1] == heads * head_dim:
                return weight.T.reshape(heads, head_dim, weight.shape[0])
        else:
            # GPT-2's Conv1D, weight [H * d, E]: out = x W
            weight = getattr(module, "c_proj").weight  # noqa: B009
            if weight.shape[0] == heads * head_dim:
                return weight.reshape(heads, head_dim, weight.shape[1])
    raise ModelError(_refusal(name))


def _refusal(name: str) -> str:
    return (
        f"method attn-norm does not support {name} (supported: {SUPPORTED}, whose output "
        "projection is known to read the heads' outputs directly); use attn-grad, attention, "
        "attattr or the rollouts with this model"
    )


def _splittable(module: torch.nn.Module) -> bool:
    if type(module).__name__ not in SUPPORTED_CLASSES:
        return False
    o_proj = getattr(module, "o_proj", None)
    c_proj = getattr(module, "c_proj", None)
    return isinstance(o_proj, torch.nn.Linear) or (
        c_proj is not None and type(c_proj).__name__ == "Conv1D"
    )


def check_supported(model: torch.nn.Module) -> None:
    """Refuse, before any pass, a model whose attention layers (the modules tagged with their
    layer at load) attn-norm cannot split by head."""
    from reportgen.engine.attention import LAYER_ATTR

    for module in model.modules():
        if hasattr(module, LAYER_ATTR) and not _splittable(module):
            raise ModelError(_refusal(type(module).__name__))


def value_norms(captured: Captured) -> torch.Tensor:
    """‖v_j W_O^h‖ for every head h and key j, [B, H, T]; key/value head h // (H / H_kv)
    serves query head h, each query head with its own slice of the output projection."""
    value = captured.value  # [B, Hkv, T, d]
    heads = captured.query.shape[1]
    kv_heads, head_dim = value.shape[1], value.shape[3]
    proj = head_projections(captured.module, heads, head_dim).to(value.dtype)  # [H, d, E]
    group = heads // kv_heads
    per_head = value.repeat_interleave(group, dim=1) if group > 1 else value  # [B, H, T, d]
    moved = torch.matmul(per_head, proj[None])  # [B, H, T, E]
    return torch.linalg.vector_norm(moved, dim=-1)
