"""Long inputs: block edges and exact block sums against numpy loops, the record round trip,
and what a long input's page carries (its overview data decodes to the block sums)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from synthetic import HOSTILE, make_result, run_info, stats_from_dense

from reportgen import charts, site
from reportgen.data.blocks import (
    BLOCKS,
    LONG_TOKENS,
    TOKENS_PER_BLOCK,
    block_edges,
    block_of,
    block_sums,
    is_long,
)
from reportgen.data.examples import Example, Segment
from reportgen.data.results import Result, TokenSpan
from reportgen.errors import RunError
from reportgen.records import Run, RunWriter
from reportgen.settings import Settings

pytestmark = pytest.mark.unit

T = 300


def long_result(tokens: int = T, seed: int = 0) -> Result:
    """A causal synthetic result of `tokens` tokens (three segments), stats with block sums."""
    rng = np.random.default_rng(seed)
    scores = rng.gamma(0.3, size=(3, 4, tokens, tokens)).astype(np.float32)
    scores *= np.tril(np.ones((tokens, tokens), np.float32))
    a, b = tokens // 3 + 1, 2 * tokens // 3 - 2
    spans = (TokenSpan("ENV", 0, a), TokenSpan("CHI", a, b), TokenSpan("LAN", b, tokens))
    words = tuple(HOSTILE if k == 7 else f"w{k % 41}" for k in range(tokens))
    example = Example(
        "long", tuple(Segment(s.name, " ".join(words[s.start : s.end])) for s in spans)
    )
    return Result(
        example=example,
        tokens=words,
        spans=spans,
        target="x",
        target_given=True,
        predicted="x",
        value=0.5,
        loss=0.69,
        prediction_position=tokens - 1,
        stats=stats_from_dense(scores, spans, tokens - 1, 2 * tokens),
        ablation=None,
        dense=scores,
    )


def test_block_edges_cover_the_input_and_snap_to_segment_boundaries() -> None:
    spans = [TokenSpan("A", 0, 101), TokenSpan("B", 101, 250), TokenSpan("C", 250, 300)]
    edges = block_edges(300, spans, BLOCKS)
    assert edges[0] == 0 and edges[-1] == 300
    assert (np.diff(edges) > 0).all()
    assert len(edges) - 1 <= BLOCKS
    assert 101 in edges and 250 in edges  # both boundaries are edges
    step = 300 / BLOCKS
    nominal = np.round(np.arange(BLOCKS + 1) * step)
    # every edge is a nominal edge or a boundary within half a block of one
    for e in edges:
        assert e in nominal or (e in (101, 250) and np.abs(nominal - e).min() <= step / 2)
    # without segments: the nominal edges
    np.testing.assert_array_equal(block_edges(300, [], BLOCKS), nominal.astype(int))
    # short inputs: one token per block at most
    np.testing.assert_array_equal(block_edges(5, [], BLOCKS), np.arange(6))
    # by default, at least TOKENS_PER_BLOCK tokens a block, and BLOCKS at most
    assert [len(block_edges(t, [])) - 1 for t in (129, 300, 512, 1279, 1280, 8192)] == [
        129 // TOKENS_PER_BLOCK,
        300 // TOKENS_PER_BLOCK,
        512 // TOKENS_PER_BLOCK,
        63,
        64,
        64,
    ]
    assert not is_long(LONG_TOKENS) and is_long(LONG_TOKENS + 1)


def test_block_sums_equal_loops_over_the_blocks() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, 3, 150, 150))
    edges = block_edges(150, [TokenSpan("A", 0, 37), TokenSpan("B", 37, 150)])
    got = block_sums(scores, edges)
    n = len(edges) - 1
    want = np.zeros((2, 3, n, n))
    for q in range(n):
        for k in range(n):
            rows = slice(edges[q], edges[q + 1])
            cols = slice(edges[k], edges[k + 1])
            want[:, :, q, k] = np.abs(scores[:, :, rows, cols]).sum((-1, -2))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got.sum((2, 3)), np.abs(scores).sum((2, 3)), rtol=1e-12)
    assert block_of(edges, np.array([0, 36, 37, 149])).tolist() == [
        0,
        int(np.searchsorted(edges, 36, "right") - 1),
        list(edges).index(37),
        n - 1,
    ]


def test_block_sums_round_trip_through_a_record(tmp_path: Path) -> None:
    result = long_result()
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(result)
    back = Run.open(tmp_path / "run").result(0)
    assert back.stats.edges is not None and back.stats.blocks is not None
    np.testing.assert_array_equal(back.stats.edges, result.stats.edges)
    assert back.stats.blocks.dtype == np.float64  # stored in float32, read back as float64
    np.testing.assert_array_equal(back.stats.blocks, result.stats.blocks.astype(np.float32))
    # a short input has none
    with RunWriter(tmp_path / "short", run_info()) as writer:
        writer.add(make_result())
    assert Run.open(tmp_path / "short").result(0).stats.blocks is None


def test_damaged_block_edges_are_refused(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    result = long_result()
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(result)
    record = next((tmp_path / "run" / "records").glob("*.safetensors"))
    arrays = load_file(str(record))
    arrays["block_edges"] = arrays["block_edges"][::-1].copy()
    save_file(arrays, str(record))
    with pytest.raises(RunError, match="'block_edges' must rise from 0 to the input's 300"):
        Run.open(tmp_path / "run").result(0)


def _decoded(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The page's blocks (real values), totals, and kept cells/values, decoded as the JS does."""
    heads = data["layers"] * data["heads"]
    n = len(data["edges"]) - 1
    unit = np.frombuffer(base64.b64decode(data["blocks"]), "<f2").astype(np.float64)
    blocks = unit.reshape(heads, n, n) * np.asarray(data["bmax"])[:, None, None]
    cells = np.frombuffer(base64.b64decode(data["cells"]), "<i4")
    values = np.frombuffer(base64.b64decode(data["values"]), "<f4")
    return blocks, np.asarray(data["tot"]), cells, values


def test_the_overview_data_carries_the_exact_block_sums() -> None:
    result = long_result()
    overview = charts.pack_overview(result)
    data = overview.data
    blocks, tot, cells, values = _decoded(data)
    want = block_sums(result.dense, result.stats.edges).reshape(12, *blocks.shape[1:])
    scale = 1 / result.stats.total.max()
    np.testing.assert_allclose(blocks, want * scale, rtol=2**-11, atol=1e-7 * blocks.max())
    np.testing.assert_allclose(tot, result.stats.total.ravel() * scale, rtol=1e-3)
    # the blocks add up to the head totals (all the saliency), to float16's rounding
    np.testing.assert_allclose(blocks.sum((1, 2)), tot, rtol=1e-3)
    # kept cells: each head's strongest, in order, with their magnitudes
    starts = np.concatenate([[0], np.cumsum(data["counts"])])
    for h in range(12):
        got = cells[starts[h] : starts[h + 1]]
        np.testing.assert_array_equal(got, result.stats.top_cells.reshape(12, -1)[h, : got.size])
        flat = np.abs(result.dense.reshape(12, -1)[h])
        np.testing.assert_allclose(values[starts[h] : starts[h + 1]], flat[got] * scale, rtol=1e-6)
    assert overview.blocks == len(data["edges"]) - 1
    assert len(data["labels"]) == overview.blocks


def test_representative_tokens_prefer_rare_words_in_reading_order() -> None:
    tokens = ["the", "Ġdog", "the", ",", "the", "cat", "the", "."]
    labels = charts.representative_tokens(tokens, np.array([0, 4, 8]), per_block=2)
    assert labels == ["the dog", "the cat"]
    assert charts.representative_tokens([",", "."], np.array([0, 2]), 1) == [","]


def _page_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="rg-data">(.*?)</script>', html, re.S)
    assert found is not None
    return json.loads(found.group(1))


def test_a_long_page_opens_on_the_overview_and_a_short_one_as_before(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(long_result())
        writer.add(make_result(seed=1))
    run = Run.open(tmp_path / "run")
    site.render_site(run, tmp_path / "site", Settings())
    long_page, short_page = sorted((tmp_path / "site" / "examples").glob("*.html"))
    long_data, short_data = (
        _page_data(long_page.read_text("utf-8")),
        _page_data(short_page.read_text("utf-8")),
    )
    assert "long" in long_data and "long" not in short_data
    text = json.dumps(long_data["spec"])
    assert charts.names.marks(charts.HEAT_CELLS) not in text, "no Vega heatmap beside the grid"
    assert charts.names.marks(charts.HEAT_CELLS) in json.dumps(short_data["spec"])
    html = long_page.read_text("utf-8")
    assert HOSTILE not in html, "a token is text, in the page's data and its markup"
    assert HOSTILE in long_data["long"]["text"]
    assert 'data-rg="heat-canvas"' in html and 'data-rg="token-strip"' in html
    blocks = len(long_data["long"]["edges"]) - 1
    assert re.search(rf"overview of\s+{blocks} × {blocks} token blocks", html)


def test_a_long_input_from_a_run_without_block_sums_says_so(tmp_path: Path) -> None:
    from dataclasses import replace

    result = long_result()
    old = replace(result, stats=replace(result.stats, edges=None, blocks=None))
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(old)
    site.render_site(Run.open(tmp_path / "run"), tmp_path / "site", Settings())
    [page] = (tmp_path / "site" / "examples").glob("*.html")
    html = page.read_text("utf-8")
    assert 'data-rg="blocks-missing"' in html and "compute the run again" in html
    assert "long" not in _page_data(html)


def test_page_weight_at_8192_tokens_for_12_by_12_heads(tmp_path: Path) -> None:
    """A T = 8192 input of a 12 × 12-head model (default top-k, 512 cells a head) renders to a
    page of at most 4 MiB, its data inline (the single file gzips it further)."""
    from synthetic import long_result as big_result

    info = run_info(num_layers=12, num_heads=12)
    with RunWriter(tmp_path / "run", info) as writer:
        writer.add(big_result(12, 12, 8192))
    site.render_site(Run.open(tmp_path / "run"), tmp_path / "site", Settings())
    [page] = (tmp_path / "site" / "examples").glob("*.html")
    size = page.stat().st_size
    assert size <= 4 * 2**20, f"{size / 2**20:.2f} MiB"
    assert "long" in _page_data(page.read_text("utf-8"))
