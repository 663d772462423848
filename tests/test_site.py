"""The static site: layout, escaping, determinism, atomic replacement, templates, single file.

Rendered from a synthetic run (numpy data shaped like a tiny GPT-2's, no model): the unit tier.
Sites of runs the engine computed are checked in test_browser, test_hostile and test_golden."""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import in_fresh_processes

from reportgen import site
from reportgen.charts import figure_spec
from reportgen.fsutil import OutputError
from reportgen.records import Run
from reportgen.settings import Settings

pytestmark = pytest.mark.unit

HOSTILE = "<script>alert(1)</script>"
EXAMPLES = ["0001-reference.html", "0002-dog.html", "0003-hostile-quote-script.html"]


class Tags(HTMLParser):
    """Every start tag of a document with its attributes, and the text of <script> elements."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def run(synthetic_run: Path) -> Run:
    return Run.open(synthetic_run)


@pytest.fixture(scope="module")
def built(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    calls: list[int] = []
    single = out.parent / "report.html"
    site.render_site(run, out, Settings(single_file=single), progress=calls.append)
    assert calls == [1, 1, 1]
    return out


def test_layout(built: Path) -> None:
    files = set(tree(built))
    assert {
        "index.html",
        "about.html",
        ".nojekyll",
        ".reportgen-manifest.json",  # the record of the files reportgen wrote (fsutil.RECORD)
        "assets/vega.js",
        "assets/reportgen.css",
        "assets/reportgen.js",
        "assets/reportgen-index.js",
        *(f"examples/{name}" for name in EXAMPLES),
    } == files
    bundle = (built / "assets/vega.js").read_text("utf-8")
    assert "window.vega=" in bundle and len(bundle) > 500_000
    assert "vegaEmbed" not in bundle  # pages carry compiled Vega: no Vega-Lite, no vega-embed
    for page in ["index.html", "about.html", *(f"examples/{n}" for n in EXAMPLES)]:
        html = (built / page).read_text("utf-8")
        assert len(html) < 100_000  # the bundle is written once, not per page
        depth = "../" if page.startswith("examples/") else ""
        scripts = [s.get("src") for s in Tags(html).named("script") if s.get("src")]
        index = [f"{depth}assets/reportgen-index.js"] if page == "index.html" else []
        assert scripts == [f"{depth}assets/vega.js", *index, f"{depth}assets/reportgen.js"]
        assert site.is_site(built)


def test_links_are_relative_and_inside_the_site(built: Path) -> None:
    for page in built.rglob("*.html"):
        tags = Tags(page.read_text("utf-8"))
        for attrs in tags.named("a") + tags.named("link") + tags.named("script"):
            url = attrs.get("href") or attrs.get("src")
            if url is None or url == "data:,":  # the empty icon (no favicon request)
                continue
            assert "://" not in url and not url.startswith("/"), (page, url)
            assert (page.parent / url).resolve().is_file(), (page, url)


def test_every_page_has_a_csp_forbidding_the_network(built: Path) -> None:
    for page in built.rglob("*.html"):
        (csp,) = [
            m["content"]
            for m in Tags(page.read_text("utf-8")).named("meta")
            if m.get("http-equiv") == "Content-Security-Policy"
        ]
        assert csp is not None
        assert "default-src 'none'" in csp and "connect-src 'none'" in csp
        assert "http" not in csp


def test_hostile_text_is_text(built: Path) -> None:
    for page in ["index.html", f"examples/{EXAMPLES[2]}"]:
        html = (built / page).read_text("utf-8")
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<img" not in html
        tags = Tags(html)
        scripts = 4 if page == "index.html" else 3  # data, bundle, (the index's table), page code
        assert [t for t, _ in tags.tags].count("script") == scripts
        assert tags.named("img") == []
        data = next(s for s in tags.scripts if s.strip().startswith("{"))
        assert "</" not in data and "<!--" not in data
        parsed = json.loads(data)
        if page.startswith("examples/"):
            tokens = next(s for s in parsed["spec"]["signals"] if s["name"] == "tokens")
            assert HOSTILE in tokens["value"]  # the token survives, as data
    html = (built / "examples" / EXAMPLES[2]).read_text("utf-8")
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html  # the meta value, escaped
    title = re.search(r"<title>(.*)</title>", html)
    assert title and title.group(1).startswith("../../hostile &#34;quote&#34; &lt;/script&gt;")


def test_page_names_are_safe_for_any_id() -> None:
    ids = ["../../x", "CON", "con", "a/b\\c", "", "日本語", "ok", "OK", "x" * 300, "nul.txt"]
    names = [site.page_name(i, id_, len(ids)) for i, id_ in enumerate(ids)]
    assert len(set(names)) == len(ids)
    assert len({n.lower() for n in names}) == len(ids)
    for name in names:
        assert re.fullmatch(r"\d{4}(-[a-z0-9]+(-[a-z0-9]+)*)?", name), name
        assert len(name) <= 45
    assert names[0] == "0001-x" and names[1] == "0002-con" and names[4] == "0005"
    assert site.page_name(0, "a", 12_345) == "00001-a"


def test_script_json_cannot_break_out() -> None:
    value = {"t": "</script><!-- <script>\u2028\u2029", "n": [1.5, None]}
    text = str(site.script_json(value))
    assert "<" not in text and "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == value
    js = str(site.script_text("var a = '</script>'; var b = '<!--';"))
    assert "</script" not in js and "<!--" not in js


def test_pages_state_what_they_show(built: Path, run: Run) -> None:
    index = (built / "index.html").read_text("utf-8")
    rows = Tags(index).named("tr")
    assert [r.get("data-row") for r in rows if r.get("data-row")] == ["0", "1", "2"]
    for name in EXAMPLES:
        assert f'href="examples/{name}"' in index
    page = (built / "examples" / EXAMPLES[0]).read_text("utf-8")
    assert re.search(r"carry\s+<strong>\d+\.\d%</strong> of the saliency", page)
    assert 'href="0002-dog.html"' in page and 'href="../index.html"' in page
    assert "p(target)" in page and "loss" in page and "Ablation" in page
    about = (built / "about.html").read_text("utf-8")
    info = run.info
    for text in (info.weights_sha256, info.command, info.created, info.metric, "transformers"):
        assert text.replace(">", "&gt;") in about


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("−", "-")


def test_index_and_about_show_the_dataset_test(built: Path, run: Run) -> None:
    """The numbers the pages print are the paired test of the entries' ablations."""
    from reportgen.data.stats import paired_test
    from reportgen.site.html import number, signed

    entries = [e.ablation for e in run.entries]
    assert all(a is not None for a in entries)
    tops = [a.delta_top for a in entries if a]
    randoms = [a.delta_random for a in entries if a]
    test = paired_test(tops, randoms, int(run.info.parameters["seed"]))
    index = _text((built / "index.html").read_text("utf-8"))
    about = _text((built / "about.html").read_text("utf-8"))
    n = len(run)
    assert f"on {test.below} of {n} inputs" in index and f"n = {n}" in index
    assert f"sign test p = {number(test.sign_p, 2)}" in index
    assert f"permutation test p = {number(test.permutation_p, 2)}" in index
    assert f"dz = {number(test.effect_size, 3)}".replace("−", "-") in index
    assert "mean-ablated" in index and "log p(target)" in index
    assert "Knocking out attention ENV→LAN" in index
    assert f"{test.below} of {n} ({test.above} higher)" in about
    assert f"{signed(test.mean)} (Δ top − Δ random)".replace("−", "-") in about
    assert re.search(r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]", index), "head intervals"
    assert "Benjamini–Hochberg" in index


def test_index_and_about_show_the_layer_tests_with_q_values(built: Path, run: Run) -> None:
    """Each layer's ablation and knockout against no change: the about page's table holds
    scipy's sign test and Benjamini–Hochberg q-values on the entries' changes, the index the
    count at FDR 5%."""
    import scipy.stats

    from reportgen.site.html import number, signed

    ablations = [e.ablation for e in run.entries if e.ablation is not None]
    layers = run.info.num_layers
    index = _text((built / "index.html").read_text("utf-8"))
    about_html = (built / "about.html").read_text("utf-8")
    [table] = re.findall(r'<table[^>]*data-rg="layer-tests".*?</table>', about_html, re.S)
    cells = [
        [_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    ]
    assert len(cells) == layers
    for column, deltas in enumerate(
        (
            np.array([a.delta_layers for a in ablations]),
            np.array([a.delta_layer_knockouts for a in ablations]),
        )
    ):
        below, above = (deltas < 0).sum(0), (deltas > 0).sum(0)
        p = np.array([scipy.stats.binomtest(b, b + a).pvalue for b, a in zip(below, above)])
        q = scipy.stats.false_discovery_control(p)
        for layer in range(layers):
            shown = cells[layer][1 + 4 * column : 5 + 4 * column]
            assert shown == [
                signed(deltas[:, layer].mean()).replace("−", "-"),
                f"{below[layer]} / {above[layer]}",
                number(p[layer], 2),
                number(q[layer], 2),
            ]
        found = int((q <= 0.05).sum())
        if column == 0:
            assert f"in {found} of {layers} layers" in index
            assert f"At FDR 5%: {found} of {layers} layers ablated" in _text(about_html)
        else:
            assert f"in every head of one layer: {found} of {layers} layers" in index
            assert f"{found} knocked out" in _text(about_html)
    assert "Layer by layer. With every head of one layer mean-ablated" in index
    assert "Benjamini–Hochberg FDR 5% over the layers" in index


def test_the_index_names_the_layers_found_at_the_fdr(tmp_path: Path) -> None:
    """Ten inputs whose every layer ablation and knockout lowers log p: each layer's sign test
    p = 2 / 2^10, and the index lists every layer with its mean change and q-value."""
    from conftest import DEMO_INPUTS
    from synthetic import write_run

    from reportgen.site.html import number, signed

    items = [{**DEMO_INPUTS[1], "id": f"dog-{i}"} for i in range(10)]
    many = write_run(tmp_path / "run", items)
    site.render_site(many, tmp_path / "site", Settings(pages=0))
    index = _text((tmp_path / "site" / "index.html").read_text("utf-8"))
    ablations = [e.ablation for e in many.entries if e.ablation is not None]
    q = 2 / 2**10  # every layer alike: BH leaves it
    layers = []
    for layer in range(many.info.num_layers):
        mean = np.mean([a.delta_layers[layer] for a in ablations])
        layers.append(f"L{layer + 1} (mean {signed(mean)}, q = {number(q, 2)})")
    assert "in 3 of 3 layers" in index and ", ".join(layers).replace("−", "-") in index
    knocked = [
        f"L{layer + 1}: mean {signed(np.mean([a.delta_layer_knockouts[layer] for a in ablations]))}"
        f", q = {number(q, 2)}"
        for layer in range(many.info.num_layers)
    ]
    assert f"3 of 3 layers ({'; '.join(knocked)})".replace("−", "-") in index


def test_the_ablation_card_shows_the_curve_and_the_knockout(built: Path, run: Run) -> None:
    from reportgen.site.html import signed

    a = run.entries[0].ablation
    assert a is not None and a.knockout is not None
    page = (built / "examples" / EXAMPLES[0]).read_text("utf-8")
    curve = Tags(page)
    text = _text(page)
    assert "Effect measured on log p(target)" in text and "mean-ablated" in text
    for n, delta in enumerate(a.delta_curve, start=1):
        assert f"top {n} (+ " in text and signed(delta).replace("−", "-") in text
    assert "attention ENV → LAN knocked out in the top heads" in text
    assert signed(a.delta_knockout).replace("−", "-") in text
    assert any(t.get("data-rg") == "ablation-curve" for t in curve.named("table"))
    assert any(t.get("data-rg") == "ablation-layers" for t in curve.named("table"))
    assert "all heads mean-ablated" in text and "ENV → LAN knocked out" in text
    for delta in (*a.delta_layers, *a.delta_layer_knockouts):
        assert signed(delta).replace("−", "-") in text
    assert len(a.delta_layers) == len(a.delta_layer_knockouts) == run.info.num_layers


RENDER = """
import sys
from pathlib import Path
from reportgen.records import Run
from reportgen.settings import Settings
from reportgen.site import render_site

run, out = Run.open(sys.argv[1]), Path(sys.argv[2])
render_site(run, out, Settings(single_file=out / "report.html", keys_as_rows=True))
"""


def test_rendering_is_the_same_in_two_fresh_processes(run: Run, tmp_path: Path) -> None:
    """The same run rendered by two new interpreters (side by side, different hash seeds) gives
    the same files, byte for byte (two renders in this warm process would share the compiled
    Vega and the bundle)."""
    in_fresh_processes(
        RENDER, [str(run.path), str(tmp_path / "a")], [str(run.path), str(tmp_path / "b")]
    )
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert {"index.html", "report.html", *(f"examples/{name}" for name in EXAMPLES)} <= a.keys()
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []


def test_an_interrupted_render_leaves_the_previous_site(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "site"
    site.render_site(run, out, Settings())
    before = tree(out)
    real = site.pages.example_page

    def failing(s: object, index: int, result: object) -> object:
        if index == 1:
            raise KeyboardInterrupt
        return real(s, index, result)  # type: ignore[arg-type]

    monkeypatch.setattr(site.pages, "example_page", failing)
    with pytest.raises(KeyboardInterrupt):
        site.render_site(run, out, Settings(single_file=tmp_path / "one.html"))
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_refuses_to_replace_a_folder_it_did_not_write(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by reportgen"):
        site.render_site(run, out, Settings())
    assert (out / "notes.txt").read_text() == "mine"
    site.render_site(run, out, Settings(force=True))
    # --force takes the folder over; files reportgen did not write stay (test_ownership.py)
    assert site.is_site(out) and (out / "notes.txt").read_text() == "mine"
    site.render_site(run, out, Settings())  # a reportgen site is replaced without --force
    assert site.is_site(out)


def test_user_templates_override_by_file_name(run: Run, tmp_path: Path) -> None:
    user = tmp_path / "templates"
    (user / "assets").mkdir(parents=True)
    (user / "about.html").write_text(
        '{% extends "base.html" %}{% block content %}<h1>Our lab: {{ info.model }}</h1>'
        "<p>{{ '<b>' }}</p>{% endblock %}"
    )
    (user / "assets" / "reportgen.css").write_text("body { color: rebeccapurple; }")
    out = tmp_path / "site"
    site.render_site(run, out, Settings(templates=user))
    about = (out / "about.html").read_text("utf-8")
    assert "<h1>Our lab: " in about and "&lt;b&gt;" in about  # still autoescaped
    assert 'name="generator"' in about  # base.html still wraps it
    assert (out / "assets/reportgen.css").read_text() == "body { color: rebeccapurple; }"
    assert "Strongest heads" in (out / "index.html").read_text("utf-8")  # others built in
    (user / "index.html").write_text("{{ no_such_variable }}")
    with pytest.raises(Exception, match="no_such_variable"):
        site.render_site(run, tmp_path / "strict", Settings(templates=user))
    with pytest.raises(OutputError, match="no such folder"):
        site.render_site(run, tmp_path / "x", Settings(templates=tmp_path / "missing"))


def test_single_file_inside_the_site_folder(run: Run, tmp_path: Path) -> None:
    """`--out site --single-file site/report.html` (the demo's command) ships both together."""
    out = tmp_path / "site"
    for _ in range(2):  # first into a new folder, then replacing it
        site.render_site(run, out, Settings(single_file=out / "report.html"))
        assert (out / "report.html").is_file() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert not list(out.glob(".*tmp*"))


def test_single_file_is_self_contained(built: Path) -> None:
    path = built.parent / "report.html"
    html = path.read_text("utf-8")
    tags = Tags(html)
    assert [link["href"] for link in tags.named("link")] == ["data:,"]
    assert tags.named("img") == []
    assert all(s.get("src") is None for s in tags.named("script"))
    hrefs = [a.get("href") for a in tags.named("a")]
    assert hrefs and all(h and h.startswith("#") for h in hrefs)
    assert "#example-3" in hrefs and "#about" in hrefs
    packed = re.findall(
        r'<script type="application/gzip"( id="rg-vega")?[^>]*>([^<]*)</script>', html
    )
    assert [bool(vega) for vega, _ in packed].count(True) == 1, "the bundle, once"
    texts = {gzip.decompress(base64.b64decode(body)).decode("utf-8"): vega for vega, body in packed}
    [bundle] = [text for text, vega in texts.items() if vega]
    assert bundle.count("window.vega=") == 1 and bundle == site.vega_bundle()
    pages = [json.loads(text) for text, vega in texts.items() if not vega]
    assert [p["kind"] for p in pages] == ["index", "about", "example", "example", "example"]
    assert HOSTILE not in html
    packed_json = [json.dumps(p, ensure_ascii=False) for p in pages]
    assert any(HOSTILE in t for t in packed_json), "hostile tokens are data, packed with the page"
    sections = [s.get("data-key") for s in tags.named("section") if s.get("data-key")]
    assert sections == ["index", "about", "example-1", "example-2", "example-3"]
    csp = [m for m in tags.named("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_single_file_on_its_own_and_its_size_limit(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.html"
    assert site.render_single_file(run, path, Settings()) == path
    before = path.read_bytes()
    monkeypatch.setattr(site.writer, "SINGLE_FILE_LIMIT", 290_000)  # the packed bundle is ~273 KB
    with pytest.raises(OutputError, match=r"would exceed 0.277 MiB .* use the site folder"):
        site.render_single_file(run, path, Settings())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_iframe_html_escapes_the_document(built: Path) -> None:
    html = site.iframe_html(built.parent / "report.html")
    tags = Tags(html)
    (frame,) = tags.named("iframe")
    assert [t for t, _ in tags.tags] == ["iframe", "script"]  # the script sizes the frame
    assert frame["sandbox"] == "allow-scripts"
    assert frame["srcdoc"] == (built.parent / "report.html").read_text("utf-8")


def test_save_figure(run: Run, tmp_path: Path) -> None:
    spec = figure_spec(run.result(0), None, keys_as_rows=True, metric=run.info.metric)
    svg = site.save_figure(spec, tmp_path / "fig.svg").read_text("utf-8")
    root = ElementTree.fromstring(svg)  # well-formed, the ownership comment before the root
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "share of head" in svg and "horse" in svg
    png = site.save_figure(spec, tmp_path / "fig.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    at, kinds = 8, []
    while at < len(png):  # every chunk's CRC holds (ours included): decoders accept the file
        size = int.from_bytes(png[at : at + 4], "big")
        body, crc = png[at + 4 : at + 8 + size], png[at + 8 + size : at + 12 + size]
        assert zlib.crc32(body).to_bytes(4, "big") == crc, body[:4]
        kinds.append(body[:4])
        at += 12 + size
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"tEXt") >= 1
    with pytest.raises(OutputError, match="use .svg or .png"):
        site.save_figure(spec, tmp_path / "fig.pdf")


def test_numbers_read_well() -> None:
    assert site.signed(-5e-05) == "−0.00005"
    assert site.signed(0.000306) == "+0.000306"
    assert site.number(0.027424814) == "0.02742"
    assert site.number(None) == "–"
    assert site.percent(0.9446) == "94.5%"
    assert site.head_label(6, 7) == "L7 H8"


def test_an_empty_run_renders(run: Run, tmp_path: Path) -> None:
    from reportgen.records import RunWriter

    with RunWriter(tmp_path / "empty", run.info):
        pass
    out = site.render_site(Run.open(tmp_path / "empty"), tmp_path / "site", Settings())
    index = (out / "index.html").read_text("utf-8")
    assert "0 inputs" in index and not list((out / "examples").glob("*.html"))


def test_index_rows_are_made_as_the_page_is_written(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index of many inputs: rows come from the manifest on each pass (none are held), the
    page is written in pieces, and its packed scores are made a block at a time."""
    from dataclasses import replace

    import numpy as np

    from reportgen.charts import top_head
    from reportgen.records import RunWriter

    results = list(run.results())
    with RunWriter(tmp_path / "run", run.info) as writer:
        for i in range(50):
            result = results[i % len(results)]
            writer.add(replace(result, example=replace(result.example, id=f"x{i}")))
    many = Run.open(tmp_path / "run")
    monkeypatch.setattr(site.pages, "RANK_BLOCK", 7)
    gathered = site.SiteContext.gather(many, Settings())
    page = site.pages.index_page(gathered)
    rows = page.context.rows
    assert not isinstance(rows, (list, tuple))
    first = list(rows)
    assert first == list(rows) and [r.id for r in first] == [f"x{i}" for i in range(50)]
    grids = many.head_scores(many.info.metric)
    assert [r.top for r in first] == [top_head(g) for g in grids]
    assert [r.top_score for r in first] == [float(g[top_head(g)]) for g in grids]
    packed = np.frombuffer(base64.b64decode(page.data["scores"]), "<u2").reshape(50, -1)
    expected = np.rint(grids.reshape(50, -1).astype(np.float64) * site.pages.RANK_SCALE)
    np.testing.assert_array_equal(packed, expected.astype("<u2"))
    pieces = site.writer._render(gathered, page, site.Links(gathered.names))
    assert not isinstance(pieces, str)
    assert "".join(pieces).count("<tr data-row=") == 50


def test_nav_links_point_from_every_page_and_are_checked(run: Run, tmp_path: Path) -> None:
    from reportgen.errors import SettingsError
    from reportgen.settings import parse_link

    out, single = tmp_path / "site", tmp_path / "one.html"
    links = ("Over training=compare/index.html", "Paper=https://arxiv.org/abs/2510.13796")
    site.render_site(run, out, Settings(links=links, single_file=single))
    (out / "compare").mkdir()
    (out / "compare" / "index.html").write_text("<p>comparison</p>", "utf-8")
    pages = sorted(out.rglob("*.html"))
    assert len(pages) > 3 and any(p.parent.name == "examples" for p in pages)
    for page in (p for p in pages if p.parent.name != "compare"):
        nav = re.search(r'<nav class="rg-nav".*?</nav>', page.read_text("utf-8"), re.S)
        assert nav, page
        anchors = dict(
            (text, href) for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav[0])
        )
        assert (page.parent / anchors["Over training"]).resolve() == out / "compare" / "index.html"
        assert anchors["Paper"] == "https://arxiv.org/abs/2510.13796"
    # the single file has no site around it: the site path is left out, the address kept
    nav = re.search(r'<nav class="rg-nav".*?</nav>', single.read_text("utf-8"), re.S)
    assert nav and "Over training" not in nav[0] and "https://arxiv.org/abs/2510.13796" in nav[0]
    assert parse_link(" a = b/c.html ") == ("a", "b/c.html")
    for bad in ("no-equals", "=x.html", "a=", "a=javascript:alert(1)", "a=../up.html",
                "a=/abs.html", "a=//host/x", "a=file:///etc/passwd", "a=b\\c"):  # fmt: skip
        with pytest.raises(SettingsError, match="--link"):
            Settings(links=(bad,)).validate()


def test_words_read_as_unknown_are_shown_struck_through_beside_the_token(
    tmp_path: Path,
) -> None:
    """A page shows the model's [UNK], and the word it replaced struck through next to it (as
    text, whatever it holds), says how many there are, and gives the page's script the words
    by position; the chart's labels (the tokens param) are the model's tokens only."""
    import dataclasses

    from synthetic import result_for, run_info

    from reportgen.data.results import UnknownToken
    from reportgen.inputs import examples_from_items
    from reportgen.records import RunWriter

    env, lan = "<CHI> saw a young dog", f"<CHI> {HOSTILE} is the"
    segments = [{"name": "ENV", "text": env}, {"name": "LAN", "text": lan}]
    example, same = examples_from_items(
        [{"id": "unk", "segments": segments}, {"id": "known", "segments": segments}]
    )
    plain = result_for(example, 1)
    words = example.text.split(" ")
    assert len(plain.tokens) == len(words)
    at = {p: example.text.index(w) for p, w in ((3, "young"), (6, HOSTILE))}
    unknown = tuple(UnknownToken(p, words[p], a, a + len(words[p])) for p, a in at.items())
    tokens = tuple("[UNK]" if p in at else w for p, w in enumerate(words))
    with RunWriter(tmp_path / "run", run_info()) as writer:
        writer.add(dataclasses.replace(plain, tokens=tokens, unknown=unknown))
        writer.add(result_for(same, 2))  # the same words, all known
    site.render_site(Run.open(tmp_path / "run"), tmp_path / "site", Settings())
    html, known = (
        (tmp_path / "site" / "examples" / f"{name}.html").read_text("utf-8")
        for name in ("0001-unk", "0002-known")
    )
    card = re.search(r'<section class="rg-input".*?</section>', html, re.S)
    assert card is not None
    struck = re.findall(
        r'<span class="rg-unk-token">([^<]*)</span> <del class="rg-unk-word">([^<]*)</del>',
        card.group(0),
    )
    assert struck == [("[UNK]", "young"), ("[UNK]", "&lt;script&gt;alert(1)&lt;/script&gt;")]
    text = re.sub(r"<[^>]+>", "", card.group(0).replace('<span class="rg-seg-name">ENV</span>', ""))
    assert "saw a [UNK] young dog" in text.replace("&lt;", "<").replace("&gt;", ">")
    assert HOSTILE not in html and "<del" not in known and "rg-unk" not in known
    note = re.search(r'data-rg="unknown-note">(.*?)</p>', html, re.S)
    assert note and note.group(1).startswith("2 words are not in the model's vocabulary")
    data = json.loads(Tags(html).scripts[0])
    assert data["unknown"] == [[3, "young"], [6, HOSTILE]]
    labels = next(s for s in data["spec"]["signals"] if s["name"] == "tokens")["value"]
    assert labels == list(tokens) and "young" not in labels and HOSTILE not in labels
    assert "unknown" not in json.loads(Tags(known).scripts[0])
