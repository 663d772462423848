"""Shared fixtures: tiny models built locally (from_config -> save_pretrained), loaded through
the real from_pretrained path by reportgen."""

from __future__ import annotations

from pathlib import Path

import pytest

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<|endoftext|>",
    "<CHI>",
    "<MOT>",
    "painted",
    "a",
    "picture",
    "of",
    "horse",
    "cat",
    "dog",
    "ball",
    "my",
    "favorite",
    "animal",
    "is",
    "the",
    "toy",
    "red",
    "big",
    "saw",
    "played",
    "with",
    "ate",
    "an",
    "apple",
    "banana",
    # hostile words the tokenizer knows, so they can be targets too
    "<script>alert(1)</script>",
    '"+alert(1)+"',
    "datum.x",
]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            mask_token="[MASK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )


def _configs():
    import transformers as tf

    n = len(WORDS)
    bert = dict(
        vocab_size=n,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=0,
    )
    return {
        "gpt2": (
            tf.GPT2LMHeadModel,
            tf.GPT2Config(
                vocab_size=n,
                n_embd=32,
                n_layer=3,
                n_head=4,
                n_positions=40,
                bos_token_id=5,
                eos_token_id=5,
                pad_token_id=0,
            ),
            "gpt",
        ),
        "llama": (
            tf.LlamaForCausalLM,
            tf.LlamaConfig(
                vocab_size=n,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=40,
                bos_token_id=5,
                eos_token_id=5,
                pad_token_id=0,
            ),
            "gpt",
        ),
        "bert-mlm": (tf.BertForMaskedLM, tf.BertConfig(**bert), "bert"),
        "bert-cls": (
            tf.BertForSequenceClassification,
            tf.BertConfig(
                **bert,
                num_labels=3,
                id2label={0: "neg", 1: "neu", 2: "pos"},
                label2id={"neg": 0, "neu": 1, "pos": 2},
            ),
            "bert",
        ),
        "bert": (tf.BertModel, tf.BertConfig(**bert), "bert"),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of five tiny random models, one per supported task/architecture."""
    import torch

    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, (cls, config, tok_kind) in _configs().items():
        torch.manual_seed(0)
        model = cls(config)
        folder = root / name
        model.save_pretrained(folder)
        _tokenizer(tok_kind).save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def loaded(tiny_models):
    """Loaded tiny models in float64 (for exact gradient checks), keyed like tiny_models."""
    from reportgen.engine import load_model

    return {
        name: load_model(path, device="cpu", dtype="float64") for name, path in tiny_models.items()
    }


HOSTILE = "<script>alert(1)</script>"

DEMO_INPUTS = [
    {
        "id": "reference",
        "segments": [
            {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "horse",
        "meta": {"note": "the reference figure's input"},
    },
    {
        "id": "dog",
        "segments": [
            {"name": "ENV", "text": "<MOT> saw a big dog"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "dog",
    },
    {
        "id": '../../hostile "quote" </script>',
        "segments": [
            {"name": "ENV", "text": f"<CHI> played with a {HOSTILE} ball"},
            {"name": "LAN", "text": "<CHI> my favorite toy is the"},
        ],
        "meta": {"origin": '"><img src=x onerror=alert(1)>'},
    },
]


@pytest.fixture(scope="session")
def gpt2_run(tiny_models, tmp_path_factory) -> Path:
    """A run folder computed with the tiny GPT-2 (float32, flow:ENV->LAN), shared by the
    chart, site and browser tests."""
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    out = tmp_path_factory.mktemp("runs") / "gpt2"
    settings = Settings(model=str(tiny_models["gpt2"]), metric="flow:ENV->LAN", device="cpu")
    compute(DEMO_INPUTS, out, settings, command="reportgen compute (test fixture)")
    return out


ROOT = Path(__file__).resolve().parents[1]
DEMO_EXAMPLES = ROOT / "examples" / "childes" / "inputs.jsonl"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The example inputs computed with the embedded demo model (flow:ENV->LAN), as the
    README's demo command does."""
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    out = tmp_path_factory.mktemp("demo") / "run"
    compute(DEMO_EXAMPLES, out, Settings(metric="flow:ENV->LAN"), command="reportgen (test)")
    return out
