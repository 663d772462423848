"""The saliency engine: the one package that imports torch and transformers.

    loading     resolve a model folder or cached hub id offline, load it, probe its attention
    attention   the registered attention function: the model's eager attention, gated, recorded
    encoding    an Example as token ids, spans and loss positions for the model's task
    objectives  one forward pass and each row's objective
    methods     every method's dense reference function (--engine eager), a registry
    tiles       the tiled engine: each method a block of query rows at a time
    norms       attn-norm's per-head output projections and value norms
    rollout     attention rollout and gradient rollout through the layers
    patching    attribution patching (an estimate per head), the top heads patched for real
    ablation    the top-k heads zeroed against random heads
    runner      batching and windows: Results in input order
    memory      process-wide allocator tuning

It produces the torch-free records of `reportgen.data`.
"""

from reportgen.engine.loading import LoadedModel, load_model
from reportgen.engine.memory import keep_freed_memory
from reportgen.engine.runner import compute, compute_batch
from reportgen.modelpath import demo_model_path

__all__ = [
    "LoadedModel",
    "compute",
    "compute_batch",
    "demo_model_path",
    "keep_freed_memory",
    "load_model",
]
