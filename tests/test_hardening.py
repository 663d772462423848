"""Hardening of the engine: awkward text, hub-cache resolution, reduced precision, determinism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from synthetic import assert_stats_match_dense

from reportgen.engine import compute as compute_saliency
from reportgen.engine.loading import load_model, resolve_model_path
from reportgen.inputs import read_inputs
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

AWKWARD = [
    "שלום עולם مرحبا",  # right-to-left scripts
    "cafe\u0301 nai\u0308ve",  # combining marks
    "zero\u200bwidth join\u200d",  # zero-width characters
    "🐴 horse 👩‍👩‍👧",  # emoji, a ZWJ sequence
    "我的 最喜欢的 动物",  # CJK
    "x" * 300,  # a very long single token
    "tab\tseparated",
]


def test_awkward_text_keeps_its_characters_in_tokens(loaded, tmp_path):
    path = tmp_path / "awkward.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(AWKWARD).encode("utf-8") + b"\r\n")
    examples = read_inputs(path)
    assert [e.text for e in examples] == AWKWARD
    settings = Settings(store="dense")
    for example, result in zip(examples, compute_saliency(examples, loaded["gpt2"], settings)):
        # Word-level vocabulary: one token per word, the word itself, or [UNK] where the model
        # reads the unknown token (labelled as the model sees it, never as the word).
        words = example.text.split()
        assert len(result.tokens) == len(words), result.tokens
        assert all(t in (w, "[UNK]") for t, w in zip(result.tokens, words, strict=True))
        assert np.isfinite(result.dense).all()
        stats = result.stats
        for name in ("total", "prediction", "flow", "top_values"):
            assert np.isfinite(getattr(stats, name)).all(), name
        assert_stats_match_dense(stats, result.dense, result.spans, result.prediction_position)


def test_hub_ids_resolve_from_the_local_cache_only(tiny_models, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-gpt2" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_models["gpt2"], snapshot)
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model_path("someone/tiny-gpt2") == snapshot
    lm = load_model("someone/tiny-gpt2", "cpu")
    assert lm.name == "someone/tiny-gpt2" and lm.num_layers == 3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_runs_and_stays_close(tiny_models, dtype):
    from reportgen.inputs import examples_from_items

    examples = examples_from_items(["<CHI> painted a picture of a horse <CHI> my favorite animal"])
    [full] = compute_saliency(
        examples, load_model(tiny_models["gpt2"], "cpu", "float32"), Settings(store="dense")
    )
    lm = load_model(tiny_models["gpt2"], "cpu", dtype)
    [low] = compute_saliency(examples, lm, Settings(dtype=dtype, store="dense"))
    assert low.dense.dtype == np.float32 and np.isfinite(low.dense).all()
    assert np.abs(low.dense - full.dense).max() < 0.05 * np.abs(full.dense).max()
    assert low.stats.total.dtype == np.float64 and np.isfinite(low.stats.total).all()
    total = full.stats.total
    assert np.abs(low.stats.total - total).max() < 0.05 * total.max()
    assert_stats_match_dense(low.stats, low.dense, low.spans, low.prediction_position, 1e-5)
    assert low.target == full.target


COMPUTE = """
import json, sys
from reportgen.pipeline import compute
from reportgen.settings import Settings

model, inputs, out = sys.argv[1:]
settings = Settings(model=model, metric="flow:ENV->LAN", seed=7, device="cpu")
compute(json.loads(inputs), out, settings, command="x")
"""


def test_two_computes_in_fresh_processes_are_identical(tiny_models, tmp_path):
    """The same inputs and seed, computed by two new interpreters side by side (different hash
    seeds), give the same run folder byte for byte: no state of a warm process (a probe's cached
    verdict, a seeded generator already advanced) can hide a difference."""
    from conftest import DEMO_INPUTS, in_fresh_processes

    model, inputs = str(tiny_models["gpt2"]), json.dumps(DEMO_INPUTS)
    in_fresh_processes(
        COMPUTE,
        [model, inputs, str(tmp_path / "a")],
        [model, inputs, str(tmp_path / "b")],
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )

    def tree(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    records = [name for name in a if name.parts[0] == "records"]
    assert len(records) == len(DEMO_INPUTS) and a.keys() == b.keys()
    assert [str(name) for name in a if a[name] != b[name]] == []
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["created"] == "2023-11-14T22:13:20Z"
    assert Run.open(tmp_path / "a").info.parameters["seed"] == 7


def test_segment_spans_follow_offsets_with_a_subword_tokenizer(tmp_path):
    """A byte-level BPE splits words into pieces; spans still cover exactly each segment."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from reportgen.inputs import examples_from_items

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a tiny corpus of words"] * 3, vocab_size=300, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="a", unk_token=None)
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=64)
    ).save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), "cpu")
    env, lan = "unbelievably windswept", "pineapples overhead"
    [example] = examples_from_items(
        [{"segments": [{"name": "ENV", "text": env}, {"name": "LAN", "text": lan}]}]
    )
    [result] = compute_saliency([example], lm, Settings())
    assert len(result.tokens) > 4, "words are split into several tokens"
    spans = {s.name: s for s in result.spans}
    assert spans["ENV"].start == 0 and spans["LAN"].end == len(result.tokens)
    between = result.tokens[spans["ENV"].end : spans["LAN"].start]
    assert all(not t.strip() for t in between), "only the joining space lies between"
    pieces = lambda s: "".join(result.tokens[s.start : s.end]).replace(" ", "")  # noqa: E731
    assert pieces(spans["ENV"]) == env.replace(" ", "")
    assert pieces(spans["LAN"]) == lan.replace(" ", "")


def _unknown_by_offsets(tok, text: str, first: int = 0, char_start: int = 0):
    """(position, word, start, end) of each token `tok` reads as its unknown token in `text`,
    from the tokenizer's own offset mapping."""
    enc = tok(text, return_offsets_mapping=True)
    return [
        (first + p, text[a:b], char_start + a, char_start + b)
        for p, (i, (a, b)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"]))
        if i == tok.unk_token_id
    ]


def _recorded(run: Run):
    return [[(u.position, u.text, u.start, u.end) for u in e.unknown] for e in run.entries]


def test_the_run_records_the_words_read_as_unknown(unknown_run, loaded, tmp_path):
    """Each token read as [UNK] is recorded with the word it replaced: its position among the
    tokens and its characters in the input, as the tokenizer's offsets say, through the run
    folder and back (a causal LM with a target, the start truncated, a bi-encoder's segments
    encoded one by one); an input without unknown words writes no field at all."""
    from conftest import UNKNOWN_HOSTILE, UNKNOWN_INPUTS

    from reportgen.inputs import examples_from_items
    from reportgen.pipeline import compute

    run = Run.open(unknown_run)
    tok = loaded["gpt2"].tokenizer
    texts = [ex.text for ex in examples_from_items(UNKNOWN_INPUTS)]
    assert _recorded(run) == [_unknown_by_offsets(tok, text) for text in texts]
    assert [[u.text for u in e.unknown] for e in run.entries] == [
        ["young", "zebra"],
        [UNKNOWN_HOSTILE],
        [],
    ]
    for entry in run.entries:
        assert all(entry.tokens[u.position] == "[UNK]" for u in entry.unknown)
        assert entry.tokens.count("[UNK]") == len(entry.unknown)
    lines = [json.loads(line) for line in (unknown_run / "entries.jsonl").read_text().splitlines()]
    assert ["unknown" in line for line in lines] == [True, True, False]
    assert run.result(0).unknown == run.entries[0].unknown

    # truncated: the first tokens are cut, the positions move with them
    cut = compute(
        UNKNOWN_INPUTS[:1],
        tmp_path / "cut",
        Settings(device="cpu", ablate_k=0, max_tokens=8, truncate=True),
        model=loaded["gpt2"],
    )
    shift = len(tok(texts[0])["input_ids"]) - 8  # (a one-token target adds no input token)
    assert len(cut.entries[0].tokens) == 8
    assert _recorded(cut) == [
        [(p - shift, w, a, b) for p, w, a, b in _unknown_by_offsets(tok, texts[0])]
    ]

    # a bi-encoder: each segment encoded on its own, with [CLS] and [SEP]
    bert = loaded["bert"]
    items = [
        {
            "id": "pair",
            "segments": [
                {"name": "A", "text": "the young cat"},
                {"name": "B", "text": f"a dog {UNKNOWN_HOSTILE} ate an apple"},
            ],
        }
    ]
    pair = compute(items, tmp_path / "pair", Settings(device="cpu", ablate_k=0), model=bert)
    first = len(bert.tokenizer("the young cat")["input_ids"])
    want = _unknown_by_offsets(bert.tokenizer, "the young cat") + _unknown_by_offsets(
        bert.tokenizer, items[0]["segments"][1]["text"], first, len("the young cat ")
    )
    assert [w for _, w, _, _ in want] == ["young", UNKNOWN_HOSTILE]
    assert _recorded(pair) == [want]
    text = pair.entries[0].example.text
    assert [text[a:b] for _, _, a, b in want] == ["young", UNKNOWN_HOSTILE]
