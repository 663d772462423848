"""The index of many inputs: which inputs get pages (--pages, --page-id), the index's data
(every row, the dataset grid's spread), the single file's bounded pages, and the site's size
with its GitHub Pages warning. Synthetic runs (numpy only); the browser side is in
test_browser_index.py."""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import write_run
from typer.testing import CliRunner

from reportgen import site
from reportgen.charts import TOP_N
from reportgen.cli import app
from reportgen.errors import SettingsError
from reportgen.records import Run
from reportgen.settings import Settings

COUNT = 30


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Run:
    items: list[dict[str, Any]] = []
    for i in range(COUNT):
        word = ["dog", "cat", "ball"][i % 3]
        item: dict[str, Any] = {
            "id": f"in-{i}",
            "segments": [
                {"name": "ENV", "text": f"<CHI> saw a {word}"},
                {"name": "LAN", "text": "<CHI> look at the"},
            ],
        }
        if i % 4:
            item["target"] = word  # every fourth input: no target (the prediction instead)
        items.append(item)
    return write_run(tmp_path_factory.mktemp("many") / "run", items)


def _data(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="rg-data">(.*?)</script>', html, re.S)
    assert found
    return dict(json.loads(found.group(1)))


def _by_effect(run: Run) -> list[int]:
    """Inputs by decreasing |Δ top-k|, ties in input order, computed here from the entries."""
    magnitude = np.array([abs(e.ablation.delta_top) for e in run.entries])  # type: ignore[union-attr]
    return sorted(range(len(run)), key=lambda i: (-magnitude[i], i))


@pytest.mark.unit
def test_pages_n_writes_the_largest_effects_and_the_named_ids(many: Run, tmp_path: Path) -> None:
    named = many.ids[7]
    out = site.render_site(many, tmp_path / "site", Settings(pages=5, page_ids=(named,)))
    want = [7, *[i for i in _by_effect(many) if i != 7][:5]]
    names = site.SiteContext.gather(many, Settings()).names
    files = sorted(p.name for p in (out / "examples").glob("*.html"))
    assert files == sorted(f"{names[i]}.html" for i in want)
    html = (out / "index.html").read_text("utf-8")
    data = _data(html)
    hrefs = data["hrefs"]
    assert [i for i, h in enumerate(hrefs) if h is not None] == sorted(want)
    assert all(hrefs[i] == f"examples/{names[i]}.html" for i in want)
    text = re.sub(r"\s+", " ", html)
    assert "Pages were written for 6 of 30 inputs" in text
    assert "the 5 with the largest |Δ top-k| (--pages) and 1 named with --page-id" in text
    # the HTML's own rows (no JavaScript) link only inputs with a page, and say so of the rest
    assert text.count(">no page</span>") == COUNT - 6
    # an input's page links its neighbours among the inputs with pages
    first, second = sorted(want)[:2]
    page = (out / "examples" / f"{names[first]}.html").read_text("utf-8")
    assert f'rel="next" href="{names[second]}.html"' in page
    assert 'rel="prev"' not in page


@pytest.mark.unit
def test_every_input_has_a_page_by_default_and_page_ids_alone_name_them(
    many: Run, tmp_path: Path
) -> None:
    out = site.render_site(many, tmp_path / "all", Settings())
    assert len(list((out / "examples").glob("*.html"))) == COUNT
    html = (out / "index.html").read_text("utf-8")
    assert None not in _data(html)["hrefs"] and 'data-rg="pages-note"' not in html
    only = site.render_site(many, tmp_path / "named", Settings(page_ids=(many.ids[3], "in-1")))
    assert len(list((only / "examples").glob("*.html"))) == 2
    hrefs = _data((only / "index.html").read_text("utf-8"))["hrefs"]
    assert [i for i, h in enumerate(hrefs) if h] == [1, 3]
    none = site.render_site(many, tmp_path / "none", Settings(pages=0))
    assert not list((none / "examples").glob("*.html"))


@pytest.mark.unit
def test_page_choices_that_cannot_be_made_are_one_line_errors(many: Run, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"--page-id 'nope': no input of the run has this id"):
        site.render_site(many, tmp_path / "x", Settings(page_ids=("nope",)))
    with pytest.raises(SettingsError, match="--pages must be at least 0, got -1"):
        Settings(pages=-1).validate()
    assert not (tmp_path / "x").exists()


@pytest.mark.unit
def test_pages_n_needs_an_ablation(many: Run, tmp_path: Path) -> None:
    from dataclasses import replace

    from reportgen.records import RunWriter

    with RunWriter(tmp_path / "plain", many.info) as writer:
        for result in many.results():
            writer.add(replace(result, ablation=None))
    plain = Run.open(tmp_path / "plain")
    with pytest.raises(SettingsError, match=r"--pages 3 picks the inputs with the largest"):
        site.SiteContext.gather(plain, Settings(pages=3))
    chosen = site.SiteContext.gather(plain, Settings(page_ids=("in-2",))).choice
    assert chosen.order == (2,)


@pytest.mark.unit
def test_the_index_data_holds_every_row_and_the_grid_spread(many: Run, tmp_path: Path) -> None:
    page = site.pages.index_page(site.SiteContext.gather(many, Settings()))
    rows = page.data["rows"]
    assert rows["id"] == list(many.ids)
    entries = list(many.entries)
    assert rows["target"] == [e.target for e in entries]
    assert rows["given"] == [int(e.target_given) for e in entries]
    for got, e in zip(rows["delta_top"], entries):
        assert got == pytest.approx(e.ablation.delta_top, rel=1e-5)  # type: ignore[union-attr]
    grids = many.head_scores(many.info.metric)
    flat = grids.reshape(COUNT, -1)
    assert rows["top"] == [int(np.argmax(g)) for g in flat]
    # top-N share: counted here with a plain loop
    hits = np.zeros(flat.shape[1])
    for g in flat:
        for h in sorted(range(len(g)), key=lambda h: (-g[h], h))[:TOP_N]:
            hits[h] += 1
    heads = page.data["heads"]
    (values,) = [d["values"] for d in page.data["spec"]["data"] if d["name"] == "heads"]
    for row in values:
        h = (row["layer"] - 1) * heads + row["head"] - 1
        assert row["top"] == pytest.approx(hits[h] / COUNT, rel=1e-3)
        assert row["score"] == pytest.approx(flat[:, h].mean(), rel=1e-3)
        assert row["sd"] == pytest.approx(flat[:, h].std(), rel=1e-3, abs=1e-9)
        assert row["low"] <= row["score"] <= row["high"]
    # the HTML keeps only the first FALLBACK_ROWS rows
    assert len(page.context.rows) == min(COUNT, site.pages.FALLBACK_ROWS)  # type: ignore[union-attr]


@pytest.mark.unit
def test_the_single_file_holds_a_bounded_subset_and_says_so(
    many: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site.pages, "SINGLE_FILE_PAGES", 4)
    single = tmp_path / "report.html"
    site.render_site(many, tmp_path / "site", Settings(pages=10, single_file=single))
    html = single.read_text("utf-8")
    keys = re.findall(r'data-key="(example-\d+)"', html)
    want = _by_effect(many)[:4]
    assert keys == [f"example-{i + 1}" for i in sorted(want)]
    text = re.sub(r"\s+", " ", html)
    assert "This file holds the pages of 4 of 30 inputs" in text
    assert "(10 pages) holds the others" in text
    (index,) = re.findall(r'id="rg-page-index".*?class="rg-page-data">(.*?)</script>', html, re.S)
    data = json.loads(gzip.decompress(base64.b64decode(index)))
    assert [i for i, h in enumerate(data["hrefs"]) if h] == sorted(want)
    assert all(data["hrefs"][i] == f"#example-{i + 1}" for i in want)
    # the site folder still has its 10 pages
    assert len(list((tmp_path / "site" / "examples").glob("*.html"))) == 10


@pytest.mark.unit
def test_the_site_size_is_measured_and_over_the_limit_warns(
    many: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = site.writer.SiteSize()
    warnings: list[str] = []
    out = site.render_site(many, tmp_path / "s", Settings(), on_warning=warnings.append, size=size)
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".reportgen-manifest.json"]
    assert size.bytes == sum(p.stat().st_size for p in files)
    assert warnings == []
    monkeypatch.setattr(site.writer, "GITHUB_PAGES_LIMIT", 1000)
    site.render_site(many, tmp_path / "t", Settings(pages=3), on_warning=warnings.append)
    (warning,) = warnings
    assert re.fullmatch(
        r"the site is [\d.]+ [kM]B; pages for 3 of 30 inputs, over GitHub Pages' 1 GB limit "
        r"for a published site: write pages for fewer inputs with --pages N .*",
        warning,
    )
    assert site.writer.size_text(1_234_567_890) == "1.23 GB"
    assert site.writer.size_text(999) == "999 B"


@pytest.mark.cli
def test_render_takes_pages_and_page_id_and_states_the_size(
    many: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    out = tmp_path / "site"
    args = ["render", str(many.path), "-o", str(out), "--pages", "2", "--page-id", "in-9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list((out / "examples").glob("*.html"))) == 3
    assert re.search(r"site: .*site \([\d.]+ [kM]B; open ", result.output), result.output
    # over GitHub Pages' limit: a warning with the figure, and the site is still written
    monkeypatch.setattr(site.writer, "GITHUB_PAGES_LIMIT", 1000)
    again = runner.invoke(app, [*args[:3], str(tmp_path / "big")])
    assert again.exit_code == 0, again.output
    assert re.search(r"warning: the site is [\d.]+ [kM]B, over GitHub Pages' 1 GB", again.output)
    for bad, message in (
        (["--pages", "-2"], "error: --pages must be at least 0, got -2"),
        (["--page-id", "zzz"], "error: --page-id 'zzz': no input of the run has this id"),
    ):
        failed = runner.invoke(app, ["render", str(many.path), "-o", str(tmp_path / "n"), *bad])
        assert failed.exit_code == 2
        lines = [line for line in failed.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and lines[0].startswith(message), failed.output
        assert not (tmp_path / "n").exists()
