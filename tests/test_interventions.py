"""Interventions (zero, mean and resample ablation, the edge knockout) and effect measures
(logprob, logit-diff, prob), each checked against a plain GPT-2 forward written here in float64
from the model's weights: head outputs replaced by hand before the output projection, and the
knockout as a hand-built pre-softmax attention mask."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from reportgen.engine import compute
from reportgen.errors import InputError, SaliencyError, SettingsError
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

ITEMS = [
    {
        "id": "horse",
        "segments": [
            {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "horse",
        "contrast": "dog",
    },
    {
        "id": "dog",
        "segments": [
            {"name": "ENV", "text": "<MOT> saw a big dog"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "dog",
        "contrast": "cat",
    },
    {
        "id": "ball",
        "segments": [
            {"name": "ENV", "text": "<CHI> played with a red ball"},
            {"name": "LAN", "text": "<MOT> my favorite toy is the"},
        ],
        "target": "ball",
        "contrast": "apple",
    },
    {
        "id": "apple",
        "segments": [
            {"name": "ENV", "text": "<MOT> ate an apple"},
            {"name": "LAN", "text": "my favorite animal is the"},
        ],
        "target": "cat",
        "contrast": "banana",
    },
]
METRIC = "flow:ENV->LAN"


def plain_forward(model, ids, head_fn=None, mask_fn=None):
    """GPT-2's logits [T, V] for one sequence, written out: `head_fn(layer, o)` may replace the
    heads' outputs o [T, H, d] before c_proj, `mask_fn(layer)` adds [H, T, T] to the scores."""
    cfg = model.config
    width, heads = cfg.n_embd, cfg.n_head
    d = width // heads
    tr = model.transformer
    t = len(ids)
    ids = torch.tensor(ids)
    x = tr.wte.weight[ids] + tr.wpe.weight[:t]

    def norm(x, ln):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    causal = torch.full((t, t), -math.inf, dtype=torch.float64).triu(1)
    for layer, block in enumerate(tr.h):
        h = norm(x, block.ln_1)
        qkv = h @ block.attn.c_attn.weight + block.attn.c_attn.bias
        q, k, v = (part.reshape(t, heads, d).transpose(0, 1) for part in qkv.split(width, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + causal
        if mask_fn is not None:
            scores = scores + mask_fn(layer)
        o = (torch.softmax(scores, -1) @ v).transpose(0, 1)  # [T, H, d]
        if head_fn is not None:
            o = head_fn(layer, o.clone())
        x = x + o.reshape(t, width) @ block.attn.c_proj.weight + block.attn.c_proj.bias
        h = norm(x, block.ln_2)
        inner = torch.nn.functional.gelu(
            h @ block.mlp.c_fc.weight + block.mlp.c_fc.bias, approximate="tanh"
        )
        x = x + inner @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
    return norm(x, tr.ln_f) @ tr.wte.weight.T


def head_outputs(model, ids):
    """Every layer's head outputs [L, T, H, d] in the plain forward."""
    kept = {}

    def keep(layer, o):
        kept[layer] = o.clone()
        return o

    plain_forward(model, ids, keep)
    return torch.stack([kept[layer] for layer in sorted(kept)])


@pytest.fixture(scope="module")
def gpt2(loaded):
    return loaded["gpt2"]


def _ids(lm, item):
    text = " ".join(s["text"] for s in item["segments"])
    ids = lm.tokenizer(text)["input_ids"]
    return (
        ids,
        lm.tokenizer(item["target"])["input_ids"][0],
        lm.tokenizer(item["contrast"])["input_ids"][0],
    )


def _effect(logits, target, contrast, effect):
    logp = torch.log_softmax(logits[-1], -1)
    if effect == "logprob":
        return float(logp[target])
    if effect == "prob":
        return float(logp[target].exp())
    return float(logits[-1, target] - logits[-1, contrast])


def _replaced(heads, replacement):
    """head_fn replacing the (layer, head)s by `replacement(layer, head, o)`."""

    def fn(layer, o):
        for lay, head in heads:
            if lay == layer:
                o[:, head] = replacement(layer, head, o)
        return o

    return fn


def _results(gpt2, **changes):
    settings = Settings(
        dtype="float64", metric=METRIC, ablate_k=3, ablate_draws=3, ablate_layers=True, **changes
    )
    return list(compute(examples_from_items(ITEMS), gpt2, settings))


def test_the_plain_forward_is_the_models(gpt2):
    ids, _, _ = _ids(gpt2, ITEMS[0])
    with torch.no_grad():
        theirs = gpt2.model(torch.tensor([ids])).logits[0]
        ours = plain_forward(gpt2.model, ids)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("ablation", "effect"),
    [("zero", "prob"), ("mean", "logprob"), ("resample", "logit-diff"), ("mean", "logit-diff")],
)
def test_ablation_equals_hand_replaced_head_outputs(gpt2, ablation, effect):
    results = _results(gpt2, ablation=ablation, effect=effect)
    model = gpt2.model
    with torch.no_grad():
        outs = {item["id"]: head_outputs(model, _ids(gpt2, item)[0]) for item in ITEMS}
        tokens = sum(o.shape[1] for o in outs.values())
        mean = sum(o.sum(1) for o in outs.values()) / tokens  # [L, H, d]
        lengths = set()  # resample: donors longer (1) and shorter (-1) than the input
        for item, result in zip(ITEMS, results, strict=True):
            a = result.ablation
            assert a is not None and a.intervention == ablation and a.effect == effect
            ids, target, contrast = _ids(gpt2, item)
            if ablation == "zero":
                vector = None
            elif ablation == "mean":
                vector = mean
            else:  # the donor's output at each position, its mean past its end
                assert a.donor is not None and a.donor != item["id"]
                donor = outs[a.donor]  # [L, T', H, d]
                lengths.add(np.sign(donor.shape[1] - len(ids)))
                vector = torch.stack(
                    [donor[:, p] if p < donor.shape[1] else donor.mean(1) for p in range(len(ids))],
                    1,
                )  # [L, T, H, d]

            def value(heads, vector=vector, ids=ids, target=target, contrast=contrast):
                def by_hand(layer, head, o):
                    if vector is None:
                        return 0
                    return vector[layer, :, head] if vector.dim() == 4 else vector[layer, head]

                fn = _replaced(heads, by_hand)
                return _effect(plain_forward(model, ids, fn), target, contrast, effect)

            assert a.value == pytest.approx(
                _effect(plain_forward(model, ids), target, contrast, effect), rel=1e-9, abs=1e-12
            )
            expected_curve = [value(a.heads[: n + 1]) for n in range(len(a.heads))]
            np.testing.assert_allclose(a.curve, expected_curve, rtol=1e-9, atol=1e-12)
            assert a.value_top == a.curve[-1]
            expected_random = [value(drawn) for drawn in a.random_heads]
            np.testing.assert_allclose(a.random_values, expected_random, rtol=1e-9, atol=1e-12)
            assert a.draws == 3 and all(len(set(drawn)) == 3 for drawn in a.random_heads)
            heads = model.config.n_head
            whole_layers = [
                value([(layer, h) for h in range(heads)]) for layer in range(model.config.n_layer)
            ]
            np.testing.assert_allclose(a.layers, whole_layers, rtol=1e-9, atol=1e-12)
            assert a.delta_layers == pytest.approx([v - a.value for v in whole_layers], abs=1e-9)
    if ablation == "resample":
        assert {-1, 1} <= lengths, "both kinds of donor are checked"


PAIRS = [
    {
        "id": "p",
        "segments": [{"name": "a", "text": "a red ball"}, {"name": "b", "text": "a big red toy"}],
    },
    {
        "id": "q",
        "segments": [{"name": "a", "text": "<CHI> saw a big dog"}, {"name": "b", "text": "my toy"}],
    },
    {
        "id": "r",
        "segments": [
            {"name": "a", "text": "an apple"},
            {"name": "b", "text": "my favorite animal is the cat"},
        ],
    },
]
"""Bi-encoder pairs whose first and second texts are longer and shorter in turn: every donor is
longer than the input in one text and shorter in the other."""


def test_resample_on_a_bi_encoder_aligns_each_text_with_the_donors(loaded, tiny_models):
    """A bi-encoder reads its two texts as two sequences: each text's head outputs are replaced
    by the donor's same text's, position by position (past that text's end, by the donor's mean
    over all its tokens), here by forward hooks on a plain transformers BERT."""
    from transformers import AutoModel

    bert = loaded["bert"]
    settings = Settings(dtype="float64", ablation="resample", ablate_k=2, ablate_draws=2)
    results = list(compute(examples_from_items(PAIRS), bert, settings))
    plain = AutoModel.from_pretrained(tiny_models["bert"], dtype=torch.float64).eval()
    heads = plain.config.num_attention_heads

    def run(text, head_fn=None):
        """The text's mean embedding and its head outputs [L, T, H, d] (after `head_fn`)."""
        kept = []

        def hook(module, args, output, layer):
            o = output[0][0].reshape(output[0].shape[1], heads, -1)  # [T, H, d]
            if head_fn is not None:
                o = head_fn(layer, o.clone())
            kept.append(o)
            return (o.reshape(1, o.shape[0], -1), *output[1:])

        handles = [
            layer.attention.self.register_forward_hook(lambda m, a, out, at=at: hook(m, a, out, at))
            for at, layer in enumerate(plain.encoder.layer)
        ]
        try:
            with torch.no_grad():
                ids = bert.tokenizer(text, return_tensors="pt")
                hidden = plain(**ids).last_hidden_state[0]
        finally:
            for handle in handles:
                handle.remove()
        return hidden.mean(0), torch.stack(kept)

    texts = {item["id"]: [s["text"] for s in item["segments"]] for item in PAIRS}
    outs = {key: [run(text)[1] for text in pair] for key, pair in texts.items()}
    for item, result in zip(PAIRS, results, strict=True):
        a = result.ablation
        assert a is not None and a.donor is not None and a.donor != item["id"]
        donor = outs[a.donor]
        mean = torch.cat(donor, 1).mean(1)  # [L, H, d]: over all the donor's tokens
        vectors = [
            torch.stack([d[:, p] if p < d.shape[1] else mean for p in range(o.shape[1])], 1)
            for o, d in zip(outs[item["id"]], donor, strict=True)
        ]
        longer = [d.shape[1] - o.shape[1] for o, d in zip(outs[item["id"]], donor, strict=True)]
        assert min(longer) < 0 < max(longer)

        def value(chosen, vectors=vectors, pair=texts[item["id"]]):
            first, second = (
                run(text, _replaced(chosen, lambda layer, head, o, v=v: v[layer, :, head]))[0]
                for text, v in zip(pair, vectors, strict=True)
            )
            return float(torch.nn.functional.cosine_similarity(first, second, 0))

        assert a.value == pytest.approx(value([]), rel=1e-9)
        expected = [value(a.heads[: n + 1]) for n in range(len(a.heads))]
        np.testing.assert_allclose(a.curve, expected, rtol=1e-9, atol=1e-12)
        expected_random = [value(drawn) for drawn in a.random_heads]
        np.testing.assert_allclose(a.random_values, expected_random, rtol=1e-9, atol=1e-12)


def test_knockout_equals_a_hand_built_attention_mask(gpt2):
    results = _results(gpt2, ablation="zero", effect="logprob")
    model = gpt2.model
    heads = model.config.n_head
    for item, result in zip(ITEMS, results, strict=True):
        a = result.ablation
        assert a is not None and a.knockout is not None
        assert (a.knockout.src, a.knockout.dst) == ("ENV", "LAN")
        ids, target, contrast = _ids(gpt2, item)
        spans = {s.name: (s.start, s.end) for s in result.spans}
        (s0, s1), (d0, d1) = spans["ENV"], spans["LAN"]

        def knocked(chosen, ids=ids, target=target, contrast=contrast, s0=s0, s1=s1, d0=d0, d1=d1):
            t = len(ids)

            def mask(layer):
                m = torch.zeros((heads, t, t), dtype=torch.float64)
                for lay, head in chosen:
                    if lay == layer:
                        m[head, d0:d1, s0:s1] = -math.inf
                return m

            with torch.no_grad():
                logits = plain_forward(model, ids, mask_fn=mask)
            return _effect(logits, target, contrast, "logprob")

        expected = knocked(a.heads)
        assert a.knockout.value == pytest.approx(expected, rel=1e-9)
        assert a.delta_knockout == pytest.approx(expected - a.value, rel=1e-7, abs=1e-12)
        per_layer = [
            knocked([(layer, h) for h in range(heads)]) for layer in range(model.config.n_layer)
        ]
        np.testing.assert_allclose(a.knockout.layers, per_layer, rtol=1e-9)
        assert len(a.delta_layer_knockouts) == model.config.n_layer
        assert any(abs(v - a.value) > 1e-9 for v in per_layer)  # the knockout does something


def test_no_knockout_without_a_flow_metric(gpt2):
    settings = Settings(dtype="float64", metric="total", ablate_k=2, ablate_draws=2)
    [result] = compute(examples_from_items(ITEMS[:1]), gpt2, settings)
    assert result.ablation is not None and result.ablation.knockout is None
    assert result.ablation.layers == (), "layers are ablated only with --ablate-layers"


def test_mean_and_donors_come_from_the_whole_run_not_the_part_computed(gpt2):
    """A shard or a resumed run computes some inputs; mean and resample draw on all of them."""
    examples = examples_from_items(ITEMS)
    for ablation in ("mean", "resample"):
        settings = Settings(
            dtype="float64", metric=METRIC, ablate_k=2, ablate_draws=2, ablation=ablation
        )
        whole = list(compute(examples, gpt2, settings))
        part = list(compute(examples[2:], gpt2, settings, pool=examples))
        for a, b in zip(part, whole[2:], strict=True):  # equal up to the batch's rounding
            assert a.ablation is not None and b.ablation is not None
            assert (a.ablation.donor, a.ablation.heads) == (b.ablation.donor, b.ablation.heads)
            np.testing.assert_allclose(a.ablation.curve, b.ablation.curve, rtol=1e-12)
            np.testing.assert_allclose(
                a.ablation.random_values, b.ablation.random_values, rtol=1e-12
            )
    mean = Settings(dtype="float64", metric=METRIC, ablate_k=2, ablate_draws=2)
    whole = list(compute(examples, gpt2, mean))
    alone = list(compute(examples[2:], gpt2, mean))
    assert alone[0].ablation is not None and whole[2].ablation is not None
    assert alone[0].ablation.curve != pytest.approx(whole[2].ablation.curve, rel=1e-6)


def test_batching_does_not_change_the_interventions(gpt2):
    one = _results(gpt2, ablation="mean", batch_size=1)
    many = _results(gpt2, ablation="mean", batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.ablation is not None and b.ablation is not None
        np.testing.assert_allclose(a.ablation.curve, b.ablation.curve, rtol=1e-9)
        np.testing.assert_allclose(a.ablation.random_values, b.ablation.random_values, rtol=1e-9)
        assert a.ablation.knockout is not None and b.ablation.knockout is not None
        assert a.ablation.knockout.value == pytest.approx(b.ablation.knockout.value, rel=1e-9)
        np.testing.assert_allclose(a.ablation.layers, b.ablation.layers, rtol=1e-9)
        np.testing.assert_allclose(
            a.ablation.knockout.layers, b.ablation.knockout.layers, rtol=1e-9
        )


def test_logit_diff_needs_a_contrast_on_every_input(gpt2):
    items = [dict(ITEMS[0]), {k: v for k, v in ITEMS[1].items() if k != "contrast"}]
    with pytest.raises(SaliencyError, match="input 'dog' has no \"contrast\""):
        list(compute(examples_from_items(items), gpt2, Settings(effect="logit-diff")))
    long = [{**ITEMS[0], "contrast": "red ball"}]
    with pytest.raises(SaliencyError, match="contrast 'red ball' is 2 tokens"):
        list(compute(examples_from_items(long), gpt2, Settings(effect="logit-diff")))


def test_resample_needs_two_inputs(gpt2):
    with pytest.raises(SaliencyError, match="only one input"):
        list(compute(examples_from_items(ITEMS[:1]), gpt2, Settings(ablation="resample")))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"text": "a b", "contrast": "dog"}, 'needs a "target"'),
        ({"text": "a b", "target": "dog", "contrast": "dog"}, "the same as"),
        ({"text": "a b", "target": "dog", "contrast": ["x"]}, "must be a string"),
        ({"text": "a b", "target": "dog", "contrast": " "}, "is empty"),
    ],
)
def test_contrast_is_validated_like_target(item, message):
    with pytest.raises(InputError, match=message):
        examples_from_items([item])


def test_unknown_ablation_and_effect_name_the_option():
    with pytest.raises(SettingsError, match="unknown --ablation 'half'"):
        Settings(ablation="half").validate()
    with pytest.raises(SettingsError, match="unknown --effect 'kl'"):
        Settings(effect="kl").validate()


def test_the_export_of_a_run_holds_its_layer_ablation_and_knockout(gpt2, tmp_path):
    """Through the API: a run folder computed with --ablate-layers, its `layer_ablation` table
    against the plain forward here (every head of a layer zeroed; the flow's edges masked in
    every head of a layer), and its `layer_tests` table and about page against scipy's sign
    tests and Benjamini–Hochberg on those changes."""
    import csv

    import scipy.stats

    from reportgen.export import export
    from reportgen.pipeline import compute as compute_run
    from reportgen.site import render_site
    from reportgen.site.html import number

    items = ITEMS
    settings = Settings(
        dtype="float64",
        device="cpu",
        metric=METRIC,
        ablation="zero",
        ablate_k=1,
        ablate_draws=1,
        ablate_layers=True,
    )
    run = compute_run(items, tmp_path / "run", settings, model=gpt2)
    export(run, tmp_path / "tables", "csv")

    def table(name):
        with (tmp_path / "tables" / f"{name}.csv").open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    rows = table("layer_ablation")
    model = gpt2.model
    layers, heads = model.config.n_layer, model.config.n_head
    expected = []
    with torch.no_grad():
        for item, result in zip(items, run.results(), strict=True):
            ids, target, _ = _ids(gpt2, item)
            intact = _effect(plain_forward(model, ids), target, None, "logprob")
            spans = {s.name: (s.start, s.end) for s in result.spans}
            (s0, s1), (d0, d1) = spans["ENV"], spans["LAN"]
            t = len(ids)
            for layer in range(layers):
                zeroed = _replaced([(layer, h) for h in range(heads)], lambda *_: 0)
                value = _effect(plain_forward(model, ids, zeroed), target, None, "logprob")
                expected.append((item["id"], layer + 1, "zero", value, value - intact))
            for layer in range(layers):
                mask = torch.zeros((heads, t, t), dtype=torch.float64)
                mask[:, d0:d1, s0:s1] = -math.inf
                logits = plain_forward(
                    model, ids, mask_fn=lambda lay, m=mask, at=layer: m if lay == at else 0
                )
                value = _effect(logits, target, None, "logprob")
                expected.append((item["id"], layer + 1, "knockout:ENV->LAN", value, value - intact))
    assert [(r["id"], int(r["layer"]), r["intervention"]) for r in rows] == [
        e[:3] for e in expected
    ]
    assert {r["effect"] for r in rows} == {"logprob"}
    np.testing.assert_allclose([float(r["value"]) for r in rows], [e[3] for e in expected], 1e-9)
    np.testing.assert_allclose(
        [float(r["delta"]) for r in rows], [e[4] for e in expected], rtol=1e-7, atol=1e-12
    )
    assert any(abs(e[4]) > 1e-6 for e in expected)  # the ablations do something
    render_site(run, tmp_path / "site", Settings(pages=0))
    about = (tmp_path / "site" / "about.html").read_text("utf-8")
    tests = table("layer_tests")
    assert [(int(r["layer"]), r["intervention"], int(r["n"])) for r in tests] == [
        (layer + 1, intervention, len(items))
        for intervention in ("zero", "knockout:ENV->LAN")
        for layer in range(layers)
    ]
    for intervention in ("zero", "knockout:ENV->LAN"):
        deltas = np.array(
            [
                [e[4] for e in expected if e[1:3] == (layer + 1, intervention)]
                for layer in range(layers)
            ]
        )  # [layers, inputs]
        below, above = (deltas < 0).sum(1), (deltas > 0).sum(1)
        p = np.array([scipy.stats.binomtest(b, b + a).pvalue for b, a in zip(below, above)])
        q = scipy.stats.false_discovery_control(p)
        got = [r for r in tests if r["intervention"] == intervention]
        assert [(int(r["below"]), int(r["above"])) for r in got] == list(zip(below, above))
        np.testing.assert_allclose([float(r["mean_delta"]) for r in got], deltas.mean(1), 1e-7)
        np.testing.assert_allclose([float(r["p"]) for r in got], p, rtol=1e-12)
        np.testing.assert_allclose([float(r["q"]) for r in got], q, rtol=1e-12)
        for layer in range(layers):
            shown = f'{below[layer]} / {above[layer]}</td><td class="rg-n">{number(p[layer], 2)}'
            assert f'{shown}</td><td class="rg-n">{number(q[layer], 2)}</td>' in about


def test_interventions_run_in_passes_the_memory_budget_holds(gpt2, monkeypatch):
    """A long input's interventions are not one pass of batch × (k + draws + 1) rows (at
    T = 4096 that needed over 24 GB): the rows per pass follow the memory budget, down to one,
    and the results are the same."""
    from reportgen.engine import ablation

    settings = Settings(dtype="float64", metric=METRIC, ablate_k=3, ablate_draws=3, batch_size=4)
    row = 2 * gpt2.num_heads * 4096 * 4096 * (8 + 1)  # float64 scores and a mask, twice
    monkeypatch.setattr(ablation, "PASS_BUDGET", 5 * row + 7)
    assert ablation.rows_per_pass(gpt2, 4096, settings) == 5
    assert ablation.rows_per_pass(gpt2, 16, settings) == 4 * (3 + 3 + 1)  # short: as before
    limited = replace(settings, max_memory="2GiB")  # --max-memory, when given, decides
    assert ablation.rows_per_pass(gpt2, 4096, limited) == 2 * 2**30 // row
    roomy = _results(gpt2, ablation="mean", batch_size=4)
    passes: list[int] = []
    real = ablation.forward

    def counted(lm, rows, **kw):
        if kw.get("gates") is not None:  # the intervention passes (not the inputs' own)
            passes.append(len(rows))
        return real(lm, rows, **kw)

    monkeypatch.setattr(ablation, "forward", counted)
    monkeypatch.setattr(ablation, "PASS_BUDGET", 1)
    tight = _results(gpt2, ablation="mean", batch_size=4)
    assert passes and set(passes) == {1}, "one row per pass when nothing more fits"
    for a, b in zip(roomy, tight, strict=True):
        assert a.ablation is not None and b.ablation is not None
        np.testing.assert_allclose(a.ablation.curve, b.ablation.curve, rtol=1e-9)
        np.testing.assert_allclose(a.ablation.random_values, b.ablation.random_values, rtol=1e-9)
        np.testing.assert_allclose(a.ablation.layers, b.ablation.layers, rtol=1e-9)
