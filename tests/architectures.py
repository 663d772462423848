"""A zoo of tiny random models, one per architecture family, for the architecture matrix
(tests/test_architectures.py), and the independent oracle the matrix checks reportgen against.

Each family is a transformers class, a config built from its tokenizer's vocabulary (so the
special token ids agree), and a tokenizer style with the family's real special tokens: a
`tokenizers` WordLevel model with the WhitespaceSplit pre-tokenizer (Qwen2: a byte-level BPE,
which AutoTokenizer insists on for that model type). `build` writes a family's model and
tokenizer into a folder with save_pretrained, as a user's checkpoint would be.

The oracle never calls reportgen's engine: it runs the model loaded with plain transformers,
unpadded, one input at a time, derives token ids, loss positions and segment spans from the
tokenizer, and takes gradients with torch.autograd.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

WORDS = (
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
)


# --- tokenizers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """A family's tokenizer: special tokens before and after the words, what the tokenizer adds
    around a text, and the special-token roles it declares (pad absent where the family has none).
    """

    front: tuple[str, ...]
    back: tuple[str, ...] = ()
    prefix: str | None = None
    suffix: str | None = None
    roles: Mapping[str, str] = field(default_factory=dict)
    unk: str | None = None
    """The WordLevel model's unknown token (defaults to the `unk_token` role)."""
    byte_level: bool = False
    """A byte-level BPE trained on the words (as Qwen2's), instead of a WordLevel model."""

    @property
    def vocab(self) -> dict[str, int]:
        return {w: i for i, w in enumerate((*self.front, *WORDS, *self.back))}

    @property
    def mask(self) -> str | None:
        return self.roles.get("mask_token")


STYLES = {
    # [PAD]=0 as in bert-base-uncased; [CLS] text [SEP]
    "bert": Style(
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        prefix="[CLS]",
        suffix="[SEP]",
        roles=dict(
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        ),
    ),
    # RoBERTa / XLM-R: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last; <s> text </s>
    "roberta": Style(
        ("<s>", "<pad>", "</s>", "<unk>"),
        ("<mask>",),
        prefix="<s>",
        suffix="</s>",
        roles=dict(
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        ),
    ),
    # GPT-2 / GPT-Neo: <|endoftext|> last, as bos, eos and unk; no pad token; nothing added
    "gpt2": Style(
        (),
        ("<|endoftext|>",),
        roles=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
    ),
    # Llama / Mistral / Mixtral: <unk>=0 <s>=1 </s>=2, <s> added; no pad token
    "llama": Style(
        ("<unk>", "<s>", "</s>"),
        prefix="<s>",
        roles=dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    ),
    # Phi-3: Llama's, with <|endoftext|> after the words as eos and pad
    "phi3": Style(
        ("<unk>", "<s>", "</s>"),
        ("<|endoftext|>",),
        prefix="<s>",
        roles=dict(
            bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>"
        ),
    ),
    # Qwen2/3: <|endoftext|> as eos and pad, no bos added, no unk token
    "qwen": Style(
        (),
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        roles=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
        unk="<|endoftext|>",
    ),
    # Qwen2: AutoTokenizer always builds a Qwen2Tokenizer (byte-level BPE) for model_type qwen2,
    # whatever tokenizer.json holds, so this family gets a real byte-level BPE of the words.
    "qwen-bpe": Style(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        roles=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
        byte_level=True,
    ),
    # Gemma 2/3: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, <bos> added
    "gemma": Style(
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"),
        prefix="<bos>",
        roles=dict(pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"),
    ),
    # GPT-NeoX (Pythia): <|endoftext|>=0 as bos/eos/unk, <|padding|>=1
    "neox": Style(
        ("<|endoftext|>", "<|padding|>"),
        roles=dict(
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|padding|>",
        ),
    ),
    # BLOOM: <unk>=0 <s>=1 </s>=2 <pad>=3, nothing added
    "bloom": Style(
        ("<unk>", "<s>", "</s>", "<pad>"),
        roles=dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"),
    ),
    # T5: <pad>=0 </s>=1 <unk>=2, </s> appended
    "t5": Style(
        ("<pad>", "</s>", "<unk>"),
        suffix="</s>",
        roles=dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>"),
    ),
}


def make_tokenizer(style: Style) -> Any:
    """The style's fast tokenizer, ready for save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style.byte_level:
        return _byte_level_bpe(style)
    vocab = style.vocab
    unk = style.unk or style.roles["unk_token"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    added = [t for t in (style.prefix, style.suffix) if t]
    if added:
        single = " ".join([*([style.prefix] if style.prefix else []), "$A"])
        single += f" {style.suffix}" if style.suffix else ""
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, vocab[t]) for t in dict.fromkeys(added)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **style.roles)
    # The special tokens beyond the roles (e.g. Qwen's chat markers) are special too.
    extra = [t for t in (*style.front, *style.back) if t not in style.roles.values()]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    return fast


def _byte_level_bpe(style: Style) -> Any:
    """A Qwen2Tokenizer whose BPE is trained on the words (deterministic), so each word with its
    leading space is one token and `<CHI>` is three."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=list(style.front),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = " ".join(WORDS)
    bpe.train_from_iterator([text, " " + text], trainer)
    model = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], **style.roles
    )


# --- families -------------------------------------------------------------------------------

CAUSAL, MASKED, CLASSIFIER, ENCODER = "causal", "masked", "classifier", "encoder"
EXACT = "exact"
"""Expected to run and match the oracle."""
EXACT_OR_UNSUPPORTED = "exact or unsupported"
"""Either it runs and matches the oracle, or reportgen says plainly it is not supported."""

LABELS = dict(
    num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2}
)


@dataclass(frozen=True)
class Family:
    name: str
    cls: str
    """transformers class of the checkpoint (its name ends up in config.architectures)."""
    config: Callable[[dict[str, int]], Any]
    """The config, given the tokenizer's vocabulary."""
    style: str
    task: str
    expect: str = EXACT
    softmax32: bool = False
    """The family's eager attention runs softmax in float32 even in a float64 model, so a
    float64 SDPA forward differs from it at ~1e-8 relative."""
    pairing: str = "joint"
    """A bare encoder's two segments: one sequence (joint) or each on its own (separate)."""

    @property
    def tokenizer_style(self) -> Style:
        return STYLES[self.style]


def _tf() -> Any:
    import transformers

    return transformers


SIZE = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
DECODER = dict(SIZE, num_hidden_layers=3, num_key_value_heads=2)  # GQA: 2 key/value heads
ENCODER_SIZE = dict(SIZE, num_hidden_layers=3)


def _bert(v: dict[str, int], **extra: Any) -> Any:
    return _tf().BertConfig(vocab_size=len(v), pad_token_id=v["[PAD]"], **ENCODER_SIZE, **extra)


def _roberta(v: dict[str, int], kind: str = "RobertaConfig", **extra: Any) -> Any:
    # Real RoBERTa: padding_idx = pad_token_id = 1, positions counted from padding_idx + 1, so
    # max_position_embeddings covers 2 extra positions.
    assert v["<pad>"] == 1
    return getattr(_tf(), kind)(
        vocab_size=len(v),
        pad_token_id=v["<pad>"],
        bos_token_id=v["<s>"],
        eos_token_id=v["</s>"],
        type_vocab_size=1,
        **{**ENCODER_SIZE, "max_position_embeddings": 66},
        **extra,
    )


def _llama_ids(v: dict[str, int]) -> dict[str, Any]:
    return dict(vocab_size=len(v), bos_token_id=v["<s>"], eos_token_id=v["</s>"], pad_token_id=None)


WINDOW = 4
"""Sliding window of the sliding-window families: shorter than the longest inputs (13 tokens)."""

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "gpt2",
            "GPT2LMHeadModel",
            lambda v: _tf().GPT2Config(
                vocab_size=len(v),
                n_embd=32,
                n_layer=3,
                n_head=4,
                n_positions=64,
                bos_token_id=v["<|endoftext|>"],
                eos_token_id=v["<|endoftext|>"],
            ),
            "gpt2",
            CAUSAL,
        ),
        # pad_token_id = eos in the config (as GPT-2 fine-tunes do), no pad token on the tokenizer
        Family(
            "gpt2-cls",
            "GPT2ForSequenceClassification",
            lambda v: _tf().GPT2Config(
                vocab_size=len(v),
                n_embd=32,
                n_layer=3,
                n_head=4,
                n_positions=64,
                bos_token_id=v["<|endoftext|>"],
                eos_token_id=v["<|endoftext|>"],
                pad_token_id=v["<|endoftext|>"],
                **LABELS,
            ),
            "gpt2",
            CLASSIFIER,
        ),
        Family(
            "llama",
            "LlamaForCausalLM",
            lambda v: _tf().LlamaConfig(**DECODER, **_llama_ids(v)),
            "llama",
            CAUSAL,
            softmax32=True,
        ),
        # no pad token anywhere, as the original Llama checkpoints
        Family(
            "llama-cls",
            "LlamaForSequenceClassification",
            lambda v: _tf().LlamaConfig(**DECODER, **_llama_ids(v), **LABELS),
            "llama",
            CLASSIFIER,
            softmax32=True,
        ),
        Family(
            "mistral-sw",
            "MistralForCausalLM",
            lambda v: _tf().MistralConfig(**DECODER, **_llama_ids(v), sliding_window=WINDOW),
            "llama",
            CAUSAL,
            softmax32=True,
        ),
        # layers >= max_window_layers slide: layers 1 and 2 here
        Family(
            "qwen2-sw",
            "Qwen2ForCausalLM",
            lambda v: _tf().Qwen2Config(
                **DECODER,
                vocab_size=len(v),
                eos_token_id=v["<|endoftext|>"],
                use_sliding_window=True,
                sliding_window=WINDOW,
                max_window_layers=1,
            ),
            "qwen-bpe",
            CAUSAL,
            softmax32=True,
        ),
        Family(
            "qwen3",
            "Qwen3ForCausalLM",
            lambda v: _tf().Qwen3Config(
                **DECODER, head_dim=8, vocab_size=len(v), eos_token_id=v["<|endoftext|>"]
            ),
            "qwen",
            CAUSAL,
            softmax32=True,
        ),
        Family(
            "gemma2",
            "Gemma2ForCausalLM",
            lambda v: _tf().Gemma2Config(
                **DECODER,
                head_dim=8,
                query_pre_attn_scalar=8,
                vocab_size=len(v),
                pad_token_id=v["<pad>"],
                bos_token_id=v["<bos>"],
                eos_token_id=v["<eos>"],
                sliding_window=WINDOW,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
            ),
            "gemma",
            CAUSAL,
            softmax32=True,
        ),
        Family(
            "gemma3",
            "Gemma3ForCausalLM",
            lambda v: _tf().Gemma3TextConfig(
                **DECODER,
                head_dim=8,
                query_pre_attn_scalar=8,
                vocab_size=len(v),
                pad_token_id=v["<pad>"],
                bos_token_id=v["<bos>"],
                eos_token_id=v["<eos>"],
                sliding_window=WINDOW,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            ),
            "gemma",
            CAUSAL,
            softmax32=True,
        ),
        Family(
            "phi3",
            "Phi3ForCausalLM",
            lambda v: _tf().Phi3Config(
                **DECODER,
                vocab_size=len(v),
                bos_token_id=v["<s>"],
                eos_token_id=v["<|endoftext|>"],
                pad_token_id=v["<|endoftext|>"],
            ),
            "phi3",
            CAUSAL,
            softmax32=True,
        ),
        Family(
            "gpt-neox",
            "GPTNeoXForCausalLM",
            lambda v: _tf().GPTNeoXConfig(
                **ENCODER_SIZE, vocab_size=len(v), bos_token_id=0, eos_token_id=0, pad_token_id=1
            ),
            "neox",
            CAUSAL,
            softmax32=True,
        ),
        Family("bert-mlm", "BertForMaskedLM", _bert, "bert", MASKED),
        Family(
            "bert-cls",
            "BertForSequenceClassification",
            lambda v: _bert(v, **LABELS),
            "bert",
            CLASSIFIER,
        ),
        Family("bert", "BertModel", _bert, "bert", ENCODER),
        Family("bert-bi", "BertModel", _bert, "bert", ENCODER, pairing="separate"),
        Family("roberta-mlm", "RobertaForMaskedLM", _roberta, "roberta", MASKED),
        Family(
            "roberta-cls",
            "RobertaForSequenceClassification",
            lambda v: _roberta(v, **LABELS),
            "roberta",
            CLASSIFIER,
        ),
        Family("roberta", "RobertaModel", _roberta, "roberta", ENCODER),
        Family("roberta-bi", "RobertaModel", _roberta, "roberta", ENCODER, pairing="separate"),
        Family(
            "xlm-roberta-mlm",
            "XLMRobertaForMaskedLM",
            lambda v: _roberta(v, "XLMRobertaConfig"),
            "roberta",
            MASKED,
        ),
        Family(
            "distilbert-mlm",
            "DistilBertForMaskedLM",
            lambda v: _tf().DistilBertConfig(
                vocab_size=len(v),
                dim=32,
                n_layers=3,
                n_heads=4,
                hidden_dim=64,
                max_position_embeddings=64,
                pad_token_id=v["[PAD]"],
            ),
            "bert",
            MASKED,
        ),
        # local attention over WINDOW tokens (2 either side) in layers 0 and 1, global in layer 2
        Family(
            "modernbert-mlm",
            "ModernBertForMaskedLM",
            lambda v: _tf().ModernBertConfig(
                **ENCODER_SIZE,
                vocab_size=len(v),
                pad_token_id=v["[PAD]"],
                bos_token_id=v["[CLS]"],
                eos_token_id=v["[SEP]"],
                cls_token_id=v["[CLS]"],
                sep_token_id=v["[SEP]"],
                local_attention=WINDOW,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            ),
            "bert",
            MASKED,
            softmax32=True,
        ),
        Family(
            "albert-mlm",
            "AlbertForMaskedLM",
            lambda v: _tf().AlbertConfig(
                **ENCODER_SIZE,
                embedding_size=16,
                vocab_size=len(v),
                pad_token_id=v["[PAD]"],
                bos_token_id=v["[CLS]"],
                eos_token_id=v["[SEP]"],
            ),
            "bert",
            MASKED,
        ),
        Family(
            "mixtral",
            "MixtralForCausalLM",
            lambda v: _tf().MixtralConfig(
                **DECODER, **_llama_ids(v), num_local_experts=4, num_experts_per_tok=2
            ),
            "llama",
            CAUSAL,
            softmax32=True,
        ),
        # Architectures whose attention does not go through AttentionInterface's eager function
        Family(
            "falcon",
            "FalconForCausalLM",
            lambda v: _tf().FalconConfig(
                vocab_size=len(v),
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=64,
                bos_token_id=v["<|endoftext|>"],
                eos_token_id=v["<|endoftext|>"],
            ),
            "gpt2",
            CAUSAL,
            EXACT_OR_UNSUPPORTED,
        ),
        Family(
            "gpt-neo",
            "GPTNeoForCausalLM",
            lambda v: _tf().GPTNeoConfig(
                vocab_size=len(v),
                hidden_size=32,
                num_layers=2,
                num_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
                attention_types=[[["global", "local"], 1]],
                window_size=WINDOW,
                bos_token_id=v["<|endoftext|>"],
                eos_token_id=v["<|endoftext|>"],
            ),
            "gpt2",
            CAUSAL,
            EXACT_OR_UNSUPPORTED,
        ),
        Family(
            "bloom",
            "BloomForCausalLM",
            lambda v: _tf().BloomConfig(
                vocab_size=len(v),
                hidden_size=32,
                n_layer=3,
                n_head=4,
                bos_token_id=v["<s>"],
                eos_token_id=v["</s>"],
                pad_token_id=v["<pad>"],
            ),
            "bloom",
            CAUSAL,
            EXACT_OR_UNSUPPORTED,
        ),
        Family(
            "deberta-v2-mlm",
            "DebertaV2ForMaskedLM",
            lambda v: _tf().DebertaV2Config(
                **ENCODER_SIZE,
                vocab_size=len(v),
                pad_token_id=v["[PAD]"],
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                max_relative_positions=16,
            ),
            "bert",
            MASKED,
            EXACT_OR_UNSUPPORTED,
        ),
        Family(
            "megatron-bert-mlm",
            "MegatronBertForMaskedLM",
            lambda v: _tf().MegatronBertConfig(
                **ENCODER_SIZE, vocab_size=len(v), pad_token_id=v["[PAD]"]
            ),
            "bert",
            MASKED,
            EXACT_OR_UNSUPPORTED,
        ),
    ]
}

REFUSED: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "bert-token-cls",
            "BertForTokenClassification",
            lambda v: _bert(v, **LABELS),
            "bert",
            "token classification",
        ),
        Family(
            "t5",
            "T5ForConditionalGeneration",
            lambda v: _tf().T5Config(
                vocab_size=len(v),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                pad_token_id=v["<pad>"],
                eos_token_id=v["</s>"],
                decoder_start_token_id=v["<pad>"],
            ),
            "t5",
            "encoder-decoder",
        ),
        Family(
            "bart",
            "BartForConditionalGeneration",
            lambda v: _tf().BartConfig(
                vocab_size=len(v),
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=64,
                pad_token_id=v["<pad>"],
                bos_token_id=v["<s>"],
                eos_token_id=v["</s>"],
                decoder_start_token_id=v["</s>"],
                forced_eos_token_id=v["</s>"],
            ),
            "roberta",
            "encoder-decoder",
        ),
    ]
}


def build(family: Family, folder: Path) -> Path:
    """Write the family's tiny random model (seeded) and its tokenizer into `folder`, and check
    that the tokenizer comes back from the folder as it was written."""
    from transformers import AutoTokenizer

    tok = make_tokenizer(family.tokenizer_style)
    config = family.config(tok.get_vocab())
    torch.manual_seed(0)
    model = getattr(_tf(), family.cls)(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    again = AutoTokenizer.from_pretrained(folder)
    sample = "<CHI> painted a picture of a horse <MOT> my favorite animal is the"
    assert again(sample)["input_ids"] == tok(sample)["input_ids"], f"{family.name}: tokenizer"
    assert again.pad_token_id == tok.pad_token_id and again.mask_token_id == tok.mask_token_id
    return folder


def load_plain(family: Family, folder: Path, attention: str | None = None) -> Any:
    """The checkpoint loaded with plain transformers in float64 (the model's default attention
    unless `attention` is given). MoE experts run their eager loop: grouped_mm has no float64."""
    kwargs: dict[str, Any] = {"dtype": torch.float64}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if family.name == "mixtral":
        kwargs["experts_implementation"] = "eager"
    return getattr(_tf(), family.cls).from_pretrained(folder, **kwargs).eval()


# --- inputs ---------------------------------------------------------------------------------


def inputs_for(family: Family) -> list[dict[str, Any]]:
    """Three inputs of different lengths for the family's task (run as one padded batch)."""
    if family.task == CAUSAL:
        return [
            {
                "id": "ref",
                "segments": [
                    {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
                    {"name": "LAN", "text": "<CHI> my favorite animal is the"},
                ],
                "target": "horse",
            },
            {"id": "short", "text": "<MOT> saw a dog"},  # no target: the prediction
            {"id": "two", "text": "my cat ate an apple", "target": "red ball"},  # teacher-forced
        ]
    if family.task == MASKED:
        m = family.tokenizer_style.mask
        return [
            {
                "id": "long",
                "text": f"<CHI> {m} painted a picture of a big horse",
                "target": "<MOT>",
            },
            {"id": "pred", "text": f"my favorite animal is the {m}"},
            {"id": "two", "text": f"my {m} ate an {m}", "target": "cat apple"},
        ]
    if family.task == CLASSIFIER:
        return [
            {"id": "long", "text": "<CHI> saw a big dog with a red ball", "label": "pos"},
            {"id": "pred", "text": "my cat ate an apple"},
            {"id": "short", "text": "the toy", "label": "neg"},
        ]
    return [
        {
            "id": "ref",
            "segments": [
                {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
                {"name": "LAN", "text": "<CHI> my favorite animal is the"},
            ],
        },
        {
            "id": "pair",
            "segments": [{"name": "a", "text": "a red ball"}, {"name": "b", "text": "a big toy"}],
        },
        {
            "id": "uneven",
            "segments": [
                {"name": "a", "text": "the dog"},
                {"name": "b", "text": "my cat ate an apple"},
            ],
        },
    ]


COUNTERFACTUAL_WORDS = {
    CAUSAL: {"ref": ("horse", "dog"), "short": ("dog", "cat"), "two": ("cat", "dog")},
    MASKED: {"long": ("horse", "dog"), "pred": ("animal", "toy"), "two": ("ate", "saw")},
    CLASSIFIER: {"long": ("ball", "apple"), "pred": ("cat", "dog"), "short": ("toy", "ball")},
}
"""Per task and input: a word of its text (never the first, which a byte-level BPE splits
differently) and the word its counterfactual has there, one token for one token."""


def with_counterfactuals(family: Family) -> list[dict[str, Any]]:
    """`inputs_for(family)` with a `counterfactual` each (`--patch-baseline counterfactual`):
    the segment holding the word with that word swapped; a text becomes one segment ENV (the
    same text, so the same tokens)."""
    out = []
    for item in inputs_for(family):
        old, new = COUNTERFACTUAL_WORDS[family.task][item["id"]]
        item = dict(item)
        if "text" in item:
            item["segments"] = [{"name": "ENV", "text": item.pop("text")}]
        [segment] = [s for s in item["segments"] if old in s["text"].split()[1:]]
        words = segment["text"].split()
        words[words.index(old, 1)] = new
        item["counterfactual"] = {segment["name"]: " ".join(words)}
        out.append(item)
    return out


def counterfactual_text(item: Mapping[str, Any]) -> str:
    """The text of an input of `with_counterfactuals` with its counterfactual segments."""
    new = item["counterfactual"]
    return " ".join(new.get(s["name"], s["text"]) for s in item["segments"])


# --- the oracle -----------------------------------------------------------------------------


def text_of(item: Mapping[str, Any]) -> str:
    if "segments" in item:
        return " ".join(s["text"] for s in item["segments"])
    return str(item["text"])


@dataclass(frozen=True)
class Case:
    """One input as the oracle runs it: its token sequences (two for a bi-encoder, each run on
    its own) and how its objective reads the outputs."""

    sequences: tuple[tuple[int, ...], ...]
    task: str
    scored: tuple[tuple[int, int], ...] = ()
    """(position, token id) pairs whose −log p is summed (LMs)."""
    label: int | None = None
    spans: tuple[tuple[int, int], ...] = ()
    """[start, end) token ranges of the first two segments (a joint encoder)."""

    def loss(self, outputs: Sequence[Any]) -> torch.Tensor:
        if self.task == ENCODER:
            if len(outputs) == 2:  # bi-encoder: each sequence's mean embedding, specials included
                first, second = (o.last_hidden_state[0].mean(0) for o in outputs)
            else:
                hidden = outputs[0].last_hidden_state[0]
                first, second = (hidden[a:b].mean(0) for a, b in self.spans)
            return -torch.nn.functional.cosine_similarity(first, second, dim=0)
        logp = torch.log_softmax(outputs[0].logits[0], dim=-1)
        if self.task == CLASSIFIER:
            return -logp[self.label]
        return -sum(logp[p, t] for p, t in self.scored)


def case_for(family: Family, item: Mapping[str, Any], tok: Any, model: Any) -> Case:
    """The oracle's case for an input, from the tokenizer alone; a target not given is the
    model's own top prediction (from an unpadded forward)."""
    text = text_of(item)
    enc = tok(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if family.task == CAUSAL:
        start = len(ids) - 1
        if "target" in item:
            full = tok(f"{text} {item['target']}")["input_ids"]
            assert full[: len(ids)] == ids
            targets = full[len(ids) :]
            ids = full[:-1]
        else:
            targets = [int(_logits(model, ids)[-1].argmax())]
        return Case((tuple(ids),), CAUSAL, tuple((start + k, t) for k, t in enumerate(targets)))
    if family.task == MASKED:
        positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
        assert positions, "every masked-LM input has a mask token"
        if "target" in item:
            targets = tok(item["target"], add_special_tokens=False)["input_ids"]
        else:
            targets = _logits(model, ids)[positions].argmax(-1).tolist()
        return Case((tuple(ids),), MASKED, tuple(zip(positions, targets, strict=True)))
    if family.task == CLASSIFIER:
        if "label" in item:
            label = model.config.label2id[item["label"]]
        else:
            label = int(_logits(model, ids).argmax())
        return Case((tuple(ids),), CLASSIFIER, label=label)
    if family.pairing == "separate":
        pair = tuple(tuple(tok(s["text"])["input_ids"]) for s in item["segments"])
        return Case(pair, ENCODER)
    spans, start = [], 0
    for seg in item["segments"][:2]:
        end = start + len(seg["text"])
        offsets = enc["offset_mapping"]
        inside = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        spans.append((inside[0], inside[-1] + 1))
        start = end + 1
    return Case((tuple(ids),), ENCODER, spans=tuple(spans))


def _logits(model: Any, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0]


def _run(model: Any, case: Case, **kwargs: Any) -> tuple[torch.Tensor, list[Any]]:
    """The case's objective and each sequence's outputs, one unpadded forward per sequence."""
    outputs = [model(input_ids=torch.tensor([list(s)]), **kwargs) for s in case.sequences]
    return case.loss(outputs), outputs


def plain_loss(model: Any, case: Case) -> float:
    """The case's objective as a plain transformers forward gives it."""
    with torch.no_grad():
        return float(_run(model, case)[0])


def _attentions(model: Any, case: Case) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """The objective and each sequence's attentions ([1, H, t, t] per layer)."""
    loss, outputs = _run(model, case, output_attentions=True)
    return loss, [o.attentions for o in outputs]


def _block_diagonal(per_sequence: Sequence[Sequence[torch.Tensor]]) -> np.ndarray:
    """Each sequence's [1, H, t, t] per layer placed on the diagonal of [L, H, T, T] (a single
    sequence is the whole matrix; a bi-encoder's two never attend to each other)."""
    blocks = [torch.stack(layers)[:, 0] for layers in per_sequence]
    size = sum(b.shape[-1] for b in blocks)
    out = torch.zeros(*blocks[0].shape[:2], size, size, dtype=blocks[0].dtype)
    start = 0
    for block in blocks:
        end = start + block.shape[-1]
        out[:, :, start:end, start:end] = block
        start = end
    return out.detach().numpy()


def oracle_attention(model: Any, case: Case) -> np.ndarray:
    """A [L, H, T, T] from an eager forward with output_attentions."""
    with torch.no_grad():
        _, attentions = _attentions(model, case)
    return _block_diagonal(attentions)


def oracle_attn_grad(model: Any, case: Case) -> np.ndarray:
    """|A ⊙ ∂L/∂A| [L, H, T, T]."""
    loss, attentions = _attentions(model, case)
    flat = [a for layers in attentions for a in layers]
    grads = iter(torch.autograd.grad(loss, flat))
    return _block_diagonal([[(a * next(grads)).abs() for a in layers] for layers in attentions])


@contextmanager
def patched_attention(model: Any, wrap: Callable[..., Any]) -> Iterator[dict[str, int]]:
    """Within the block, the family's module-level `eager_attention_forward` is replaced by
    `wrap(layer, real, attn, query, key, value, *args, **kw)`, `layer` counted per forward
    (ALBERT's one module serves every layer); yields the calls' counter."""
    module = importlib.import_module(type(model).__module__)
    real = getattr(module, "eager_attention_forward", None)
    if real is None:
        raise AssertionError(f"{module.__name__} has no eager_attention_forward to patch")
    calls = {"n": 0}

    def patched(*args: Any, **kw: Any) -> Any:
        here, calls["n"] = calls["n"], calls["n"] + 1
        return wrap(here, real, *args, **kw)

    def new_forward(*_: Any) -> None:
        calls["n"] = 0

    hook = model.register_forward_pre_hook(new_forward)
    module.eager_attention_forward = patched
    try:
        yield calls
    finally:
        module.eager_attention_forward = real
        hook.remove()


@contextmanager
def scaled_attention(model: Any, layer: int, alpha: float) -> Iterator[None]:
    """Within the block, layer `layer`'s attention matrix is X = alpha · A in every forward:
    its output is recomputed as X · V (X is what output_attentions returns for that layer), the
    other layers run unchanged. Patches the family's module-level `eager_attention_forward`."""
    scaled_calls = {"n": 0}

    def scaled(
        here: int, real: Any, attn: Any, query: Any, key: Any, value: torch.Tensor, *args: Any,
        **kw: Any,
    ) -> Any:  # fmt: skip
        out, weights = real(attn, query, key, value, *args, **kw)
        if here != layer:
            return out, weights
        scaled_calls["n"] += 1
        values = value.repeat_interleave(weights.shape[1] // value.shape[1], dim=1)
        # The family's attention output must be A · V, else this oracle does not apply.
        torch.testing.assert_close((weights @ values).transpose(1, 2), out, rtol=1e-12, atol=1e-12)
        x = alpha * weights
        return (x @ values).transpose(1, 2), x

    with patched_attention(model, scaled):
        yield
    assert scaled_calls["n"], "the patched attention ran for the scaled layer"


@contextmanager
def edited_head_outputs(
    model: Any, edit: Callable[[int, torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, each layer's head outputs o [1, T, H, d] (the family's eager attention
    output, A · V per head, before the output projection) are `edit(layer, o)` in every
    forward; `edit` may keep them (for autograd) or return a replacement."""

    def edited(here: int, real: Any, *args: Any, **kw: Any) -> Any:
        out, weights = real(*args, **kw)
        return edit(here, out), weights

    with patched_attention(model, edited) as calls:
        yield
    assert calls["n"], "the patched attention ran"


def oracle_attattr(model: Any, case: Case, steps: int) -> np.ndarray:
    """Integrated gradients on attention: S_l = A_l ⊙ (1/m) Σ_k ∂L/∂X_l at X_l = (k/m) A_l,
    the other layers unscaled (a bi-encoder's two sequences scaled alike). Signed."""
    with torch.no_grad():
        _, attentions = _attentions(model, case)
    scores: list[list[torch.Tensor]] = [[] for _ in attentions]
    for layer in range(len(attentions[0])):
        totals = [torch.zeros_like(layers[layer]) for layers in attentions]
        for k in range(1, steps + 1):
            with scaled_attention(model, layer, k / steps):
                loss, scaled = _attentions(model, case)
            grads = torch.autograd.grad(loss, [layers[layer] for layers in scaled])
            totals = [t + g for t, g in zip(totals, grads, strict=True)]
        for s, layers, total in zip(scores, attentions, totals, strict=True):
            s.append(layers[layer] * total / steps)
    return _block_diagonal(scores)


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want| / max |want| (inf where shapes differ or got is not finite)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))
