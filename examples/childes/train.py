"""Train the demo GPT-2 on the synthetic CHILDES corpus, then check it makes a good saliency demo.

    python examples/childes/train.py              # train, save to reportgen/demo_model, evaluate
    python examples/childes/train.py --evaluate   # only evaluate the saved model
    python examples/childes/train.py --checkpoints /tmp/ckpts   # checkpoint-0 ... checkpoint-800

Training is seeded and deterministic on a fixed thread count: a rerun writes identical weights
(the SHA-256 of model.safetensors is printed to compare). It uses one thread by default: on the
shared 2-core machine two threads were 2-6x slower per step whenever other jobs were running.
The evaluation prints the acceptance numbers and exits non-zero if one fails.

With `--checkpoints DIR` the same training saves the model every `--checkpoint-every` steps,
from the initial weights (`DIR/checkpoint-0/`) to the final step (`DIR/checkpoint-800/`), each a
model folder with the tokenizer, for `reportgen compare --checkpoints DIR`. It leaves `--out`
alone and checks that the final checkpoint has the same weights (SHA-256) as `--out`.
`--stop-after N` ends that training after N steps, the run (data, learning-rate schedule) still
the one of `--steps`: its checkpoints are the first ones of the full run, rebuilt in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import corpus
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "reportgen" / "demo_model"
INPUTS = Path(__file__).with_name("inputs.jsonl")
SPECIAL = ("[PAD]", "[UNK]", "<|endoftext|>")
DRAWS = 10
"""Random 3-head ablations per input that the top-3 ablation is compared against."""
Head = tuple[int, int]


def build_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the corpus vocabulary; whitespace split keeps `<CHI>` whole."""
    words = [*SPECIAL, *corpus.vocabulary()]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=max_length,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> GPT2LMHeadModel:
    """A narrow 12 x 12 GPT-2 without dropout."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.positions,
        n_embd=args.width,
        n_layer=12,
        n_head=12,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def batches(
    tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded training batches of whole sentences (input, then target): ids and mask."""
    rows = corpus.generate(args.steps * args.batch, seed=args.seed, split="train")
    texts = [f"{corpus.text(row)} {row['target']}" for row in rows]
    for start in range(0, len(texts), args.batch):
        encoded = tokenizer(texts[start : start + args.batch], padding=True, return_tensors="pt")
        yield encoded["input_ids"], encoded["attention_mask"]


def train(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    args: argparse.Namespace,
    save: Callable[[int], None] | None = None,
) -> None:
    """AdamW, linear warm-up, cosine decay; loss on every next token, plus once more on the noun.

    The extra noun term makes the copy from ENV, a small part of the plain LM loss, converge
    within the step budget. `save(n)` is called with the model after n steps, for n = 0 and
    every `args.checkpoint_every` steps up to the last (saving reads the weights only, so the
    training is the same with or without it). With `args.stop_after` it ends after that many
    steps of the same run.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    if save is not None:
        save(0)
    for step, (ids, mask) in enumerate(batches(tokenizer, args)):
        if step == args.stop_after:
            break
        logits = model(ids, attention_mask=mask).logits[:, :-1]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        rows, noun = torch.arange(len(ids)), mask.sum(1) - 2
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten()) + F.cross_entropy(
            logits[rows, noun], labels[rows, noun]
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
        done = step + 1
        if save is not None and (done % args.checkpoint_every == 0 or done == args.steps):
            save(done)
    model.eval()


@torch.no_grad()
def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, rows: list[dict]) -> float:
    """Share of inputs whose most likely next token is the target."""
    hits = 0
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        encoded = tokenizer([corpus.text(r) for r in chunk], padding=True, return_tensors="pt")
        logits = model(**encoded).logits
        last = encoded["attention_mask"].sum(1) - 1
        predicted = logits[torch.arange(len(chunk)), last].argmax(-1)
        targets = torch.tensor(tokenizer.convert_tokens_to_ids([r["target"] for r in chunk]))
        hits += int((predicted == targets).sum())
    return hits / len(rows)


def saliency(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, row: dict
) -> tuple[torch.Tensor, list[str], list[int], list[int]]:
    """|A * dL/dA| as [layer, head, query, key], the tokens, and the ENV and LAN positions."""
    env_text = row["segments"][0]["text"]
    encoded = tokenizer(corpus.text(row), return_offsets_mapping=True, return_tensors="pt")
    starts = [start for start, _ in encoded.pop("offset_mapping")[0].tolist()]
    env = [i for i, start in enumerate(starts) if start < len(env_text)]
    lan = [i for i, start in enumerate(starts) if start > len(env_text)]
    output = model(**encoded, output_attentions=True)
    if not output.attentions:
        raise RuntimeError("model returned no attentions; load it with attn_implementation='eager'")
    target = tokenizer.convert_tokens_to_ids(row["target"])
    loss = -torch.log_softmax(output.logits[0, -1], -1)[target]
    grads = torch.autograd.grad(loss, output.attentions)
    scores = torch.stack([(a * g).abs()[0] for a, g in zip(output.attentions, grads, strict=True)])
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    return scores.detach(), tokens, env, lan


def flow_shares(scores: torch.Tensor, env: list[int], lan: list[int]) -> torch.Tensor:
    """`flow:ENV->LAN` per head: saliency from LAN queries to ENV keys, as shares summing to 1."""
    flow = scores[:, :, lan][:, :, :, env].sum((-1, -2))
    return flow / flow.sum()


@contextmanager
def ablated(model: PreTrainedModel, heads: Sequence[Head]) -> Iterator[None]:
    """Zero the given heads' outputs (the input slices of each layer's `attn.c_proj`)."""
    config = model.config
    size = config.n_embd // config.n_head
    hooks = []
    for layer in {layer for layer, _ in heads}:
        off = [h for lay, h in heads if lay == layer]

        def zero(module: torch.nn.Module, inputs: tuple, off: list[int] = off) -> tuple:
            hidden = inputs[0].clone()
            for h in off:
                hidden[..., h * size : (h + 1) * size] = 0
            return (hidden, *inputs[1:])

        c_proj = model.transformer.h[layer].attn.c_proj
        hooks.append(c_proj.register_forward_pre_hook(zero))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def probability(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    row: dict,
    heads: Sequence[Head] = (),
) -> float:
    """p(target | input) with the given heads zeroed."""
    encoded = tokenizer(corpus.text(row), return_tensors="pt")
    with ablated(model, heads):
        logits = model(**encoded).logits[0, -1]
    return float(torch.softmax(logits, -1)[tokenizer.convert_tokens_to_ids(row["target"])])


def evaluate(path: Path, rows: list[dict]) -> dict:
    """The acceptance numbers: reference probability, top-head dominance, ablation wins."""
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    layers, heads = model.config.n_layer, model.config.n_head
    all_heads = [(layer, head) for layer in range(layers) for head in range(heads)]
    reference = rows[0]
    scores, tokens, env, lan = saliency(model, tokenizer, reference)
    shares = flow_shares(scores, env, lan)
    top = divmod(int(shares.argmax()), heads)
    query, key = divmod(int(scores[top].argmax()), len(tokens))
    wins, drops = 0, []
    for row in rows:
        row_scores, _, row_env, row_lan = saliency(model, tokenizer, row)
        order = flow_shares(row_scores, row_env, row_lan).flatten().argsort(descending=True)
        top3 = [divmod(int(i), heads) for i in order[:3]]
        base = probability(model, tokenizer, row)
        top_drop = base - probability(model, tokenizer, row, top3)
        rng = random.Random(f"ablation-{row['id']}")
        others = [h for h in all_heads if h not in top3]
        random_drop = statistics.mean(
            base - probability(model, tokenizer, row, rng.sample(others, 3)) for _ in range(DRAWS)
        )
        wins += top_drop > random_drop
        drops.append((top_drop, random_drop))
    return {
        "heldout_accuracy": accuracy(model, tokenizer, corpus.generate(2000, 1, "heldout")),
        "p_reference": probability(model, tokenizer, reference),
        "top_layer": top[0],
        "top_head": top[1],
        "top_share": float(shares[top]),
        "median_share": float(shares.flatten().quantile(0.5)),
        "query": tokens[query],
        "query_pos": query,
        "key": tokens[key],
        "key_pos": key,
        "ablation_wins": wins,
        "ablation_inputs": len(rows),
        "mean_top3_drop": statistics.mean(d for d, _ in drops),
        "mean_random3_drop": statistics.mean(d for _, d in drops),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


CARD = """\
# reportgen demo model

A 12-layer x 12-head GPT-2 trained from scratch to finish a child's utterance with a noun named
earlier in the scene. reportgen ships it so reports and tests run offline; it is a toy, not a
language model of English.

    <CHI> painted a picture of a horse <CHI> my favorite animal is the  ->  horse

## How it was made

    {command}

`examples/childes/train.py`, seed {seed}, {threads} torch thread(s), deterministic algorithms:
{steps} steps of batch {batch}, AdamW (lr {lr}, weight decay 0.01, {warmup} warm-up steps, cosine
decay), loss on every next token plus once more on the final noun. Training took {seconds:.0f} s
of wall time on a 2-core CPU shared with other jobs. The same command on the same thread count
writes the same weights: `model.safetensors` SHA-256 `{sha256}`.

## Data

`examples/childes/corpus.py` generates child-directed speech with CHILDES speaker tags
(`<CHI>`, `<MOT>`, `<FAT>`): an environment segment (ENV, one or two scenes from
{scenes} templates, naming the target and up to three distractor nouns of other categories) and
a language segment (LAN, one of {utterances} utterances, most asking for a category, as in "my
favorite animal is the"). {nouns} nouns in {categories} categories. The model reads the segments
joined by single spaces, without segment markers. {heldout} (scene template, noun) pairs never
occur in training, among them the reference pair (`painted a picture of a` + `horse`).

## Architecture

`GPT2LMHeadModel`: 12 layers, 12 heads, n_embd {width} (head size {head_size}), n_positions
{positions}, no dropout, tied embeddings, {parameters:,} parameters, float32 safetensors.
Word-level tokenizer (`tokenizers` WordLevel + WhitespaceSplit, {vocab} tokens including
`[PAD]`, `[UNK]` and `<|endoftext|>`); unknown words become `[UNK]`.

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path)

## Measured

`python examples/childes/train.py --evaluate` (eager attention, saliency
S = |A * dL/dA| with L = -log p(target) at the last position; layers and heads 0-based):

| check | value | needed |
|---|---|---|
| held-out accuracy, final noun (2,000 inputs) | {heldout_accuracy:.2%} | >= 95% |
| p(horse), reference input | {p_reference:.3f} | >= 0.5 |
| top `flow:ENV->LAN` head, reference | layer {top_layer}, head {top_head} | |
| its share vs the median share | {top_share:.4f} vs {median_share:.4f} ({ratio:.1f}x) | >= 3x |
| its largest cell (query, key) | `{query}` ({query_pos}), `{key}` ({key_pos}) | `the`, `horse` |
| top-3 ablation beats random 3 | {ablation_wins} of {ablation_inputs} inputs | >= 90% |

The ablation uses `examples/childes/inputs.jsonl`; each input's top-3 heads by its own
`flow:ENV->LAN` score against the mean of {draws} seeded draws of 3 other heads. Mean drop of
p(target): {mean_top3_drop:.4f} (top 3) vs {mean_random3_drop:.4f} (random 3). The drops are
small because p(target) is near 1 and several layer-3 heads copy the noun redundantly.
"""


def check(metrics: dict) -> list[str]:
    """The acceptance criteria that fail."""
    failures = []
    if metrics["heldout_accuracy"] < 0.95:
        failures.append(f"held-out accuracy {metrics['heldout_accuracy']:.3f} < 0.95")
    if metrics["p_reference"] < 0.5:
        failures.append(f"p(horse) {metrics['p_reference']:.3f} < 0.5")
    if metrics["top_share"] < 3 * metrics["median_share"]:
        failures.append("top head share < 3x the median share")
    if (metrics["query"], metrics["key"]) != ("the", "horse"):
        failures.append(f"top head's largest cell is ({metrics['query']}, {metrics['key']})")
    if metrics["ablation_wins"] < 0.9 * metrics["ablation_inputs"]:
        failures.append(f"ablation wins {metrics['ablation_wins']}/{metrics['ablation_inputs']}")
    return failures


def sha256_of(folder: Path) -> str:
    """The SHA-256 of `folder/model.safetensors`."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def save_checkpoints(args: argparse.Namespace) -> None:
    """Train as for `--out`, saving `checkpoint-N/` folders under `args.checkpoints`; fail if
    the final one's weights differ from those in `args.out`."""
    root: Path = args.checkpoints
    if root.resolve() == args.out.resolve() or args.out.resolve() in root.resolve().parents:
        raise SystemExit(f"--checkpoints {root}: give a folder outside --out {args.out}")
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(args.positions)
    saved = build_tokenizer(args.positions)  # as --out has it: training sets padding on the other
    model = build_model(tokenizer, args)

    def save(step: int) -> None:
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder)
        saved.save_pretrained(folder)
        print(f"saved {folder}  sha256 {sha256_of(folder)}", flush=True)

    started = time.perf_counter()
    train(model, tokenizer, args, save)
    print(f"trained in {time.perf_counter() - started:.0f} s")
    if args.stop_after is not None:
        print(f"stopped after step {args.stop_after} of {args.steps}: no final checkpoint to check")
        return
    final = root / f"checkpoint-{args.steps}"
    if not (args.out / "model.safetensors").is_file():
        print(f"{args.out} has no model.safetensors to check {final} against")
        return
    if sha256_of(final) != sha256_of(args.out):
        raise SystemExit(
            f"{final} differs from {args.out} (SHA-256); were they trained with other settings "
            "or thread counts?"
        )
    print(f"{final} has the same weights as {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the saved model")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--width", type=int, default=96, help="n_embd")
    parser.add_argument("--positions", type=int, default=128, help="n_positions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (weights depend on it)"
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        help="train and save checkpoint-N folders here (leaves --out alone; checks against it)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between them")
    parser.add_argument(
        "--stop-after",
        type=int,
        help="with --checkpoints: end after this many steps of the --steps run (its first "
        "checkpoints)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    if args.checkpoints is not None:
        if args.evaluate:
            parser.error("--checkpoints trains; drop --evaluate")
        if args.checkpoint_every < 1:
            parser.error("--checkpoint-every must be at least 1")
        if args.stop_after is not None and not 0 <= args.stop_after < args.steps:
            parser.error(f"--stop-after must be from 0 to {args.steps - 1} (--steps - 1)")
        save_checkpoints(args)
        return
    if args.stop_after is not None:
        parser.error("--stop-after needs --checkpoints (a stopped run is not the demo model)")
    seconds = 0.0
    if not args.evaluate:
        torch.manual_seed(args.seed)
        tokenizer = build_tokenizer(args.positions)
        tokenizer.save_pretrained(args.out)
        model = build_model(tokenizer, args)
        started = time.perf_counter()
        train(model, tokenizer, args)
        seconds = time.perf_counter() - started
        model.save_pretrained(args.out)
        print(f"trained in {seconds:.0f} s; saved to {args.out}")
    sha256 = sha256_of(args.out)
    print("model.safetensors sha256", sha256)
    rows = [json.loads(line) for line in INPUTS.read_text().splitlines()]
    metrics = evaluate(args.out, rows)
    print(json.dumps(metrics, indent=1))
    if not args.evaluate:
        facts = {
            "command": " ".join(["python examples/childes/train.py", *sys.argv[1:]]),
            "sha256": sha256,
            "seconds": seconds,
            "scenes": len(corpus.SCENES),
            "utterances": len(corpus.GENERIC_UTTERANCES)
            + sum(map(len, corpus.UTTERANCES.values())),
            "nouns": len(corpus.NOUN_LIST),
            "categories": len(corpus.NOUNS),
            "heldout": len(corpus.HELDOUT),
            "head_size": args.width // 12,
            "vocab": len(SPECIAL) + len(corpus.vocabulary()),
            "ratio": metrics["top_share"] / metrics["median_share"],
            "draws": DRAWS,
        }
        card = CARD.format(**vars(args), **facts, **metrics)
        (args.out / "README.md").write_text(card)
    failures = check(metrics)
    if failures:
        raise SystemExit("acceptance failed: " + "; ".join(failures))
    print("acceptance passed")


if __name__ == "__main__":
    main()
