"""Synthetic child-directed speech: a scene names a noun, a later utterance must repeat it.

Each input has an ENV segment (what happened, CHILDES speaker tags) and a LAN segment (an
utterance that stops right before a noun). The target is the scene's noun of the category the
utterance asks for, so a model has to look back into ENV; a distractor noun of another category
often shares the scene. The model reads the segments joined by single spaces, without markers:

    <CHI> painted a picture of a horse <CHI> my favorite animal is the  ->  horse

Some (scene template, noun) pairs never occur in training, the reference pair among them.

Usage: python examples/childes/corpus.py --n 1000 --seed 0 --split heldout > inputs.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Literal

Split = Literal["train", "heldout"]

NOUNS: dict[str, str] = {
    "animal": "horse dog cat cow pig sheep duck bird fish rabbit bear lion tiger monkey frog owl",
    "food": "cookie apple banana cake cheese carrot grape pizza cracker muffin pear egg plum",
    "toy": "ball doll marble puzzle kite block balloon robot top yoyo drum whistle puppet",
    "vehicle": "car truck bus train boat plane bike tractor helicopter rocket scooter wagon",
    "clothing": "hat sock shoe coat shirt boot mitten scarf dress jacket",
    "furniture": "chair table bed couch bench stool desk shelf crib sofa",
    "instrument": "piano guitar trumpet violin flute harp banjo xylophone",
}
"""Nouns by category (space-separated); the category decides which utterances can ask for a noun."""

SCENES: tuple[str, ...] = (
    "painted a picture of {}",
    "drew {} on the paper",
    "found {} in the box",
    "saw {} at the park",
    "read a book about {}",
    "pointed at {}",
    "looked at {} for a long time",
    "got {} for my birthday",
    "made {} out of clay",
    "showed grandma {}",
    "cut out {} from the magazine",
    "put a sticker of {} on the wall",
    "watched a show about {}",
    "sang a song about {}",
    "had a dream about {}",
    "colored {} with crayons",
    "saw {} on the tv",
    "gave daddy {}",
    "talked about {} at dinner",
    "took a photo of {}",
)
"""Scene templates; `{}` is filled with one or two noun phrases such as "a horse"."""

UTTERANCES: dict[str, tuple[str, ...]] = {
    "animal": ("my favorite animal is the", "i want to pet the", "can we feed the"),
    "food": ("i want to eat the", "my favorite food is the", "can i have a bite of the"),
    "toy": ("i want to play with the", "my favorite toy is the", "let us share the"),
    "vehicle": ("i want to ride in the", "my favorite vehicle is the", "we can drive the"),
    "clothing": ("i want to wear the", "help me put on the", "my favorite thing to wear is the"),
    "furniture": ("i want to sit on the", "let us climb on the", "my favorite furniture is the"),
    "instrument": ("i want to play the", "listen to me play the", "my favorite instrument is the"),
}
"""Utterances that ask for a noun of one category."""

GENERIC_UTTERANCES: tuple[str, ...] = (
    "look at the",
    "i like the",
    "where is the",
    "can you find the",
)
"""Utterances that fit any noun; used only when the scene names a single noun."""

SPEAKERS: tuple[str, ...] = ("<CHI>", "<MOT>", "<FAT>")

REFERENCE: dict = {
    "id": "horse",
    "segments": [
        {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
        {"name": "LAN", "text": "<CHI> my favorite animal is the"},
    ],
    "target": "horse",
}
"""The input the report's reference figure is about."""

CATEGORY = {noun: category for category, nouns in NOUNS.items() for noun in nouns.split()}
NOUN_LIST = list(CATEGORY)


def _heldout_pairs() -> list[tuple[int, str]]:
    """(scene index, noun) pairs kept out of training: a fixed 10% plus the reference pair."""
    rng = random.Random(12345)
    pairs = {(s, noun) for s in range(len(SCENES)) for noun in NOUN_LIST if rng.random() < 0.1}
    return sorted(pairs | {(0, "horse")})


HELDOUT = _heldout_pairs()
HELDOUT_SET = frozenset(HELDOUT)


def _phrase(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _sample(rng: random.Random, split: Split) -> tuple[str, str, str]:
    """Draw one (ENV text, LAN text, target) of the split.

    The target's scene may name up to two distractors of other categories, and a second scene
    (before or after, by any speaker) may name one more.
    """
    while True:
        if split == "heldout":
            scene, target = rng.choice(HELDOUT)
        else:
            scene, target = rng.randrange(len(SCENES)), rng.choice(NOUN_LIST)
        others = [n for n in NOUN_LIST if CATEGORY[n] != CATEGORY[target]]
        nouns = [target, *rng.sample(others, rng.choice((0, 0, 1, 1, 2)))]
        rng.shuffle(nouns)
        second = rng.choice((None, rng.randrange(len(SCENES))))
        extra = rng.choice(others)
        mentions = {(scene, noun) for noun in nouns}
        if second is not None:
            mentions.add((second, extra))
        if split == "heldout" or not mentions & HELDOUT_SET:
            break
    objects = " and ".join(_phrase(noun) for noun in nouns)
    utterances = [f"{rng.choice(SPEAKERS)} {SCENES[scene].format(objects)}"]
    if second is not None:
        utterances.insert(
            rng.randrange(2), f"{rng.choice(SPEAKERS)} {SCENES[second].format(_phrase(extra))}"
        )
    plain = len(nouns) == 1 and second is None
    choices = UTTERANCES[CATEGORY[target]] + (GENERIC_UTTERANCES if plain else ())
    lan = f"{rng.choice(SPEAKERS)} {rng.choice(choices)}"
    return " ".join(utterances), lan, target


def generate(n: int, seed: int = 0, split: Split = "train") -> list[dict]:
    """Return `n` inputs `{"id", "segments": [ENV, LAN], "target"}`, reproducible from `seed`."""
    rng = random.Random(f"{split}-{seed}")
    rows = []
    for i in range(n):
        env, lan, target = _sample(rng, split)
        rows.append(
            {
                "id": f"{target}-{i}",
                "segments": [{"name": "ENV", "text": env}, {"name": "LAN", "text": lan}],
                "target": target,
            }
        )
    return rows


def showcase(n: int = 24, seed: int = 0) -> list[dict]:
    """The reference input, then held-out inputs with distinct targets, each id its target."""
    rows = [dict(REFERENCE)]
    for row in generate(50 * n, seed, "heldout"):
        if len(rows) == n:
            break
        if all(row["target"] != r["target"] for r in rows):
            rows.append({**row, "id": row["target"]})
    return rows


def text(row: dict) -> str:
    """The text the model reads: the segments joined by single spaces."""
    return " ".join(segment["text"] for segment in row["segments"])


def vocabulary() -> list[str]:
    """Every word the generator can emit, sorted."""
    templates = SCENES + GENERIC_UTTERANCES + sum(UTTERANCES.values(), ())
    words = {w for t in templates for w in t.replace("{}", "").split()}
    return sorted(words | set(CATEGORY) | set(SPEAKERS) | {"a", "an", "and"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic inputs as JSON lines.")
    parser.add_argument("--n", type=int, default=1000, help="number of inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "heldout"), default="heldout")
    parser.add_argument(
        "--showcase", action="store_true", help="write the reference plus n-1 held-out inputs"
    )
    args = parser.parse_args(argv)
    rows = showcase(args.n, args.seed) if args.showcase else generate(args.n, args.seed, args.split)
    sys.stdout.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
