"""Inputs as typed records: an example is ordered, optionally named, segments of text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A named part of an input's text, e.g. ENV or LAN; the name is empty for plain text."""

    name: str
    text: str


@dataclass(frozen=True)
class Example:
    """One input: its text as ordered segments, an optional target, and free-form metadata."""

    id: str
    segments: tuple[Segment, ...]
    target: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    """Where it came from, e.g. `inputs.jsonl:12`, for error messages."""
    contrast: str | None = None
    """A contrast target (a foil): `--effect logit-diff` measures logit(target) − logit(it)."""
    counterfactual: tuple[Segment, ...] = ()
    """Replacements of named segments (the input's `counterfactual` field): the same input with
    a mismatched segment, for the grounding information gain of `reportgen compare`."""

    @property
    def text(self) -> str:
        """The segments joined with single spaces: what the model reads."""
        return " ".join(s.text for s in self.segments)

    def char_spans(self) -> list[tuple[str, int, int]]:
        """(name, start, end) character offsets of each segment within `text`."""
        spans, start = [], 0
        for seg in self.segments:
            spans.append((seg.name, start, start + len(seg.text)))
            start += len(seg.text) + 1
        return spans
