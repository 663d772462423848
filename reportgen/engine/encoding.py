"""Encoding: an Example as model input for the model's task, with segment spans as token
ranges (from the tokenizer's offset mapping, so they are right for sub-word tokenizers too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reportgen.data.examples import Example
from reportgen.data.results import TokenSpan, UnknownToken
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
    pieces: tuple[tuple[int, int], ...] = ()
    """Token ranges [start, end) of `ids` that the model reads as separate sequences: the two
    texts of a bi-encoder; empty means all of `ids` as one sequence."""
    contrast_ids: tuple[int, ...] | None = None
    """The contrast target's one token id (LMs) or label index (classifiers); None without one."""
    unknown: tuple[UnknownToken, ...] = ()
    """Each token the tokenizer does not know (its id is the unknown token's), in order, with
    the text it covers: what the model reads as `[UNK]`, and `tokens` shows as such."""

    @property
    def sequences(self) -> tuple[tuple[int, int], ...]:
        """The token ranges the model reads, one sequence each (at least one)."""
        return self.pieces or ((0, len(self.ids)),)


def encode(
    example: Example,
    lm: LoadedModel,
    limit: int | None,
    truncate: bool,
    pairing: str = "separate",
) -> Encoded:
    """Tokenize an example for the model's task, with segment spans from the offset mapping."""
    tok, where = lm.tokenizer, f"{example.source}: input '{example.id}'"
    if lm.task is Task.ENCODER and pairing == "separate":
        return _encode_pair(example, lm, limit, truncate, where)
    text = example.text
    ids, offsets = _tokenize(tok, text, strip_end=lm.task is Task.CAUSAL_LM)
    shown_text = text
    target_ids: tuple[int, ...] | None = None
    loss_positions: tuple[int, ...] = ()
    prediction_position: int | None
    if lm.task is Task.CAUSAL_LM:
        prediction_position = len(ids) - 1
        if example.target is not None:
            full_text = f"{text} {example.target}"
            full_ids, full_offsets = _tokenize(tok, full_text, strip_end=True)
            if full_ids[: len(ids)] != ids:
                raise SaliencyError(
                    f"{where}: the tokenizer merges the target '{example.target}' with the end of "
                    "the text; end the text at a token boundary"
                )
            target_ids = tuple(full_ids[len(ids) :])
            _check_target(tok, target_ids, example.target, where)
            ids += target_ids[:-1]
            offsets += full_offsets[len(offsets) : len(ids)]
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
        _check_two_segments(example, where, "joint")
    ids, offsets, loss_positions, prediction_position = _fit(
        ids, offsets, loss_positions, prediction_position, lm, limit, truncate, where
    )
    tokens = _shown(tok, shown_text, ids, offsets)
    unknown = _unknown(tok, shown_text, ids, offsets, 0, 0)
    spans = _spans(example.char_spans(), offsets)
    if lm.task is Task.ENCODER and (len(spans) < 2 or any(s.end <= s.start for s in spans[:2])):
        raise SaliencyError(f"{where}: the first two segments must each keep at least one token")
    contrast_ids = _contrast(example, lm, where)
    return Encoded(
        example,
        tuple(ids),
        tokens,
        spans,
        target_ids,
        loss_positions,
        prediction_position,
        contrast_ids=contrast_ids,
        unknown=unknown,
    )


def _contrast(example: Example, lm: LoadedModel, where: str) -> tuple[int, ...] | None:
    """The contrast target as one token id (LMs) or a label index (classifiers)."""
    contrast = example.contrast
    if contrast is None:
        return None
    if lm.task is Task.ENCODER:
        raise SaliencyError(
            f'{where}: a bare encoder has no target to contrast; drop "contrast" from the input'
        )
    if lm.task is Task.CLASSIFICATION:
        return (_label_index(lm, contrast, where),)
    tok = lm.tokenizer
    if lm.task is Task.CAUSAL_LM:
        text = example.text
        full = _tokenize(tok, f"{text} {contrast}", strip_end=True)[0]
        ids = tuple(full[len(_tokenize(tok, text, strip_end=True)[0]) :])
    else:
        ids = tuple(tok(contrast, add_special_tokens=False)["input_ids"])
    _check_target(tok, ids, contrast, where)
    if len(ids) != 1:
        raise SaliencyError(
            f"{where}: contrast '{contrast}' is {len(ids)} tokens; the logit difference compares "
            "one token with one token: give a one-token contrast"
        )
    return ids


def _encode_pair(
    example: Example, lm: LoadedModel, limit: int | None, truncate: bool, where: str
) -> Encoded:
    """A bi-encoder's input: each of the two segments encoded on its own, as the model is used
    for sentence embeddings; the tokens are the first sequence's, then the second's."""
    _check_two_segments(example, where, "separate")
    ids: list[int] = []
    tokens: list[str] = []
    spans: list[TokenSpan] = []
    pieces: list[tuple[int, int]] = []
    unknown: list[UnknownToken] = []
    for segment, (_, char_start, _) in zip(example.segments, example.char_spans(), strict=True):
        seg_ids, offsets = _tokenize(lm.tokenizer, segment.text, strip_end=False)
        seg_ids, offsets, _, _ = _fit(
            seg_ids, offsets, (), None, lm, limit, truncate, f"{where}, segment '{segment.name}'"
        )
        start = len(ids)
        inside = [t for t, (a, b) in enumerate(offsets) if b > a]
        if not inside:
            raise SaliencyError(f"{where}: segment '{segment.name}' keeps no tokens")
        if segment.name:
            spans.append(TokenSpan(segment.name, start + inside[0], start + inside[-1] + 1))
        ids += seg_ids
        tokens += _shown(lm.tokenizer, segment.text, seg_ids, offsets)
        unknown += _unknown(lm.tokenizer, segment.text, seg_ids, offsets, start, char_start)
        pieces.append((start, len(ids)))
    return Encoded(
        example,
        tuple(ids),
        tuple(tokens),
        tuple(spans),
        None,
        (),
        None,
        tuple(pieces),
        unknown=tuple(unknown),
    )


def _check_two_segments(example: Example, where: str, pairing: str) -> None:
    count = len(example.segments)
    if pairing == "separate" and count != 2:
        raise SaliencyError(
            f"{where}: a bi-encoder's objective compares the embeddings of two segments, each "
            f"encoded on its own, and this input has {count}; give it two segments (or "
            "--pairing joint to read them as one sequence)"
        )
    if count < 2:
        raise SaliencyError(
            f"{where}: a bare encoder's objective compares the embeddings of the first two "
            f"segments, and this input has {count}; give it two segments"
        )


def _tokenize(tok: Any, text: str, strip_end: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, with the tokenizer's special tokens. With
    `strip_end`, special tokens it appends (an end-of-sequence token) are dropped: a causal LM
    predicts what follows the text, not what follows its end marker."""
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if strip_end:
        special = set(tok.all_special_ids)
        while len(ids) > 1 and ids[-1] in special and offsets[-1][0] == offsets[-1][1]:
            ids.pop()
            offsets.pop()
    return ids, offsets


def _shown(
    tok: Any, text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]]
) -> tuple[str, ...]:
    """Each token as the text it covers, or its own name for a special token and for the
    unknown token (the model reads `[UNK]`, not the word: the labels say so)."""
    unk = tok.unk_token_id
    return tuple(
        text[a:b] if b > a and i != unk else tok.convert_ids_to_tokens(i)
        for i, (a, b) in zip(ids, offsets, strict=True)
    )


def _unknown(
    tok: Any,
    text: str,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    first: int,
    char_start: int,
) -> tuple[UnknownToken, ...]:
    """Each token the tokenizer read as its unknown token, with the text it covers; positions
    count from `first` and characters from `char_start` (a segment encoded on its own)."""
    unk = tok.unk_token_id
    if unk is None:
        return ()
    return tuple(
        UnknownToken(first + p, text[a:b], char_start + a, char_start + b)
        for p, (i, (a, b)) in enumerate(zip(ids, offsets, strict=True))
        if i == unk
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


def _spans(
    char_spans: Sequence[tuple[str, int, int]], offsets: Sequence[tuple[int, int]]
) -> tuple[TokenSpan, ...]:
    """Named segments as token ranges: the tokens whose characters overlap each segment's."""
    spans = []
    for name, start, end in char_spans:
        inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if name and inside:
            spans.append(TokenSpan(name, inside[0], inside[-1] + 1))
    return tuple(spans)
