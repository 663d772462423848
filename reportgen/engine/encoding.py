"""Encoding: an Example as model input for the model's task, with segment spans as token
ranges (from the tokenizer's offset mapping, so they are right for sub-word tokenizers too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.data.examples import Example
from reportgen.data.results import TokenSpan
from reportgen.data.tasks import Task
from reportgen.engine.loading import LoadedModel
from reportgen.errors import SaliencyError


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
