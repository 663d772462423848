"""The saliency engine, each method checked against an independent computation (float64)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from synthetic import assert_stats_match_dense

from reportgen.data.metrics import parse_metric
from reportgen.engine import attention as models
from reportgen.engine import compute, compute_batch
from reportgen.engine.encoding import encode
from reportgen.engine.loading import check_attention, load_model
from reportgen.engine.memory import keep_freed_memory
from reportgen.errors import ModelError, SaliencyError, SettingsError
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

REFERENCE = {
    "id": "ref",
    "segments": [
        {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
        {"name": "LAN", "text": "<CHI> my favorite animal is the"},
    ],
    "target": "horse",
}
CAUSAL_INPUTS = [
    REFERENCE,
    {"text": "<MOT> saw a dog"},  # no target: the prediction is used
    {"text": "my cat ate an apple", "target": "red ball"},  # two-token target, teacher-forced
]
MLM_INPUTS = [
    {"text": "[MASK] painted a picture of a horse", "target": "<CHI>"},
    {"text": "my favorite animal is the [MASK]"},
    {"text": "my [MASK] ate an [MASK]", "target": "cat apple"},
]
CLS_INPUTS = [{"text": "<CHI> saw a dog", "label": "pos"}, {"text": "my cat ate an apple"}]
ENCODER_INPUTS = [
    REFERENCE,
    {"segments": [{"name": "a", "text": "a red ball"}, {"name": "b", "text": "a big toy"}]},
]
INPUTS = {
    "gpt2": CAUSAL_INPUTS,
    "llama": CAUSAL_INPUTS,
    "bert-mlm": MLM_INPUTS,
    "bert-cls": CLS_INPUTS,
    "bert": ENCODER_INPUTS,
}
ALL = list(INPUTS)
# Llama's eager attention runs softmax in float32 even in a float64 model, which leaves finite
# differences at ~1e-2 relative precision; it is checked by the exact identities instead.
FLOAT64_EXACT = [name for name in ALL if name != "llama"]
DENSE = "dense"
"""The store of every test that compares S itself: `result.dense` holds every cell."""


def _matches_dense(result, rtol=1e-6):
    """The result's stats (what a run stores by default) are the reductions of its dense S."""
    assert result.dense is not None
    assert_stats_match_dense(
        result.stats, result.dense, result.spans, result.prediction_position, rtol
    )


def _encoded(lm, items):
    return [encode(ex, lm, None, False) for ex in examples_from_items(items)]


def _loss_with(lm, row, gates=None, record=False):
    """Objective of one row through reportgen's forward (targets fixed by the first call)."""
    from reportgen.engine.objectives import forward as _forward

    return _forward(lm, [row], gates=gates, record=record)


def _fixed(lm, row):
    """The row with its target fixed to what the unperturbed model predicts."""
    base = _loss_with(lm, row)
    return dataclasses.replace(row, target_ids=base.targets[0])


@pytest.mark.parametrize("name", ALL)
def test_head_gate_gradient_equals_summed_attention_times_gradient(loaded, name):
    lm = loaded[name]
    for row in _encoded(lm, INPUTS[name]):
        gates = torch.ones(1, lm.num_layers, lm.num_heads, dtype=torch.float64, requires_grad=True)
        run = _loss_with(lm, row, gates=gates, record=True)
        gate_grad, *attn_grads = torch.autograd.grad(run.losses.sum(), [gates, *run.weights])
        summed = torch.stack(
            [(a * g).sum(dim=(-1, -2)).sum(0) for a, g in zip(run.weights, attn_grads)]
        )
        torch.testing.assert_close(summed, gate_grad[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", FLOAT64_EXACT)
def test_head_gate_gradient_matches_central_finite_differences(loaded, name):
    lm = loaded[name]
    row = _fixed(lm, _encoded(lm, INPUTS[name])[0])
    gates = torch.ones(1, lm.num_layers, lm.num_heads, dtype=torch.float64, requires_grad=True)
    analytic = torch.autograd.grad(_loss_with(lm, row, gates=gates).losses.sum(), gates)[0][0]
    eps = 1e-6
    for layer, head in [(0, 0), (lm.num_layers - 1, lm.num_heads - 1), (1, 2)]:
        losses = []
        for sign in (1, -1):
            g = torch.ones(1, lm.num_layers, lm.num_heads, dtype=torch.float64)
            g[0, layer, head] += sign * eps
            with torch.no_grad():
                losses.append(_loss_with(lm, row, gates=g).losses.item())
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert numeric == pytest.approx(analytic[layer, head].item(), rel=1e-4, abs=1e-9)


def _perturbed_loss(lm, row, where, eps, seq=0):
    """Loss with attention entry A[layer, head, i, j] of sequence `seq` (the batch row; a
    bi-encoder's input is two) raised by eps, done outside reportgen's gate: the wrapped eager
    output gains eps * V[j] at query i of that head."""
    layer, head, i, j = where
    calls = {"n": 0}
    real_eager_of = models.eager_of

    def eager_of(module):
        eager = real_eager_of(module)

        def perturbed(module, query, key, value, mask, **kwargs):
            out, weights = eager(module, query, key, value, mask, **kwargs)
            if calls["n"] == layer:
                kv_head = head // (query.shape[1] // value.shape[1])
                out = out.clone()
                out[seq, i, head, :] += eps * value[seq, kv_head, j, :]
            calls["n"] += 1
            return out, weights

        return perturbed

    models.eager_of = eager_of
    try:
        # Through the model's own eager attention: independent of reportgen's fused attention.
        with torch.no_grad(), models.own_eager():
            return _loss_with(lm, row).losses.item()
    finally:
        models.eager_of = real_eager_of


@pytest.mark.parametrize("name", FLOAT64_EXACT)
def test_attn_grad_matches_finite_differences_on_attention_entries(loaded, name):
    lm = loaded[name]
    row = _fixed(lm, _encoded(lm, INPUTS[name])[0])
    [result] = compute_batch(lm, [row], Settings(dtype="float64", store=DENSE), ablate=False)
    _matches_dense(result)
    run = _loss_with(lm, row, record=True)
    for seq, start, end in run.layout[0]:  # each sequence the model reads (a bi-encoder's two)
        t = end - start
        for where in [(0, 0, t - 1, 0), (lm.num_layers - 1, 1, t - 1, t - 2), (1, 3, t - 2, 1)]:
            eps = 1e-6
            plus = _perturbed_loss(lm, row, where, eps, seq)
            minus = _perturbed_loss(lm, row, where, -eps, seq)
            grad = (plus - minus) / (2 * eps)
            layer, head, i, j = where
            expected = abs(run.weights[layer][seq, head, i, j].item() * grad)
            cell = (layer, head, start + i, start + j)
            assert result.dense[cell] == pytest.approx(expected, rel=1e-4, abs=1e-8)
    if len(run.layout[0]) == 2:  # no attention between a bi-encoder's two texts
        (_, a, b), (_, c, d) = run.layout[0]
        assert not result.dense[:, :, a:b, c:d].any() and not result.dense[:, :, c:d, a:b].any()


def test_attattr_with_one_step_is_signed_attention_times_gradient(loaded):
    lm = loaded["gpt2"]
    rows = _encoded(lm, CAUSAL_INPUTS)
    settings = Settings(method="attattr", steps=1, store=DENSE)
    results = compute_batch(lm, rows, settings, ablate=False)
    for row, result in zip(rows, results):
        run = _loss_with(lm, row, record=True)
        grads = torch.autograd.grad(run.losses.sum(), run.weights)
        signed = torch.stack([(a * g)[0] for a, g in zip(run.weights, grads)]).detach().numpy()
        np.testing.assert_allclose(result.dense, signed, rtol=1e-5, atol=1e-7)
        assert (result.dense < 0).any(), "attattr keeps its sign"
        assert (result.stats.top_values < 0).any(), "and so do its stored top cells"
        _matches_dense(result)


def test_attattr_is_complete_per_layer(loaded):
    """Integrated gradients: sum over layer l of S_l -> L(A) - L(0 * A_l) as m grows."""
    lm = loaded["gpt2"]
    row = _fixed(lm, _encoded(lm, [REFERENCE])[0])
    with torch.no_grad():
        full = _loss_with(lm, row).losses.item()
    errors = {}
    for steps in (2, 32):
        settings = Settings(method="attattr", steps=steps, store=DENSE)
        [result] = compute_batch(lm, [row], settings, ablate=False)
        for layer in range(lm.num_layers):
            gates = torch.ones(1, lm.num_layers, lm.num_heads, dtype=torch.float64)
            gates[0, layer] = 0
            with torch.no_grad():
                zeroed = _loss_with(lm, row, gates=gates).losses.item()
            errors[steps, layer] = abs(result.dense[layer].sum() - (full - zeroed))
            scale = abs(full - zeroed) + 1e-6
            if steps == 32:
                assert errors[steps, layer] < 0.02 * scale + 1e-6
    assert sum(errors[32, l] for l in range(lm.num_layers)) < sum(
        errors[2, l] for l in range(lm.num_layers)
    )


def test_attattr_batches_steps_and_layers_with_any_budget(loaded):
    lm = loaded["llama"]
    rows = _encoded(lm, CAUSAL_INPUTS)
    settings = Settings(method="attattr", steps=4, store=DENSE)
    one = compute_batch(lm, rows, settings.override(batch_size=1), ablate=False)
    big = compute_batch(lm, rows, settings.override(batch_size=64), ablate=False)
    for a, b in zip(one, big):
        np.testing.assert_allclose(a.dense, b.dense, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.stats.total, b.stats.total, rtol=1e-9)
        np.testing.assert_allclose(a.stats.flow, b.stats.flow, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_padded_batch_equals_one_at_a_time(tiny_models, loaded, name, dtype):
    lm = loaded[name] if dtype == "float64" else load_model(tiny_models[name], "cpu", dtype)
    examples = examples_from_items(INPUTS[name])
    together = list(compute(examples, lm, Settings(batch_size=8, dtype=dtype, store=DENSE)))
    for example, batched in zip(examples, together):
        [alone] = compute([example], lm, Settings(batch_size=1, dtype=dtype, store=DENSE))
        assert batched.tokens == alone.tokens
        assert batched.dense.shape[-1] == len(alone.tokens)
        scale = np.abs(alone.dense).max()
        np.testing.assert_allclose(batched.dense, alone.dense, rtol=0, atol=1e-5 * scale)
        total = alone.stats.total
        np.testing.assert_allclose(batched.stats.total, total, rtol=1e-5, atol=1e-6 * total.max())
        _matches_dense(batched, 1e-6 if dtype == "float64" else 1e-5)
        assert batched.value == pytest.approx(alone.value, rel=1e-5)
        assert batched.target == alone.target


def test_pad_columns_carry_no_attention(loaded):
    """Real queries put zero weight on pad keys in a right-padded batch."""
    lm = loaded["bert-mlm"]
    from reportgen.engine.objectives import forward as _forward

    rows = _encoded(lm, MLM_INPUTS)
    run = _forward(lm, rows, record=True)
    width = max(len(row.ids) for row in rows)
    padded = [b for b, row in enumerate(rows) if len(row.ids) < width]
    assert padded, "the inputs must have different lengths"
    for b in padded:
        n = len(rows[b].ids)
        for weights in run.weights:
            assert weights[b, :, :n, n:].abs().max().item() < 1e-12


@pytest.mark.parametrize("name", ALL)
def test_raw_attention_rows_sum_to_one(loaded, name):
    lm = loaded[name]
    settings = Settings(method="attention", store=DENSE)
    for result in compute(examples_from_items(INPUTS[name]), lm, settings):
        t = len(result.tokens)
        # Every token's row sums to 1 (a bi-encoder's two texts each in their own block).
        np.testing.assert_allclose(result.dense.sum(-1), 1.0, rtol=1e-6)  # stored as float32
        np.testing.assert_allclose(result.stats.total, t, rtol=1e-6)  # T rows of mass 1
        _matches_dense(result)


@pytest.mark.parametrize("name", ["gpt2", "bert-mlm"])
def test_head_scores_are_shares_for_every_metric(loaded, name):
    """Every metric's grid comes from the stats: checked against sums of the dense S by hand.
    (The errors of a metric without saliency: test_metrics.py.)"""
    lm = loaded[name]
    items = (
        [REFERENCE]
        if name == "gpt2"
        else [
            {
                "segments": [
                    {"name": "ENV", "text": "a red ball"},
                    {"name": "LAN", "text": "my [MASK]"},
                ]
            }
        ]
    )
    settings = Settings(metric="flow:ENV->LAN", store=DENSE)
    [result] = compute(examples_from_items(items), lm, settings)
    _matches_dense(result)
    mag = np.abs(result.dense.astype(np.float64))
    env, lan = result.spans
    p = result.prediction_position
    by_hand = {
        "total": mag.sum((2, 3)),
        "prediction": mag[:, :, p, :].sum(-1),
        # queries in LAN, keys in ENV
        "flow:ENV->LAN": mag[:, :, lan.start : lan.end, env.start : env.end].sum((2, 3)),
    }
    for metric, mass in by_hand.items():
        grid = result.head_scores(metric)
        assert grid.shape == (lm.num_layers, lm.num_heads) and grid.dtype == np.float32
        assert grid.sum() == pytest.approx(1.0, rel=1e-5)
        assert (grid >= 0).all()
        np.testing.assert_allclose(grid, mass / mass.sum(), rtol=1e-5)


def test_unknown_metric_and_method_list_the_choices(loaded):
    with pytest.raises(SettingsError, match="Available: total, prediction, flow"):
        parse_metric("flux")
    with pytest.raises(SettingsError, match="Available: attn-grad, attention, attattr"):
        list(compute(examples_from_items(["a"]), loaded["gpt2"], Settings(method="lrp")))


def test_flow_metric_needs_both_segments(loaded):
    with pytest.raises(SaliencyError, match="input '1' has no segment 'ENV'"):
        list(
            compute(examples_from_items(["a b"]), loaded["gpt2"], Settings(metric="flow:ENV->LAN"))
        )


def test_causal_objective_matches_a_plain_transformers_forward(tiny_models, loaded):
    """p(target) from reportgen equals the probability from an SDPA forward of the same model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"], dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    results = list(compute(examples_from_items(CAUSAL_INPUTS), loaded["gpt2"], Settings()))
    for item, result in zip(CAUSAL_INPUTS, results):
        text = " ".join(s["text"] for s in item["segments"]) if "segments" in item else item["text"]
        ids = tok(text)["input_ids"]
        target = tok(result.target, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([ids + target])
        with torch.no_grad():
            logp = torch.log_softmax(plain(seq).logits[0], -1)
        expected = sum(logp[len(ids) - 1 + k, t].item() for k, t in enumerate(target))
        assert result.loss == pytest.approx(-expected, rel=1e-9)
        assert result.value == pytest.approx(np.exp(expected), rel=1e-9)
    assert results[0].target_given and not results[1].target_given
    assert results[1].target == results[1].predicted
    assert results[2].tokens[-1] == "red", "all but the last target token are teacher-forced"


def test_masked_classifier_and_encoder_objectives(tiny_models, loaded):
    from transformers import AutoModel, AutoModelForSequenceClassification

    mlm = list(compute(examples_from_items(MLM_INPUTS), loaded["bert-mlm"], Settings()))
    assert mlm[0].target == "<CHI>" and mlm[0].prediction_position == 1
    assert mlm[1].target == mlm[1].predicted and not mlm[1].target_given
    assert mlm[2].target == "cat apple"

    [cls_given, cls_pred] = compute(examples_from_items(CLS_INPUTS), loaded["bert-cls"], Settings())
    plain = AutoModelForSequenceClassification.from_pretrained(
        tiny_models["bert-cls"], dtype=torch.float64
    ).eval()
    enc = loaded["bert-cls"].tokenizer("<CHI> saw a dog", return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(plain(**enc).logits[0], -1)
    assert cls_given.target == "pos" and cls_given.value == pytest.approx(probs[2].item(), rel=1e-9)
    assert cls_pred.target in {"neg", "neu", "pos"} and cls_given.prediction_position == 0

    plain_enc = AutoModel.from_pretrained(tiny_models["bert"], dtype=torch.float64).eval()
    tok = loaded["bert"].tokenizer

    def embedding(text):
        """Mean of the token embeddings, [CLS] and [SEP] included: a sentence embedding."""
        with torch.no_grad():
            return plain_enc(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0)

    # Bi-encoder (the default): each segment encoded on its own, as the model is used.
    [ref, pair] = compute(examples_from_items(ENCODER_INPUTS), loaded["bert"], Settings())
    assert ref.target is None and ref.prediction_position is None
    cos = torch.nn.functional.cosine_similarity(embedding("a red ball"), embedding("a big toy"), 0)
    assert pair.value == pytest.approx(cos.item(), rel=1e-9)
    assert pair.loss == pytest.approx(-cos.item(), rel=1e-9)
    assert pair.tokens == (
        "[CLS]",
        "a",
        "red",
        "ball",
        "[SEP]",
        "[CLS]",
        "a",
        "big",
        "toy",
        "[SEP]",
    )
    assert [(s.name, s.start, s.end) for s in pair.spans] == [("a", 1, 4), ("b", 6, 9)]

    # Cross-encoder (--pairing joint): one sequence, the segments' tokens mean-pooled.
    joint = Settings(pairing="joint")
    [_, pair] = compute(examples_from_items(ENCODER_INPUTS), loaded["bert"], joint)
    ids = tok("a red ball a big toy", return_tensors="pt")
    with torch.no_grad():
        hidden = plain_enc(**ids).last_hidden_state[0]
    a, b = pair.spans
    cos = torch.nn.functional.cosine_similarity(
        hidden[a.start : a.end].mean(0), hidden[b.start : b.end].mean(0), dim=0
    )
    assert pair.value == pytest.approx(cos.item(), rel=1e-9)
    assert pair.loss == pytest.approx(-cos.item(), rel=1e-9)


ZERO_PROB = Settings(ablate_k=2, ablate_draws=3, ablation="zero", effect="prob")


def test_ablation_matches_zeroing_heads_by_hand(loaded):
    """value_top equals p(target) with those heads' slices of c_proj's input zeroed (GPT-2)."""
    lm = loaded["gpt2"]
    [result] = compute(examples_from_items([REFERENCE]), lm, ZERO_PROB)
    ablation = result.ablation
    assert ablation is not None and len(ablation.heads) == 2 and ablation.draws == 3
    grid = result.head_scores("total")
    top = np.argsort(-grid.reshape(-1), kind="stable")[:2]
    assert [l * lm.num_heads + h for l, h in ablation.heads] == list(top)
    width = lm.model.config.n_embd // lm.num_heads
    handles = []
    for layer, head in ablation.heads:

        def zero(module, args, head=head):
            x = args[0].clone()
            x[..., head * width : (head + 1) * width] = 0
            return (x,)

        attn = lm.model.transformer.h[layer].attn
        handles.append(attn.c_proj.register_forward_pre_hook(zero))
    try:
        row = _fixed(lm, _encoded(lm, [REFERENCE])[0])
        with torch.no_grad():
            value = _loss_with(lm, row).values.item()
    finally:
        for handle in handles:
            handle.remove()
    assert ablation.value_top == pytest.approx(value, rel=1e-9)
    assert ablation.value == pytest.approx(result.value)
    again = list(compute(examples_from_items([REFERENCE]), lm, ZERO_PROB))
    assert again[0].ablation == ablation, "seeded random baseline"


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope"), "cpu")
    with pytest.raises(ModelError, match="nor in the Hugging Face cache"):
        load_model("someone/no-such-model-anywhere", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"), "cpu")


def test_folder_without_weights_is_a_clear_error(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "noweights"
    shutil.copytree(tiny_models["gpt2"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="has no weights"):
        load_model(str(folder), "cpu")


def test_sdpa_only_attention_is_a_clear_error(loaded):
    lm = dataclasses.replace(loaded["gpt2"])
    lm.model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(ModelError, match="returned no attention weights"):
            check_attention(lm)
    finally:
        lm.model.set_attn_implementation(models.ATTENTION_NAME)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_attention_gives_the_models_own_scores(tiny_models, loaded, name, dtype, monkeypatch):
    lm = loaded[name] if dtype == "float64" else load_model(tiny_models[name], "cpu", dtype)
    # Llama's own eager softmax runs in float32, which a float64 fused softmax does not match.
    assert lm.fused_attention == (name != "llama" or dtype == "float32")
    calls = {"n": 0}
    real = models.fused_attention

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "fused_attention", counted)
    rows = _encoded(lm, INPUTS[name])
    for method in ("attn-grad", "attention"):
        settings = Settings(method=method, dtype=dtype, engine="eager", store=DENSE)
        fused = compute_batch(lm, rows, settings, ablate=False)
        assert (calls["n"] > 0) == lm.fused_attention
        calls["n"] = 0
        with models.own_eager():
            own = compute_batch(lm, rows, settings, ablate=False)
        assert calls["n"] == 0
        for a, b in zip(fused, own, strict=True):
            scale = np.abs(b.dense).max()
            rtol = 1e-5 if dtype == "float32" else 1e-10
            np.testing.assert_allclose(a.dense, b.dense, rtol=0, atol=rtol * scale)
            np.testing.assert_allclose(a.stats.total, b.stats.total, rtol=rtol)
            assert a.value == pytest.approx(b.value, rel=rtol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_activations_give_the_models_own_outputs_and_scores(tiny_models, dtype):
    """GPT-2's gelu_new runs as torch's tanh GELU kernel (the same function): the logits equal
    the model's own (loaded plain, its Python GELU), and so do the scores with the model's own
    activation put back; a model with another activation keeps it."""
    from transformers import GPT2LMHeadModel
    from transformers.activations import GELUTanh, NewGELUActivation

    lm = load_model(tiny_models["gpt2"], "cpu", dtype)
    blocks = lm.model.transformer.h
    assert lm.fused_activations == len(blocks)
    assert all(type(block.mlp.act) is GELUTanh for block in blocks)
    plain = GPT2LMHeadModel.from_pretrained(
        tiny_models["gpt2"], attn_implementation="eager", dtype=lm.dtype
    ).eval()
    assert type(plain.transformer.h[0].mlp.act) is NewGELUActivation
    ids = torch.tensor([[5, 9, 11, 7, 3, 12, 6, 8]])
    with torch.no_grad():
        ours, own = lm.model(input_ids=ids).logits, plain(input_ids=ids).logits
    rtol = 1e-5 if dtype == "float32" else 1e-12
    torch.testing.assert_close(ours, own, rtol=rtol, atol=rtol * float(own.abs().max()))
    rows = _encoded(lm, INPUTS["gpt2"])
    settings = Settings(method="attn-grad", dtype=dtype, store=DENSE)
    fused = compute_batch(lm, rows, settings, ablate=False)
    for block in blocks:
        block.mlp.act = NewGELUActivation()
    for a, b in zip(fused, compute_batch(lm, rows, settings, ablate=False), strict=True):
        np.testing.assert_allclose(a.dense, b.dense, rtol=0, atol=rtol * np.abs(b.dense).max())
        np.testing.assert_allclose(a.stats.total, b.stats.total, rtol=rtol)
    assert load_model(tiny_models["bert"], "cpu", dtype).fused_activations == 0


def test_fused_attention_is_refused_where_the_models_own_attention_differs(
    tiny_models, monkeypatch
):
    import transformers.models.gpt2.modeling_gpt2 as gpt2

    real = gpt2.eager_attention_forward
    calls = {"n": 0}

    def rescaled(module, query, key, value, mask, **kwargs):
        """An eager attention that does not compute the standard softmax(q·kᵀ·scaling)."""
        calls["n"] += 1
        return real(module, query, key, value, mask, **{**kwargs, "scaling": 0.7})

    monkeypatch.setattr(gpt2, "eager_attention_forward", rescaled)
    lm = load_model(tiny_models["gpt2"], "cpu")
    assert not lm.fused_attention
    assert not any(getattr(m, models.FUSED_FLAG, False) for m in lm.model.modules())
    calls["n"] = 0
    compute_batch(lm, _encoded(lm, CAUSAL_INPUTS), Settings(engine="eager"), ablate=False)
    assert calls["n"] == lm.num_layers, "every layer ran the model's own attention"


def test_fused_attention_leaves_calls_with_other_arguments_to_the_model():
    q, k, v = (torch.randn(1, 4, 3, 2) for _ in range(3))
    assert models.fused_attention(q, k, v, None, scaling=0.5, softcap=30.0) is None
    assert models.fused_attention(q, k, v, None, scaling=0.5, dropout=0.1) is None
    out, weights = models.fused_attention(q, k, v, None, scaling=0.5, position_ids=torch.ones(1))
    expected = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, (expected @ v).transpose(1, 2))
    grouped, _ = models.fused_attention(q, k[:, :2], v[:, :2], None, scaling=0.5)
    torch.testing.assert_close(
        grouped[:, :, 1], (torch.softmax(q[:, 1] @ k[:, 0].transpose(-1, -2) * 0.5, -1) @ v[:, 0])
    )


def test_nan_model_is_a_clear_error(loaded):
    lm = loaded["gpt2"]
    weight = lm.model.lm_head.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    try:
        with pytest.raises(ModelError, match="NaN"):
            check_attention(lm)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_unencodable_target_and_over_long_input_are_clear_errors(loaded):
    lm = loaded["gpt2"]
    with pytest.raises(SaliencyError, match=r"target 'zebra' is not in the model's vocabulary"):
        list(compute(examples_from_items([{"text": "a b", "target": "zebra"}]), lm, Settings()))
    long = " ".join(["a"] * 50)
    with pytest.raises(SaliencyError, match=r"input '1': 50 tokens, more than the limit of 40"):
        list(compute(examples_from_items([long]), lm, Settings()))
    [cut] = compute(examples_from_items([long + " the"]), lm, Settings(truncate=True))
    assert len(cut.tokens) == 40 and cut.tokens[-1] == "the"


def test_task_specific_input_errors(loaded):
    with pytest.raises(SaliencyError, match="no mask token"):
        list(compute(examples_from_items(["a b"]), loaded["bert-mlm"], Settings()))
    with pytest.raises(SaliencyError, match="label 'maybe' is not one of the model's labels"):
        list(
            compute(
                examples_from_items([{"text": "a", "label": "maybe"}]),
                loaded["bert-cls"],
                Settings(),
            )
        )
    with pytest.raises(SaliencyError, match="compares the embeddings of two segments, each"):
        list(compute(examples_from_items(["a b"]), loaded["bert"], Settings()))
    with pytest.raises(SaliencyError, match="compares the embeddings of the first two segments"):
        list(compute(examples_from_items(["a b"]), loaded["bert"], Settings(pairing="joint")))
    with pytest.raises(SaliencyError, match="metric 'prediction' needs a prediction position"):
        list(
            compute(
                examples_from_items(ENCODER_INPUTS), loaded["bert"], Settings(metric="prediction")
            )
        )


def test_windows_bound_the_inputs_and_bytes_held(loaded):
    from reportgen.engine.runner import WINDOW_BATCHES, WINDOW_BYTES
    from reportgen.engine.runner import windows as _windows

    lm = loaded["gpt2"]
    lengths = [5] * (WINDOW_BATCHES * 2 * 3 + 1)
    spans = list(_windows(lengths, lm, 2))
    assert spans[0] == (0, WINDOW_BATCHES * 2) and spans[-1] == (len(lengths) - 1, len(lengths))
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    big = int((WINDOW_BYTES / (4 * lm.num_layers * lm.num_heads)) ** 0.5) + 1
    assert list(_windows([big, big, 3], lm, 8, "dense")) == [(0, 1), (1, 2), (2, 3)]
    assert list(_windows([big, big, 3], lm, 8, "dense-float16")) == [(0, 1), (1, 3)]
    # --store top-k holds k cells and the reductions a head, not T x T
    assert list(_windows([big, big, 3], lm, 8, "top-k")) == [(0, 3)]
    assert list(_windows([], lm, 8)) == []


def test_keep_freed_memory_applies_with_glibc():
    import platform
    import sys

    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() == on_glibc


def test_a_tokenizer_that_appends_an_end_token_predicts_after_the_text(tiny_models, tmp_path):
    """The end-of-sequence token a tokenizer appends is not part of the prefix a causal LM
    continues: the prediction position is the text's last token."""
    import shutil

    from conftest import WORDS
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "eos"
    shutil.copytree(tiny_models["gpt2"], folder)
    backend = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = WORDS.index("<|endoftext|>")
    backend.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|endoftext|>"
    ).save_pretrained(folder)
    lm = load_model(folder, "cpu", "float64")
    assert lm.tokenizer("a dog")["input_ids"][-1] == eos
    [result] = compute(
        examples_from_items([{"text": "<MOT> saw a", "target": "dog"}]), lm, Settings()
    )
    assert result.tokens == ("<MOT>", "saw", "a") and result.prediction_position == 2
    [plain] = compute(
        examples_from_items([{"text": "<MOT> saw a", "target": "dog"}]),
        load_model(tiny_models["gpt2"], "cpu", "float64"),
        Settings(),
    )
    assert result.value == pytest.approx(plain.value, rel=1e-12)


def test_a_segment_truncated_away_is_named_before_any_pass(loaded):
    items = [REFERENCE]
    settings = Settings(metric="flow:ENV->LAN", max_tokens=5, truncate=True)
    with pytest.raises(SaliencyError, match="keeps no token of segment 'ENV' after truncation"):
        list(compute(examples_from_items(items), loaded["gpt2"], settings))


def test_nan_saliency_is_reported_as_nan(loaded, monkeypatch):
    from reportgen.engine import methods

    real = methods.REGISTRY["attn-grad"]

    def poisoned(lm, rows, settings):
        base, scores = real(lm, rows, settings)
        scores[0][0, 0, 0, 0] = float("nan")
        return base, scores

    monkeypatch.setitem(methods.REGISTRY, "attn-grad", poisoned)
    with pytest.raises(SaliencyError, match="attn-grad saliency is NaN or infinite .* float64"):
        list(compute(examples_from_items([REFERENCE]), loaded["gpt2"], Settings(engine="eager")))


def test_settings_are_checked_against_the_model_before_any_pass(loaded):
    lm = loaded["gpt2"]
    heads = lm.num_layers * lm.num_heads
    with pytest.raises(SettingsError, match=f"--ablate-k must be below the model's {heads} heads"):
        list(compute(examples_from_items([REFERENCE]), lm, Settings(ablate_k=heads)))
    with pytest.raises(SettingsError, match="--top-k must be at least 1, got 0"):
        Settings(top_k=0).validate()
    with pytest.raises(SettingsError, match="--ablate-draws must be at least 1"):
        Settings(ablate_draws=0).validate()


def test_memory_budget_sizes_batches_and_refuses_what_cannot_fit(loaded, monkeypatch):
    from reportgen.engine import runner

    lm = loaded["gpt2"]
    examples = examples_from_items(CAUSAL_INPUTS)
    longest = max(len(encode(ex, lm, None, False).ids) for ex in examples)
    plan = runner.MemoryPlan.of(lm, Settings(store=DENSE))
    room = 2**20 + 2 * plan.per_row(longest) + 1  # two rows and the smallest tile budget
    sizes = []
    real = runner.compute_batch

    def counted(lm, batch, settings, **kwargs):
        sizes.append(len(batch))
        return real(lm, batch, settings, **kwargs)

    monkeypatch.setattr(runner, "compute_batch", counted)
    bounded = list(compute(examples, lm, Settings(max_memory=f"{room}B", store=DENSE)))
    assert sizes and max(sizes) == 2 and sum(sizes) == len(examples)
    sizes.clear()
    free = list(compute(examples, lm, Settings(store=DENSE)))
    assert sizes == [len(examples)]
    for a, b in zip(bounded, free):
        np.testing.assert_allclose(a.dense, b.dense, rtol=1e-9, atol=1e-12)
    with pytest.raises(
        SaliencyError,
        match=r"input 'ref' needs about 1.\d+ MiB for its 13 tokens, more than the 1000 bytes",
    ):
        list(compute(examples, lm, Settings(max_memory="1KB")))
    with pytest.raises(SettingsError, match="is not a size"):
        Settings(max_memory="lots").validate()
    with pytest.raises(SettingsError, match="gives no size for cpu"):
        list(compute(examples, lm, Settings(max_memory="cuda:0=1GB")))


def test_a_model_spread_over_cpu_and_disk_gives_the_same_saliency(tiny_models, loaded):
    """--device-map auto: accelerate places what fits within --max-memory on the CPU and
    offloads the rest to disk; gradients flow through the offloaded layers alike."""
    spread = load_model(
        tiny_models["gpt2"], "cpu", "float64", device_map="auto", max_memory="cpu=60KB"
    )
    placed = set(spread.model.hf_device_map.values())
    assert "disk" in placed, placed
    examples = examples_from_items(CAUSAL_INPUTS)
    for method in ("attn-grad", "attattr"):
        settings = Settings(method=method, steps=2, dtype="float64", store=DENSE)
        for a, b in zip(
            compute(examples, spread, settings), compute(examples, loaded["gpt2"], settings)
        ):
            np.testing.assert_allclose(a.dense, b.dense, rtol=1e-9, atol=1e-12)
            assert a.value == pytest.approx(b.value, rel=1e-12)
    with pytest.raises(ModelError, match="needs --max-memory per device"):
        load_model(tiny_models["gpt2"], "cpu", device_map="auto", max_memory="1GB")
