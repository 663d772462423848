"""The tiled engine equals the dense reference: every reduction, from the fast kernel's forward
and backward with the attention recomputed a block of query rows at a time (float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_saliency import INPUTS

from reportgen.engine import methods, tiles
from reportgen.engine.encoding import encode
from reportgen.inputs import examples_from_items
from reportgen.settings import Settings

pytestmark = pytest.mark.e2e

ALL = list(INPUTS)
BUDGET = 1  # one query row per tile: every tile boundary is exercised


def _rows(lm, name):
    return [encode(ex, lm, None, False) for ex in examples_from_items(INPUTS[name])]


def _expected(per_layer, reductions, signed, k):
    """The reductions computed in numpy from the dense per-layer scores [rows, H, W, W]."""
    out = []
    for b, plan in enumerate(reductions.plans):
        n = plan.length
        dense = np.stack([np.asarray(part[b, :, :n, :n], dtype=np.float64) for part in per_layer])
        s = dense if signed else np.abs(dense)
        mag = np.abs(s)
        seg = plan.segments.numpy()
        groups = reductions.flow.shape[-1]
        onehot = np.eye(groups)[seg]  # [n, groups]
        flow = np.einsum("is,lhij,jt->lhst", onehot, mag, onehot)
        pred = (
            mag[:, :, plan.prediction].sum(-1)
            if plan.prediction is not None
            else np.zeros(mag.shape[:2])
        )
        flat = s.reshape(*s.shape[:2], -1)
        order = np.lexsort(
            (
                np.arange(flat.shape[-1])[None, None]
                .repeat(flat.shape[0], 0)
                .repeat(flat.shape[1], 1),
                -np.abs(flat),
            ),
            axis=-1,
        )[..., :k]
        out.append((mag.sum((-1, -2)), pred, flow, np.take_along_axis(flat, order, -1), order))
    return out


def _compare(lm, reductions, per_layer, signed, k, rtol):
    for b, (total, pred, flow, top_values, top_cells) in enumerate(
        _expected(per_layer, reductions, signed, k)
    ):
        scale = total.max()
        np.testing.assert_allclose(
            reductions.total[b].numpy(), total, rtol=rtol, atol=1e-12 * scale
        )
        np.testing.assert_allclose(
            reductions.prediction[b].numpy(), pred, rtol=rtol, atol=1e-12 * scale
        )
        np.testing.assert_allclose(reductions.flow[b].numpy(), flow, rtol=rtol, atol=1e-12 * scale)
        got = reductions.top_values[b].numpy()
        nonzero = np.abs(top_values) > 0
        np.testing.assert_allclose(got[nonzero], top_values[nonzero], rtol=rtol, atol=1e-14)
        assert (reductions.top_cells[b].numpy()[nonzero] == top_cells[nonzero]).all()
        assert (reductions.top_cells[b].numpy()[~nonzero] == -1).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("method", ["attn-grad", "attention", "attattr"])
@pytest.mark.parametrize("how", ["recomputed", "kept", "one-layer"])
def test_tiles_equal_the_dense_computation(loaded, name, method, how, monkeypatch):
    """One query row per tile with the weights recomputed from the fast kernel's inputs; one
    tile per layer with every layer's weights kept from the forward (short inputs), reduced
    together; and (a pass without gradients) each layer's weights kept while the forward
    makes them, where one layer's fit but not all."""
    if how == "one-layer":
        monkeypatch.setattr(
            tiles, "keeps_weights", lambda lm, rows, budget, layers=None, times=2: layers == 1
        )
    budget = BUDGET if how == "recomputed" else 2**30
    lm = loaded[name]
    rows = _rows(lm, name)
    settings = Settings(method=method, steps=3, batch_size=2)
    base_dense, per_layer = methods.REGISTRY[method](lm, rows, settings)
    k = 7
    if method == "attn-grad":
        base, red = tiles.tiled_attn_grad(lm, rows, k, dense=True, budget=budget)
    elif method == "attention":
        base, red = tiles.tiled_attention(lm, rows, k, dense=True, budget=budget)
    else:
        base, red = tiles.tiled_attattr(lm, rows, k, True, steps=3, rows_per_pass=6, budget=budget)
    assert base.layout == base_dense.layout
    np.testing.assert_allclose(base.values.numpy(), base_dense.values.numpy(), rtol=1e-12)
    signed = method == "attattr"
    # Llama's eager softmax runs in float32 even in a float64 model: rounding at ~1e-8.
    rtol = 1e-6 if name == "llama" else 1e-9
    _compare(lm, red, per_layer, signed, k, rtol)
    for b, plan in enumerate(red.plans):
        n = plan.length
        dense = torch.stack([part[b, :, :n, :n] for part in per_layer]).double()
        expected = dense if signed else dense.abs()
        torch.testing.assert_close(
            red.dense[b, :, :, :n, :n], expected, rtol=rtol, atol=rtol * float(expected.abs().max())
        )


@pytest.fixture(params=["numpy", "torch"])
def route(request, monkeypatch):
    """`top_positions` by numpy's selection (CPU tensors) and by torch.topk (CUDA's)."""
    if request.param == "torch":
        monkeypatch.setattr(tiles, "by_numpy", lambda x: False)
    return request.param


@pytest.mark.parametrize("name", ["gpt2", "bert"])
@pytest.mark.parametrize("method", ["attn-grad", "attention"])
@pytest.mark.parametrize("budget", [BUDGET, 2**30], ids=["row-tiles", "whole-layers"])
@pytest.mark.parametrize(
    "blocks", [None, 3, "some-long"], ids=["default-blocks", "three-blocks", "some-long"]
)
def test_block_sums_equal_the_dense_computation(
    loaded, name, method, budget, blocks, monkeypatch, route
):
    """Every input treated as long (or all but the shortest): each long row's block sums,
    and every row's total, prediction and flow (a long row's read from its rows summed over
    pieces of blocks and segments), equal numpy's sums of the dense S (edges moved into the
    row); reduced one query row per tile, and whole layers at a time, with the default blocks
    and with three even ones (segment boundaries inside blocks)."""
    lm = loaded[name]
    rows = _rows(lm, name)
    shortest = min(len(row.ids) for row in rows)
    some = blocks == "some-long"  # the shortest input not long: a batch of both kinds
    monkeypatch.setattr(tiles, "is_long", lambda tokens: tokens > shortest if some else True)
    if isinstance(blocks, int):
        monkeypatch.setattr(  # even blocks, not snapped to segment boundaries
            tiles,
            "block_edges",
            lambda n, spans: np.unique(np.linspace(0, n, blocks + 1).round().astype(np.int64)),
        )
    settings = Settings(method=method, batch_size=2)
    _, per_layer = methods.REGISTRY[method](lm, rows, settings)
    k = 7
    if method == "attn-grad":
        _, red = tiles.tiled_attn_grad(lm, rows, k, dense=False, budget=budget)
    else:
        _, red = tiles.tiled_attention(lm, rows, k, dense=False, budget=budget)
    straddled = False
    for b, plan in enumerate(red.plans):
        if plan.edges is None:
            assert some and red.blocks[b] is None
            continue
        assert red.blocks[b] is not None
        n = plan.length
        dense = np.stack([np.asarray(part[b, :, :n, :n], dtype=np.float64) for part in per_layer])
        edges = plan.edges  # a bi-encoder's second text: edges clipped, blocks empty
        segments = plan.segments.numpy()
        straddled |= any(len(set(segments[a:e])) > 1 for a, e in itertools.pairwise(edges))
        want = np.zeros((*dense.shape[:2], len(edges) - 1, len(edges) - 1))
        for q in range(len(edges) - 1):
            for key in range(len(edges) - 1):
                cells = np.abs(dense[:, :, edges[q] : edges[q + 1], edges[key] : edges[key + 1]])
                want[:, :, q, key] = cells.sum((-1, -2))
        got = red.blocks[b].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want.max())
        np.testing.assert_allclose(got.sum((2, 3)), red.total[b].numpy(), rtol=1e-9)
    rtol = 1e-9
    _compare(lm, red, per_layer, False, k, rtol)
    assert straddled or blocks != 3  # three blocks: some hold two segments' tokens
    assert any(plan.edges is None for plan in red.plans) == some


@pytest.mark.parametrize("n, k", [(10, 3), (10, 10), (4000, 7), (4100, 64), (16384, 256)])
@pytest.mark.parametrize("levels", [3, 50, 3000, None], ids=["ties", "some", "few", "distinct"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_positions_are_the_k_largest_ties_to_the_lower_position(n, k, levels, dtype, route):
    """The exact top-k (with and without the block prefilter, and its fallbacks for ties
    between blocks and at the k-th value; in float64 and in float32, the engine's dtype) against
    a lexicographic sort by (value descending, position)."""
    generator = torch.Generator().manual_seed(n + k)
    x = torch.rand(3, 2, n, generator=generator, dtype=torch.float64)
    if levels is not None:
        x = (x * levels).floor()
    x = x.to(dtype)
    got = tiles.top_positions(x, k).numpy()
    flat = x.reshape(-1, n).numpy()
    position = np.arange(n)
    expected = [np.sort(np.lexsort((position, -row))[:k]) for row in flat]
    assert (got.reshape(-1, k) == np.stack(expected)).all()


def _hard_rows(dtype: torch.dtype) -> torch.Tensor:
    """Rows on which a bound from the blocks' maxima is easy to get wrong, [7, 16384]."""
    n = 16384
    generator = torch.Generator().manual_seed(11)
    uniform = torch.rand(6, n, generator=generator, dtype=torch.float64)
    rows = [
        torch.randn(n, generator=generator, dtype=torch.float64).abs(),  # half-normal
        2.0 ** (-60 * uniform[1]),  # 60 octaves: the k-th far below the largest
        torch.where(uniform[2] < 0.02, uniform[2], 1e-39),  # the rest below float32's normal
        torch.where(uniform[3] < 0.001, 1.0, 2.0**-40 * uniform[3]),  # fewer large than k
        uniform[4].float().double() * torch.where(uniform[5] < 0.5, 1 - 2.0**-26, 1.0),
        torch.where(torch.arange(n) % 7 == 0, 0.5, 0.25 * uniform[5]),  # ties across blocks
        torch.where(uniform[0] < 0.09, 2.0 ** (-60 * uniform[4]), 0.0),  # 60 octaves among 0s
    ]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_positions_bound_holds_on_hard_rows(dtype, route):
    """Half-normal entries, 60 octaves, denormals, fewer large entries than k, float64 entries that
    round up to a float32 bucket edge, ties spread over every block, and ~1,500 positive entries
    over 60 octaves among zeros (searched among the positive ones): the exact top-k, ties to the
    lower position, as a lexicographic sort gives it."""
    x = _hard_rows(dtype)
    for k in (64, 256, 1024):
        got = tiles.top_positions(x, k).numpy()
        position = np.arange(x.shape[-1])
        expected = [np.sort(np.lexsort((position, -row))[:k]) for row in x.numpy()]
        assert (got == np.stack(expected)).all(), k


def test_lower_bound_is_at_most_the_kth_largest_and_one_step_below():
    """`_lower_bound`'s v: at least k entries ≥ v, and at most one step (an eighth of the
    float32 exponent's mantissa range, so a factor 9/8) below the k-th largest: the candidates
    stay a few more than k. A k-th largest 2^32 times below the largest has none."""
    generator = torch.Generator().manual_seed(5)
    maxima = torch.rand(50, 2048, generator=generator).pow(8).numpy()
    for k in (1, 7, 256, 2000):
        bound, sure = tiles._lower_bound(maxima, k)
        kth = -np.sort(-maxima, axis=1)[:, k - 1]
        assert sure.all() if k <= 256 else not sure.all()  # rand⁸'s 2000th: ~2^-80 of the top
        assert ((maxima >= bound[:, None]).sum(1) >= k)[sure].all()
        assert (bound <= kth)[sure].all() and (bound >= kth * 8 / 9)[sure].all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_largest_are_the_kth_and_next_values_of_each_row(dtype, route):
    """The k-th and (k+1)-th largest entries, ties counted, in the input's dtype, against
    numpy's full sort."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 5, 300, generator=generator, dtype=torch.float64).mul(40).floor().to(dtype)
    ranked = -np.sort(-x.double().numpy(), axis=-1)
    for k in (1, 6, 7, 8, 150, 299):
        kth, after = tiles.largest(x, k)
        assert kth.dtype == after.dtype == dtype and kth.shape == after.shape == x.shape[:-1]
        np.testing.assert_array_equal(kth.double().numpy(), ranked[..., k - 1])
        np.testing.assert_array_equal(after.double().numpy(), ranked[..., k])
    one_row = tiles.largest(x[1, 1], 5)  # a single row: 0-d answers
    assert one_row[0].shape == () and float(one_row[0]) == ranked[1, 1, 4]


def test_top_positions_with_nan_keeps_it_for_the_callers_check(route):
    x = torch.arange(40.0).reshape(2, 20)
    x[1, 3] = float("nan")
    got = tiles.top_positions(x, 4)
    assert got[0].tolist() == [16, 17, 18, 19] and 3 in got[1].tolist()
    many = torch.rand(2, 16384, generator=torch.Generator().manual_seed(0))  # the prefilter
    many[1, 777] = float("nan")
    got = tiles.top_positions(many, 256)
    assert 777 in got[1].tolist()
    assert torch.equal(got[0], torch.sort(torch.topk(many[0], 256).indices).values)


@pytest.mark.parametrize("positive", [40, 256, 3000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_positions_without_zeros_keeps_every_positive_entry_as_the_exact_search(
    positive, dtype, route
):
    """Where zeros are dropped by the caller, a row with fewer than k positive entries (a
    causal LM's last layer) skips the full search: its positive entries are all returned, and
    rows with more are the exact top-k, ties to the lower position."""
    n, k = 16384, 256
    generator = torch.Generator().manual_seed(positive)
    x = torch.zeros(2, 3, n, dtype=dtype)
    for row in x.reshape(-1, n):
        where = torch.randperm(n, generator=generator)[:positive]
        row[where] = (
            torch.rand(positive, generator=generator, dtype=torch.float64).mul(7).floor().to(dtype)
        )
        row[where[:5]] = 9.0  # ties at the top too
    got = tiles.top_positions(x, k, zeros_matter=False).reshape(-1, k)
    exact = tiles.top_positions(x, k).reshape(-1, k)
    for row, mine, want in zip(x.reshape(-1, n), got, exact, strict=True):
        assert len(set(mine.tolist())) == k and (mine.diff() > 0).all()  # distinct, ascending
        if int((row > 0).sum()) < k:
            assert set(mine[row[mine] > 0].tolist()) == set(torch.nonzero(row).flatten().tolist())
        else:
            assert (mine == want).all()


def test_live_rows_bound_the_rows_with_a_gradient():
    grad = torch.zeros(2, 9, 3, 4)
    assert tiles.live_rows(grad) == (0, 0)
    grad[1, 6, 2, 3] = -1e-30
    grad[0, 2, 0, 0] = float("nan")  # NaN is not 0: its row is reduced (and caught there)
    assert tiles.live_rows(grad) == (2, 7)


@pytest.mark.parametrize("name", ["bert-mlm", "bert-cls", "gpt2"])
def test_rows_without_gradient_are_skipped_and_change_nothing(loaded, name, monkeypatch):
    """A masked LM's last layer has ∂L/∂O only at the mask, a padded causal batch none past a
    row's end: those query rows are never recomputed, and every reduction is as with all rows."""
    lm = loaded[name]
    rows = _rows(lm, name)
    asked: list[int] = []
    recompute = tiles.attention_rows

    def counted(captured, start, stop):
        asked.append(stop - start)
        return recompute(captured, start, stop)

    monkeypatch.setattr(tiles, "attention_rows", counted)
    _, skipped = tiles.tiled_attn_grad(lm, rows, 7, dense=True, budget=BUDGET)
    fewer = sum(asked)
    asked.clear()
    monkeypatch.setattr(tiles, "live_rows", lambda grad: (0, grad.shape[1]))
    _, full = tiles.tiled_attn_grad(lm, rows, 7, dense=True, budget=BUDGET)
    assert fewer < sum(asked)
    for field in ("total", "prediction", "flow", "top_values", "top_cells", "dense"):
        assert torch.equal(getattr(skipped, field), getattr(full, field)), field


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strongest_first_is_a_stable_sort_by_magnitude(dtype, route):
    generator = torch.Generator().manual_seed(3)
    values = torch.randint(-6, 7, (3, 4, 300), generator=generator).to(dtype) / 4  # many ties
    values[0, 0, :5] = torch.tensor([float("inf"), -float("inf"), -0.0, 1e-40, 3.4e38])
    order = tiles.strongest_first(values)
    assert order.dtype == torch.long
    assert torch.equal(order, torch.argsort(-values.abs(), dim=-1, stable=True))


@pytest.mark.parametrize("name", ["gpt2", "bert-mlm"])
@pytest.mark.parametrize("method", ["attn-grad", "attention"])
def test_kept_layers_reduce_alike_in_chunks_of_any_size(loaded, name, method, monkeypatch):
    """Kept weights' layers reduced one chunk per layer (the backward's from the top, the
    forward's from the bottom) give the same reductions as all layers in one chunk."""
    lm = loaded[name]
    rows = _rows(lm, name)
    run = tiles.tiled_attn_grad if method == "attn-grad" else tiles.tiled_attention
    _, together = run(lm, rows, 7, dense=True, budget=2**30)
    monkeypatch.setattr(tiles, "CHUNK_BYTES", 1)
    _, apart = run(lm, rows, 7, dense=True, budget=2**30)
    for field in ("total", "prediction", "flow", "top_values", "top_cells", "dense"):
        assert torch.equal(getattr(together, field), getattr(apart, field)), field
