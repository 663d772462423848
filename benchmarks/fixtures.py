"""Models and inputs for the benchmarks, all made locally: random models saved with
`save_pretrained` (never a hub download), word-level tokenizers, and inputs of an exact length.
"""

from __future__ import annotations

import importlib.util
import random
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "childes" / "corpus.py"
DEMO_INPUTS = ROOT / "examples" / "childes" / "inputs.jsonl"
SPECIAL = ("[PAD]", "[UNK]", "<|endoftext|>")
BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@cache
def corpus() -> ModuleType:
    """`examples/childes/corpus.py` (the demo input generator), imported from its file."""
    spec = importlib.util.spec_from_file_location("childes_corpus", CORPUS)
    assert spec is not None and spec.loader is not None, f"cannot import {CORPUS}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_model() -> Path | None:
    """The shipped demo model's folder, or None while it has not been trained yet."""
    from reportgen.engine import demo_model_path

    path = demo_model_path()
    return path if (path / "config.json").is_file() else None


def demo_subject(work: Path, quick: bool) -> tuple[str, Path]:
    """(label, folder) of the model that reads demo inputs: a tiny GPT-2 in quick mode, else the
    shipped demo model, or a random stand-in of its shape while it is not trained yet."""
    if quick:
        return "tiny GPT-2 2×2", gpt2(work / "gpt2-tiny", 2, 2, 16, 64)
    shipped = demo_model()
    if shipped is not None:
        return "demo model", shipped
    return "demo-shaped GPT-2 (random)", gpt2(work / "gpt2-demo-shape", positions=128)


def _tokenizer(words: list[str], bert: bool) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if not bert:
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="[PAD]",
            unk_token="[UNK]",
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
        )
    specials = [(name, vocab[name]) for name in ("[CLS]", "[SEP]")]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=specials
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def gpt2(
    folder: Path,
    layers: int = 12,
    heads: int = 12,
    width: int = 96,
    positions: int = 512,
    init: float = 0.02,
) -> Path:
    """A random GPT-2 over the demo vocabulary (the demo model's shape by default), saved once.
    A larger `init` (weights' standard deviation) makes attention peaky, as trained heads are."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    words = [*SPECIAL, *corpus().vocabulary()]
    config = GPT2Config(
        vocab_size=len(words),
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=init,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    _tokenizer(words, bert=False).save_pretrained(folder)
    return folder


def llama(
    folder: Path,
    layers: int = 16,
    heads: int = 32,
    width: int = 2048,
    kv_heads: int = 8,
    positions: int = 4096,
) -> Path:
    """A random Llama over the demo vocabulary, saved once: by default a 1B-parameter-class
    shape (16 layers × 32 heads, width 2048, grouped-query attention with 8 key/value heads)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = [*SPECIAL, *corpus().vocabulary()]
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    _tokenizer(words, bert=False).save_pretrained(folder)
    return folder


def bert(
    folder: Path,
    layers: int = 12,
    heads: int = 12,
    width: int = 768,
    vocab: int = 30522,
    positions: int = 512,
) -> Path:
    """A random masked-LM BERT (BERT-base's shape by default: 110M parameters), saved once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import BertConfig, BertForMaskedLM

    words = [*BERT_SPECIAL, *corpus().vocabulary()]
    words += [f"w{n}" for n in range(max(0, vocab - len(words)))]
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        max_position_embeddings=positions,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    _tokenizer(words, bert=True).save_pretrained(folder)
    return folder


def demo_inputs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` generated demo inputs ({"id", "segments": [ENV, LAN], "target"}), held-out split."""
    return list(corpus().generate(n, seed, "heldout"))


def causal_input(tokens: int, seed: int, ident: str | None = None) -> dict[str, Any]:
    """A demo-style input of exactly `tokens` words: ENV scenes, then a LAN utterance whose
    target is a noun named in the last scene (so a page has both segments and a sensible
    target)."""
    rng = random.Random(seed)
    row = demo_inputs(1, seed)[0]
    env = row["segments"][0]["text"].split()
    lan = row["segments"][1]["text"].split()
    while len(env) + len(lan) < tokens:
        scene = rng.choice(demo_inputs(8, rng.randrange(10**6)))["segments"][0]["text"]
        env = scene.split() + env
    keep = max(1, tokens - len(lan))
    env = env[-keep:]
    lan = lan[-(tokens - len(env)) :] if tokens - len(env) > 0 else []
    segments = [{"name": "ENV", "text": " ".join(env)}]
    if lan:
        segments.append({"name": "LAN", "text": " ".join(lan)})
    return {"id": ident or f"t{tokens}-{seed}", "segments": segments, "target": row["target"]}


def masked_input(tokens: int, seed: int) -> dict[str, Any]:
    """A masked-LM input of exactly `tokens` tokens with [CLS] and [SEP]: demo words with a
    [MASK] as the last word, the target a demo noun."""
    rng = random.Random(seed)
    words = corpus().vocabulary()
    body = [rng.choice(words) for _ in range(max(1, tokens - 3))] + ["[MASK]"]
    return {"id": f"m{tokens}-{seed}", "text": " ".join(body), "target": "horse"}
