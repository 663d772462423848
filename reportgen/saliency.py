"""Saliency: per-layer, per-head, token × token scores for a list of examples.

Methods (rows are queries i, columns keys j, as in Hugging Face's attentions):
- `attn-grad`: |A ⊙ ∂L/∂A| (Wang et al. 2023, arXiv:2305.14160), every head from one forward and
  one backward pass.
- `attention`: the raw attention weights A.
- `attattr`: integrated gradients on attention (Hao et al. 2021, arXiv:2004.11207): layer l's
  attention is scaled by α = k/m while the other layers run normally, and
  S_l = A_l ⊙ mean_k ∂L(α_k A_l)/∂A_l. Signed; every (layer, step) pair is a row of one batch.

The objective L depends on the task (see `Task`): −log p(target) for language models and
classifiers, −cos(segment 1, segment 2) of mean-pooled embeddings for a bare encoder. Targets not
given are the model's own prediction, fixed by the unscaled forward pass.

torch is imported inside the functions that run the model, so the data types and head metrics
here can be used (by records, charts, the site) without it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen.inputs import Example
from reportgen.settings import Settings

if TYPE_CHECKING:
    import torch

    from reportgen.models import LoadedModel

METHODS = {
    "attn-grad": "|A ⊙ ∂L/∂A| per head, one forward and one backward pass",
    "attention": "raw attention weights",
    "attattr": "integrated gradients on attention (A ⊙ mean_k ∂L(αA)/∂A), signed",
}


class SaliencyError(ValueError):
    """An input or option the saliency stage cannot work with; the message names it."""


@dataclass(frozen=True)
class TokenSpan:
    """A named segment as a token range [start, end)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class Ablation:
    """Objective value with the top-k grid heads zeroed, next to k random heads zeroed."""

    heads: tuple[tuple[int, int], ...]
    """The zeroed top heads, (layer, head), 0-based, strongest first."""
    value: float
    """Objective value of the intact model."""
    value_top: float
    value_random: float
    """Mean over `draws` seeded random sets of k heads."""
    draws: int

    @property
    def delta_top(self) -> float:
        return self.value_top - self.value

    @property
    def delta_random(self) -> float:
        return self.value_random - self.value


@dataclass(frozen=True)
class Result:
    """One example's saliency and everything the report shows about it."""

    example: Example
    tokens: tuple[str, ...]
    spans: tuple[TokenSpan, ...]
    target: str | None
    """Target text (given, or predicted when `target_given` is false); None for a bare encoder."""
    target_given: bool
    predicted: str | None
    """The model's top prediction at the prediction position (label name for classifiers)."""
    value: float
    """p(target) (a multi-token target's joint probability), or the cosine for a bare encoder."""
    loss: float
    prediction_position: int | None
    scores: np.ndarray
    """float32 [layers, heads, T, T]; rows are queries, columns keys."""
    head_scores: Mapping[str, np.ndarray]
    """float32 [layers, heads] shares summing to 1, per metric name."""
    ablation: Ablation | None


# --- head metrics (numpy only) -------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A way to score heads: total, prediction, or flow from keys in SRC to queries in DST."""

    name: str
    src: str | None = None
    dst: str | None = None

    @property
    def kind(self) -> str:
        return "flow" if self.src is not None else self.name


def parse_metric(name: str) -> Metric:
    """`total`, `prediction` or `flow:SRC->DST`; anything else is an error listing these."""
    if name in ("total", "prediction"):
        return Metric(name)
    if name.startswith("flow:") and "->" in name:
        src, _, dst = name[len("flow:") :].partition("->")
        if src.strip() and dst.strip():
            return Metric(f"flow:{src.strip()}->{dst.strip()}", src.strip(), dst.strip())
    raise SaliencyError(
        f"unknown metric '{name}'. Available: total, prediction, flow:SRC->DST (e.g. flow:ENV->LAN)"
    )


def head_scores(
    scores: np.ndarray,
    metric: Metric,
    spans: Sequence[TokenSpan],
    prediction_position: int | None,
    example_id: str = "",
) -> np.ndarray:
    """Each head's share of the metric's saliency mass, float32 [layers, heads], summing to 1."""
    if metric.kind == "total":
        part = scores
    elif metric.kind == "prediction":
        if prediction_position is None:
            raise SaliencyError(
                f"input '{example_id}': metric 'prediction' needs a prediction position, which a "
                "bare encoder has not; use total or flow:SRC->DST"
            )
        part = scores[:, :, prediction_position : prediction_position + 1, :]
    else:
        by_name = {s.name: s for s in spans}
        src, dst = by_name[metric.src or ""], by_name[metric.dst or ""]
        part = scores[:, :, dst.start : dst.end, src.start : src.end]
    # Slice first, then take magnitudes and add up each head's along one contiguous axis: numpy
    # sums that pairwise (relative error ~1e-7 in float32), twice as fast as a float64 sum.
    magnitudes = np.abs(part)
    mass = magnitudes.reshape(*magnitudes.shape[:2], -1).sum(axis=-1).astype(np.float64)
    total = mass.sum()
    if not total > 0:
        raise SaliencyError(
            f"input '{example_id}': metric {metric.name} carries no saliency in any head (for a "
            "causal model, keys must come before queries); choose another metric"
        )
    return (mass / total).astype(np.float32)


def check_metric(metric: Metric, examples: Iterable[Example]) -> None:
    """Fail before any work if a flow metric names a segment an input lacks."""
    if metric.kind != "flow":
        return
    for ex in examples:
        names = [s.name for s in ex.segments if s.name]
        for needed in (metric.src, metric.dst):
            if needed not in names:
                raise SaliencyError(
                    f"{ex.source}: input '{ex.id}' has no segment '{needed}' (its segments: "
                    f"{', '.join(names) or 'none'}), which metric {metric.name} needs"
                )


def check_method(method: str) -> None:
    if method not in METHODS:
        raise SaliencyError(f"unknown method '{method}'. Available: {', '.join(METHODS)}")


# --- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """An example as model input: token ids, display tokens, spans and what the loss reads."""

    example: Example
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    spans: tuple[TokenSpan, ...]
    target_ids: tuple[int, ...] | None
    """Target token ids (LMs) or the label index (classifiers, one id); None: use the prediction."""
    loss_positions: tuple[int, ...]
    """Positions whose logits score target_ids (LMs only)."""
    prediction_position: int | None


def encode(example: Example, lm: LoadedModel, limit: int | None, truncate: bool) -> Encoded:
    """Tokenize an example for the model's task, with segment spans from the offset mapping."""
    from reportgen.models import Task

    tok, where = lm.tokenizer, f"{example.source}: input '{example.id}'"
    text = example.text
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    shown_text = text
    target_ids: tuple[int, ...] | None = None
    loss_positions: tuple[int, ...] = ()
    prediction_position: int | None
    if lm.task is Task.CAUSAL_LM:
        prediction_position = len(ids) - 1
        if example.target is not None:
            full_text = f"{text} {example.target}"
            full = tok(full_text, return_offsets_mapping=True)
            if list(full["input_ids"][: len(ids)]) != ids:
                raise SaliencyError(
                    f"{where}: the tokenizer merges the target '{example.target}' with the end of "
                    "the text; end the text at a token boundary"
                )
            target_ids = tuple(full["input_ids"][len(ids) :])
            _check_target(tok, target_ids, example.target, where)
            ids += target_ids[:-1]
            offsets += [tuple(o) for o in full["offset_mapping"][len(offsets) : len(ids)]]
            shown_text = full_text
        loss_positions = tuple(range(prediction_position, len(ids)))
    elif lm.task is Task.MASKED_LM:
        mask = tok.mask_token_id
        positions = tuple(i for i, t in enumerate(ids) if t == mask)
        if mask is None or not positions:
            raise SaliencyError(
                f"{where}: no mask token {tok.mask_token or ''} in the text; a masked LM needs "
                "one mask token per target token"
            )
        prediction_position, loss_positions = positions[0], positions
        if example.target is not None:
            target_ids = tuple(tok(example.target, add_special_tokens=False)["input_ids"])
            _check_target(tok, target_ids, example.target, where)
            if len(target_ids) != len(positions):
                raise SaliencyError(
                    f"{where}: target '{example.target}' is {len(target_ids)} token(s) but the "
                    f"text has {len(positions)} mask token(s); use one mask per target token"
                )
    elif lm.task is Task.CLASSIFICATION:
        prediction_position = 0 if ids and ids[0] == tok.cls_token_id else len(ids) - 1
        if example.target is not None:
            target_ids = (_label_index(lm, example.target, where),)
    else:
        prediction_position = None
        if len(example.segments) < 2:
            raise SaliencyError(
                f"{where}: a bare encoder's objective compares the embeddings of the first two "
                f"segments, and this input has {len(example.segments)}; give it two segments"
            )
    ids, offsets, loss_positions, prediction_position = _fit(
        ids, offsets, loss_positions, prediction_position, lm, limit, truncate, where
    )
    tokens = tuple(
        shown_text[a:b] if b > a else tok.convert_ids_to_tokens(i)
        for i, (a, b) in zip(ids, offsets, strict=True)
    )
    spans = _spans(example, offsets)
    if lm.task is Task.ENCODER and (len(spans) < 2 or any(s.end <= s.start for s in spans[:2])):
        raise SaliencyError(f"{where}: the first two segments must each keep at least one token")
    return Encoded(
        example, tuple(ids), tokens, spans, target_ids, loss_positions, prediction_position
    )


def _check_target(tok: Any, target_ids: Sequence[int], target: str, where: str) -> None:
    if not target_ids:
        raise SaliencyError(f"{where}: target '{target}' encodes to no tokens")
    if tok.unk_token_id is not None and tok.unk_token_id in target_ids:
        raise SaliencyError(
            f"{where}: target '{target}' is not in the model's vocabulary (it encodes to "
            f"{tok.unk_token}); choose a target the tokenizer knows"
        )


def _label_index(lm: LoadedModel, target: str, where: str) -> int:
    config = lm.model.config
    labels = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    if target in labels:
        return labels[target]
    if target.isdigit() and int(target) < config.num_labels:
        return int(target)
    names = ", ".join(sorted(labels, key=labels.__getitem__)) or f"0..{config.num_labels - 1}"
    raise SaliencyError(f"{where}: label '{target}' is not one of the model's labels: {names}")


def _fit(
    ids: list[int],
    offsets: list[tuple[int, int]],
    loss_positions: tuple[int, ...],
    prediction_position: int | None,
    lm: LoadedModel,
    limit: int | None,
    truncate: bool,
    where: str,
) -> tuple[list[int], list[tuple[int, int]], tuple[int, ...], int | None]:
    """Enforce the token limit: fail, or cut the start (causal LMs) or the end (others)."""
    from reportgen.models import Task

    limit = limit or lm.max_tokens
    if limit is None or len(ids) <= limit:
        return ids, offsets, loss_positions, prediction_position
    if not truncate:
        raise SaliencyError(
            f"{where}: {len(ids)} tokens, more than the limit of {limit}; shorten it, raise "
            "--max-tokens (up to the model's limit), or pass --truncate"
        )
    cut = len(ids) - limit if lm.task is Task.CAUSAL_LM else 0
    kept = range(cut, cut + limit)
    if any(p not in kept for p in loss_positions) or (
        prediction_position is not None and prediction_position not in kept
    ):
        raise SaliencyError(f"{where}: truncating to {limit} tokens would cut off the target")
    shift = tuple(p - cut for p in loss_positions)
    pred = None if prediction_position is None else prediction_position - cut
    return ids[cut : cut + limit], offsets[cut : cut + limit], shift, pred


def _spans(example: Example, offsets: Sequence[tuple[int, int]]) -> tuple[TokenSpan, ...]:
    spans = []
    for name, start, end in example.char_spans():
        inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if name and inside:
            spans.append(TokenSpan(name, inside[0], inside[-1] + 1))
    return tuple(spans)


# --- running the model -------------------------------------------------------------------------


@dataclass
class _Pass:
    """Outputs of one forward pass over a batch of rows."""

    losses: torch.Tensor
    values: torch.Tensor
    targets: list[tuple[int, ...] | None]
    predicted: list[tuple[int, ...] | None]
    weights: list[torch.Tensor]


def _forward(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    gates: torch.Tensor | None = None,
    record: bool = False,
) -> _Pass:
    """Run right-padded rows (explicit position ids) and evaluate each row's objective."""
    import torch

    from reportgen.models import Task, attention_control

    width = max(len(r.ids) for r in rows)
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row.ids)] = torch.tensor(row.ids)
        mask[b, : len(row.ids)] = 1
    kwargs: dict[str, torch.Tensor] = {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": mask.to(lm.device),
    }
    if lm.accepts_position_ids:
        kwargs["position_ids"] = torch.arange(width).expand(len(rows), -1).to(lm.device)
    with attention_control(gates=gates, record=record) as weights:
        output = lm.model(**kwargs)
    losses: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    targets: list[tuple[int, ...] | None] = []
    predicted: list[tuple[int, ...] | None] = []
    if lm.task is Task.ENCODER:
        hidden = _at_least_float32(output.last_hidden_state)
        for b, row in enumerate(rows):
            first, second = (hidden[b, s.start : s.end].mean(0) for s in row.spans[:2])
            cos = torch.nn.functional.cosine_similarity(first, second, dim=0)
            losses.append(-cos)
            values.append(cos)
            targets.append(None)
            predicted.append(None)
    else:
        logp = torch.log_softmax(_at_least_float32(output.logits), dim=-1)
        for b, row in enumerate(rows):
            scored = (
                logp[b] if lm.task is Task.CLASSIFICATION else logp[b, list(row.loss_positions)]
            )
            best = scored.argmax(-1).reshape(-1)
            target = row.target_ids if row.target_ids is not None else tuple(best.tolist())
            index = torch.tensor(target, device=scored.device)
            if lm.task is Task.CLASSIFICATION:
                loss = -scored[index].sum()
            else:
                loss = -scored[torch.arange(len(target), device=scored.device), index].sum()
            losses.append(loss)
            values.append(torch.exp(-loss))
            targets.append(target)
            predicted.append(tuple(best.tolist()))
    return _Pass(torch.stack(losses), torch.stack(values).detach(), targets, predicted, weights)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs are scored in float32; float32 and float64 stay as they are."""
    return x.float() if x.element_size() < 4 else x


def _target_text(lm: LoadedModel, ids: tuple[int, ...] | None) -> str | None:
    from reportgen.models import Task

    if ids is None:
        return None
    if lm.task is Task.CLASSIFICATION:
        return str(lm.model.config.id2label.get(ids[0], ids[0]))
    return str(lm.tokenizer.decode(list(ids))).strip()


def _attn_grad(lm: LoadedModel, rows: Sequence[Encoded]) -> tuple[_Pass, list[Any]]:
    """Base pass with gradients: A ⊙ ∂L/∂A per layer, [L][B, H, T, T], signed."""
    import torch

    run = _forward(lm, rows, record=True)
    grads = torch.autograd.grad(run.losses.sum(), run.weights)
    # In place: the gradients are fresh tensors of ours, and on CPU a new [B, H, T, T] tensor per
    # layer costs about as much as the product itself.
    return run, [g.mul_(a.detach()) for a, g in zip(run.weights, grads, strict=True)]


def _attattr(
    lm: LoadedModel, rows: Sequence[Encoded], base: _Pass, steps: int, budget: int
) -> list[Any]:
    """Integrated gradients on attention: each input's (layer, step) rows batched, `budget` rows
    per pass. Returns [L][B, H, T, T] (signed)."""
    import torch

    layers, heads = lm.num_layers, lm.num_heads
    fixed = [replace(r, target_ids=t) for r, t in zip(rows, base.targets, strict=True)]
    # One input per pass (no padding), its layers in order, so that a pass's backward stops at
    # the lowest layer it holds: a row scaled at layer l needs dL/dA_l only.
    total = [torch.zeros_like(a, dtype=torch.float64) for a in base.weights]
    steps_of = [(layer, k) for layer in range(layers) for k in range(1, steps + 1)]
    for b, row in enumerate(fixed):
        n = len(row.ids)
        for start in range(0, len(steps_of), budget):
            chunk = steps_of[start : start + budget]
            gates = torch.ones(len(chunk), layers, heads, dtype=lm.dtype, device=lm.device)
            for r, (layer, k) in enumerate(chunk):
                gates[r, layer] = k / steps
            run = _forward(lm, [row] * len(chunk), gates=gates, record=True)
            wanted = sorted({layer for layer, _ in chunk})
            found = torch.autograd.grad(run.losses.sum(), [run.weights[layer] for layer in wanted])
            grads = dict(zip(wanted, found, strict=True))
            for r, (layer, k) in enumerate(chunk):
                # Head outputs are scaled by alpha, so dL/dA = alpha * dF/dX at X = alpha * A.
                total[layer][b, :, :n, :n] += grads[layer][r].double() / (k / steps)
    return [(a.detach().double() * t / steps) for a, t in zip(base.weights, total, strict=True)]


def _ablate(
    lm: LoadedModel,
    rows: Sequence[Encoded],
    base: _Pass,
    grids: Sequence[np.ndarray],
    settings: Settings,
) -> list[Ablation]:
    """Zero the top-k grid heads, and `draws` seeded random sets of k heads, in one batch."""
    import torch

    layers, heads, k = lm.num_layers, lm.num_heads, settings.ablate_k
    if not 0 < k < layers * heads:
        raise SaliencyError(f"--ablate-k must be between 1 and {layers * heads - 1}, got {k}")
    expanded, gate_rows, chosen = [], [], []
    for row, target, grid in zip(rows, base.targets, grids, strict=True):
        top = np.argsort(-grid.reshape(-1), kind="stable")[:k]
        rng = np.random.default_rng([settings.seed, zlib.crc32(row.example.id.encode())])
        sets = [top] + [
            rng.choice(layers * heads, k, replace=False) for _ in range(settings.ablate_draws)
        ]
        for heads_off in sets:
            gate = torch.ones(layers * heads, dtype=lm.dtype)
            gate[torch.as_tensor(heads_off)] = 0
            gate_rows.append(gate.reshape(layers, heads))
            expanded.append(replace(row, target_ids=target))
        chosen.append(tuple((int(h) // heads, int(h) % heads) for h in top))
    values: list[float] = []
    budget = max(1, settings.batch_size) * (1 + settings.ablate_draws)
    with torch.no_grad():
        for start in range(0, len(expanded), budget):
            gates = torch.stack(gate_rows[start : start + budget]).to(lm.device)
            values += _forward(lm, expanded[start : start + budget], gates=gates).values.tolist()
    per = 1 + settings.ablate_draws
    out = []
    for b, heads_top in enumerate(chosen):
        block = values[b * per : (b + 1) * per]
        out.append(
            Ablation(
                heads_top,
                float(base.values[b]),
                block[0],
                float(np.mean(block[1:])),
                settings.ablate_draws,
            )
        )
    return out


def compute_batch(
    lm: LoadedModel, batch: Sequence[Encoded], settings: Settings, ablate: bool = True
) -> list[Result]:
    """Saliency, head scores and (optionally) the ablation check for one batch of examples."""
    import torch

    metric = parse_metric(settings.metric)
    if settings.method == "attention":
        with torch.no_grad():
            base = _forward(lm, batch, record=True)
        per_layer = [w.detach() for w in base.weights]
    else:
        base, per_layer = _attn_grad(lm, batch)
        if settings.method == "attattr":
            budget = max(1, settings.batch_size) * settings.steps
            per_layer = _attattr(lm, batch, base, settings.steps, budget)
    results = []
    for b, row in enumerate(batch):
        n = len(row.ids)
        # Each layer's block is copied (and cast) straight into the example's array, taking
        # magnitudes on the way for attn-grad: no [B, L, H, T, T] stack, no second pass.
        scores = np.empty((len(per_layer), lm.num_heads, n, n), dtype=np.float32)
        into = torch.from_numpy(scores)
        for layer, part in enumerate(per_layer):
            block = part[b, :, :n, :n]
            if settings.method != "attn-grad":
                into[layer].copy_(block)
            elif block.dtype == into.dtype:
                torch.abs(block, out=into[layer])
            else:
                into[layer].copy_(block.abs())
        names = dict.fromkeys(["total", metric.name])
        if row.prediction_position is not None:
            names["prediction"] = None
        grids = {
            name: head_scores(
                scores, parse_metric(name), row.spans, row.prediction_position, row.example.id
            )
            for name in names
        }
        results.append(
            Result(
                example=row.example,
                tokens=row.tokens,
                spans=row.spans,
                target=_target_text(lm, base.targets[b]),
                target_given=row.target_ids is not None,
                predicted=_target_text(lm, base.predicted[b]),
                value=float(base.values[b]),
                loss=float(base.losses[b].detach()),
                prediction_position=row.prediction_position,
                scores=scores,
                head_scores=grids,
                ablation=None,
            )
        )
    if ablate and settings.ablate_k > 0:
        grids_for_ablation = [r.head_scores[metric.name] for r in results]
        ablations = _ablate(lm, batch, base, grids_for_ablation, settings)
        results = [replace(r, ablation=a) for r, a in zip(results, ablations, strict=True)]
    return results


def compute(
    examples: Sequence[Example],
    lm: LoadedModel,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Result]:
    """Saliency for every example, in input order, one batch at a time (results stream out).

    All inputs are encoded and checked before the first pass, so a bad input fails fast; only
    their lengths are kept, and each window of inputs is encoded again when its turn comes (this
    costs ~0.1 ms per input and keeps memory flat in the number of inputs)."""
    from reportgen.models import Task

    check_method(settings.method)
    metric = parse_metric(settings.metric)
    check_metric(metric, examples)
    if settings.batch_size < 1:
        raise SaliencyError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.ablate_k > 0 and settings.ablate_draws < 1:
        raise SaliencyError(f"--ablate-draws must be at least 1, got {settings.ablate_draws}")
    if settings.steps < 1:
        raise SaliencyError(f"--steps must be at least 1, got {settings.steps}")
    if lm.max_tokens and settings.max_tokens and settings.max_tokens > lm.max_tokens:
        raise SaliencyError(
            f"--max-tokens {settings.max_tokens} exceeds the model's limit of {lm.max_tokens}"
        )
    if metric.kind == "prediction" and lm.task is Task.ENCODER:
        raise SaliencyError(
            "metric 'prediction' needs a prediction position, which a bare encoder has not; "
            "use total or flow:SRC->DST"
        )
    lengths = [len(encode(ex, lm, settings.max_tokens, settings.truncate).ids) for ex in examples]
    for first, last in _windows(lengths, lm, settings.batch_size):
        window = [
            encode(ex, lm, settings.max_tokens, settings.truncate) for ex in examples[first:last]
        ]
        # Batches of similar lengths pad less; results still leave in input order.
        order = sorted(range(len(window)), key=lambda i: len(window[i].ids))
        done: dict[int, Result] = {}
        for start in range(0, len(order), settings.batch_size):
            picked = order[start : start + settings.batch_size]
            batch = [window[i] for i in picked]
            done.update(zip(picked, compute_batch(lm, batch, settings), strict=True))
            if progress is not None:
                progress(len(batch))
        yield from (done[i] for i in range(len(window)))


WINDOW_BATCHES = 8
"""Inputs are sorted by length within windows of this many batches..."""
WINDOW_BYTES = 128 * 2**20
"""...or of this many bytes of scores, whichever is smaller (a window's results are held)."""


def _windows(lengths: Sequence[int], lm: LoadedModel, batch_size: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs [first, last) of inputs (given their token counts), each at most
    WINDOW_BATCHES batches and WINDOW_BYTES of float32 scores (but at least one input)."""
    first, size = 0, 0
    per_cell = 4 * lm.num_layers * lm.num_heads
    for index, length in enumerate(lengths):
        cost = per_cell * length**2
        if index > first and (
            index - first == WINDOW_BATCHES * batch_size or size + cost > WINDOW_BYTES
        ):
            yield first, index
            first, size = index, 0
        size += cost
    if lengths:
        yield first, len(lengths)
