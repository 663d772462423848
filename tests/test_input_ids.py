"""Ids and segment names as the readers give them (the issue "Foundation", part 4)."""

from __future__ import annotations

import pytest

from reportgen.errors import InputError, SettingsError
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.unit


def test_a_generated_id_never_clashes_with_a_given_one():
    """Generated ids are positions; an input without an id is not blamed for a given id that
    happens to be its position, and gets the position with the first free suffix."""
    examples = examples_from_items([{"text": "a", "id": "2"}, {"text": "b"}, "c"])
    assert [e.id for e in examples] == ["2", "2-2", "3"]
    examples = examples_from_items(
        [{"text": "a", "id": "2"}, {"text": "b"}, {"text": "c", "id": "2-2"}]
    )
    assert [e.id for e in examples] == ["2", "2-3", "2-2"]


def test_segment_names_are_compared_as_they_are_stored():
    with pytest.raises(InputError, match="segment name 'ENV' appears twice"):
        examples_from_items(
            [{"segments": [{"name": " ENV", "text": "a"}, {"name": "ENV", "text": "b"}]}]
        )
    [example] = examples_from_items([{"segments": [{"name": " ENV ", "text": "a"}]}])
    assert example.segments[0].name == "ENV"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"top_k": 0}, "--top-k must be at least 1, got 0"),
        ({"ablate_draws": 0}, "--ablate-draws must be at least 1, got 0"),
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"steps": 0}, "--steps must be at least 1, got 0"),
        ({"method": "lrp"}, "unknown method 'lrp'. Available: attn-grad, attention, attattr"),
        ({"dtype": "int8"}, "unknown --dtype 'int8'"),
        ({"engine": "fast"}, "unknown --engine 'fast'"),
        ({"max_memory": "lots"}, "'lots' is not a size"),
        ({"ablation": "half"}, "unknown --ablation 'half'"),
        ({"effect": "kl"}, "unknown --effect 'kl'"),
    ],
)
def test_every_setting_is_validated_with_its_option_name(changes, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Settings(**changes).validate()
