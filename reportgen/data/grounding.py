"""Grounding information gain: how much an input's own segment (its `<ENV>`) tells a model
about the target, against the same input with a mismatched one (arXiv:2510.13796).

    gain = surprisal(target | counterfactual input) − surprisal(target | input)

in nats, surprisal being −log p(target) (a multi-token target's log-probabilities summed). The
counterfactual is the input's `counterfactual` field (named segments replaced), or generated
by `--counterfactual swap:NAME`: segment NAME taken from another input (see `swap_donor`).
Torch-free: the engine (`reportgen.engine.grounding`) computes the surprisals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reportgen.data.examples import Example, Segment
from reportgen.errors import SaliencyError, SettingsError

SWAP = "swap:"


@dataclass(frozen=True)
class Gain:
    """One input's target surprisal (nats) with its own segments and with the counterfactual."""

    id: str
    own: float
    counterfactual: float

    @property
    def gain(self) -> float:
        """The drop in surprisal that the input's own segment brings."""
        return self.counterfactual - self.own


def parse_swap(spec: str) -> str:
    """The segment name of `swap:NAME`; anything else is an error naming the form."""
    name = spec[len(SWAP) :].strip() if spec.startswith(SWAP) else ""
    if not name:
        raise SettingsError(
            f"--counterfactual {spec!r}: give swap:SEGMENT (e.g. swap:ENV), which swaps that "
            'segment across inputs, or put a "counterfactual" in each input'
        )
    return name


def replaced(example: Example, segments: Sequence[Segment]) -> Example:
    """`example` with the named `segments` in place of its own (the counterfactual input)."""
    new = {s.name: s.text for s in segments}
    return replace(
        example,
        segments=tuple(Segment(s.name, new.get(s.name, s.text)) for s in example.segments),
        counterfactual=(),
    )


def _text(example: Example, name: str) -> str | None:
    return next((s.text for s in example.segments if s.name == name), None)


def swap_donor(examples: Sequence[Example], index: int, name: str) -> int:
    """The input whose segment `name` replaces input `index`'s: the next one in input order
    (wrapping around) whose segment differs, whose target differs, and whose segment does not
    contain this input's target as a word (so the swapped segment does not ground it)."""
    ex = examples[index]
    own = _text(ex, name)
    target = (ex.target or "").strip()
    for step in range(1, len(examples)):
        j = (index + step) % len(examples)
        other = examples[j]
        text = _text(other, name)
        if text is None or text == own or (other.target or "").strip() == target:
            continue
        if target in text.split():
            continue
        return j
    raise SaliencyError(
        f"{ex.source}: input '{ex.id}': no other input has a {name} segment that differs, with "
        'another target not named in it, to swap in; give more inputs or a "counterfactual"'
    )


def counterfactuals(examples: Sequence[Example], swap: str | None) -> list[Example] | None:
    """Each input's counterfactual, in input order: from `--counterfactual swap:NAME` (`swap`
    is that option's value), else from the inputs' `counterfactual` fields; None if neither is
    given. Every input needs a target, and one (and only one) of the two sources."""
    given = [ex for ex in examples if ex.counterfactual]
    if swap is None and not given:
        return None
    if swap is not None and given:
        raise SettingsError(
            f"--counterfactual {swap} and the \"counterfactual\" of input '{given[0].id}' "
            f"({given[0].source}) both say what to compare with; give one of them"
        )
    for ex in examples:
        if ex.target is None:
            raise SaliencyError(
                f"{ex.source}: input '{ex.id}' has no \"target\"; the information gain is about "
                "the target's surprisal: give every input a target"
            )
    if swap is None:
        lacking = next((ex for ex in examples if not ex.counterfactual), None)
        if lacking is not None:
            raise SaliencyError(
                f"{lacking.source}: input '{lacking.id}' has no \"counterfactual\" while "
                f"'{given[0].id}' has one; give every input one (or use --counterfactual swap:ENV)"
            )
        return [replaced(ex, ex.counterfactual) for ex in examples]
    name = parse_swap(swap)
    for ex in examples:
        if _text(ex, name) is None:
            names = ", ".join(s.name for s in ex.segments if s.name) or "none"
            raise SaliencyError(
                f"{ex.source}: input '{ex.id}' has no segment {name!r} to swap (its segments: "
                f"{names}); --counterfactual swap:{name} needs it in every input"
            )
    out = []
    for i, ex in enumerate(examples):
        donor = examples[swap_donor(examples, i, name)]
        out.append(replaced(ex, [Segment(name, _text(donor, name) or "")]))
    return out


def describe(swap: str | None) -> str:
    """What the counterfactual is, for the page."""
    if swap is None:
        return 'each input\'s own "counterfactual"'
    name = parse_swap(swap)
    return f"the {name} segment of another input (--counterfactual {swap})"
