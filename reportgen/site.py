"""Site: render a run as a self-contained static HTML site, or as one single HTML file.

    SITE/index.html                  summary, dataset grid, table of inputs
    SITE/examples/0001-<slug>.html   one page per input (linked grid + heatmap)
    SITE/about.html                  the run manifest
    SITE/assets/                     vega bundle (once), reportgen.css, reportgen.js
    SITE/.nojekyll

Pages are Jinja templates (`base.html` inherited by every page; a user folder overrides them by
file name). Each page's data is JSON inside `<script type="application/json">` written through
`script_json`, the one helper that makes JSON safe there. Links are relative, scripts classic
(`<script src>`), and nothing is fetched: the site works from file:// and under any sub-path,
and a Content-Security-Policy forbids network connections.

Pages are rendered one at a time (an example page from `run.result(i)`) and streamed to their
files; the index table's rows are made from the manifest as they are written. So memory does not
grow with the number of inputs (but for the index page's packed scores, 4 bytes a head per
input). Output is deterministic: the same run renders to byte-identical files.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from reportgen import __version__, charts
from reportgen.fsutil import OutputError, atomic_dir
from reportgen.records import Entry, Run
from reportgen.saliency import METHODS, Result
from reportgen.settings import Settings

GENERATOR = f"reportgen {__version__}"
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)
"""No network: scripts and styles only from the site itself (or inline), no connections.
Vega compiles its expressions with `Function`, hence 'unsafe-eval'; all expressions are ours."""
SINGLE_FILE_LIMIT = 64 * 2**20
"""Largest single-file report, in bytes; above it, use the site folder (or a smaller --top-k)."""
VEGA_ASSET = "vega.js"
TOP_HEADS_SHOWN = 5
EXCERPT = 90
RANK_SCALE = 100_000
"""Per-input head scores are embedded in the index as uint32 integers, score × RANK_SCALE."""
RANK_BLOCK = 1024
"""Inputs whose scores are scaled at a time (so there is no float64 copy of them all)."""


# --- helpers shared with templates ----------------------------------------------------------


def script_json(data: Any) -> Markup:
    """JSON for a `<script>` element: `<` is written `\\u003c`, so no `</script>` or `<!--` can
    end or confuse the element, and U+2028/U+2029 are escaped for older JS parsers."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


def script_text(source: str) -> Markup:
    """JavaScript source for an inline `<script>`: `</script` and `<!--` become harmless
    (`<\\/script`, `<\\!--`, same meaning inside JS strings and regular expressions)."""
    text = re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)
    return Markup(text.replace("<!--", "<\\!--"))


def style_text(source: str) -> Markup:
    """CSS for an inline `<style>`: `</style` cannot close it early."""
    return Markup(re.sub(r"</(style)", r"<\\/\1", source, flags=re.IGNORECASE))


def slug(text: str, limit: int = 40) -> str:
    """Lower-case ASCII letters, digits and dashes from `text` (possibly empty)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].strip("-")


def page_name(index: int, example_id: str, count: int) -> str:
    """`0001-<slug>`: the 1-based index keeps names unique whatever the ids are (`../x`, `CON`,
    ids differing in case or only in punctuation), the slug keeps them readable."""
    number = f"{index + 1:0{max(4, len(str(count)))}d}"
    tail = slug(example_id)
    return f"{number}-{tail}" if tail else number


def percent(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def number(x: float | None, digits: int = 4, sign: bool = False) -> str:
    """`x` with `digits` significant digits, positional (0.00005, not 5e-05) unless huge or
    tiny, with a true minus sign."""
    if x is None:
        return "–"
    if x != 0 and not 1e-7 <= abs(x) < 1e9:
        text = f"{x:{'+' if sign else ''}.{digits}g}"
    else:
        text = np.format_float_positional(
            x, precision=digits, unique=False, fractional=False, trim="-", sign=sign
        )
    return text.replace("-", "−")


def signed(x: float | None, digits: int = 3) -> str:
    """A difference with an explicit sign (+0.012, −0.00004)."""
    return number(x, digits, sign=True)


def head_label(layer: int, head: int) -> str:
    """`L7 H8` for the 0-based (6, 7), as the grid's 1-based axes read."""
    return f"L{layer + 1} H{head + 1}"


# --- templates and assets -------------------------------------------------------------------


def builtin_templates() -> Path:
    """The packaged templates (`reportgen/templates` in a wheel, `templates/` in the source)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "base.html").is_file():
            return candidate
    raise FileNotFoundError(f"reportgen's templates are missing (looked in {here})")


def environment(user: Path | None = None) -> jinja2.Environment:
    """Jinja environment: autoescape everywhere, undefined names are errors, and a user folder
    (`--templates`) overriding the built-in templates and assets by file name."""
    loaders: list[jinja2.BaseLoader] = []
    if user is not None:
        user = Path(user)
        if not user.is_dir():
            raise OutputError(f"--templates {user}: no such folder (give a folder of templates)")
        loaders.append(jinja2.FileSystemLoader(str(user)))
    loaders.append(jinja2.FileSystemLoader(str(builtin_templates())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        script_json=script_json,
        percent=percent,
        number=number,
        signed=signed,
    )
    env.globals.update(head_label=head_label, generator=GENERATOR, csp=CSP, version=__version__)
    return env


def asset_source(env: jinja2.Environment, name: str) -> str:
    """An asset's text through the template loader (so users can override it), unrendered."""
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, f"assets/{name}")
    return source


@functools.cache
def vega_bundle() -> str:
    """Vega as one classic script (~580 KB) that sets `window.vega`, built once per process.
    Pages carry compiled Vega specs (`charts.to_vega`) and show their own tooltips, so neither
    the Vega-Lite compiler nor vega-embed is shipped: a third less to load and parse."""
    import vl_convert

    # vl-convert resolves this URL from the sources it embeds: nothing is fetched
    url = f"https://cdn.jsdelivr.net/npm/vega@{vl_convert.get_vega_version()}/+esm"
    snippet = f'import * as vegaModule from "{url}"; window.vega = vegaModule;'
    bundle = str(vl_convert.javascript_bundle(snippet))
    if not re.search(r"window\.vega=\w+;\s*$", bundle) or "=null;window.vega" in bundle:
        raise RuntimeError(f"vl-convert gave no Vega bundle for {url}: upgrade vl-convert-python")
    return bundle


def packed(text: str) -> str:
    """gzip (no timestamp, so deterministic) then base64: how the single file carries the Vega
    bundle and every page's data, which `reportgen.js` inflates with DecompressionStream. It
    keeps the single file about a third of its plain size, and base64 holds no markup."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), 9, mtime=0)).decode("ascii")


@functools.cache
def vega_bundle_packed() -> str:
    return packed(vega_bundle())


# --- links ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Relative links from one page: files in the site, fragments in the single file."""

    names: tuple[str, ...]
    depth: int = 0
    """Folders between the page and the site root (0 for index.html, 1 for examples/)."""
    single: bool = False

    def _root(self) -> str:
        return "../" * self.depth

    def index(self) -> str:
        return "#index" if self.single else f"{self._root()}index.html"

    def about(self) -> str:
        return "#about" if self.single else f"{self._root()}about.html"

    def example(self, i: int) -> str:
        if self.single:
            return f"#example-{i + 1}"
        folder = "" if self.depth == 1 else f"{self._root()}examples/"  # pages are siblings
        return f"{folder}{self.names[i]}.html"

    def asset(self, name: str) -> str:
        return f"{self._root()}assets/{name}"


# --- page contexts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """An input as the index table shows it (from the manifest entry: no arrays loaded)."""

    index: int
    id: str
    name: str
    excerpt: str
    target: str | None
    target_given: bool
    predicted: str | None
    value: float
    top: tuple[int, int]
    top_score: float
    delta_top: float | None
    delta_random: float | None


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _row(index: int, entry: Entry, name: str, top: tuple[int, int], top_score: float) -> Row:
    ablation = entry.ablation
    return Row(
        index=index,
        id=entry.id,
        name=name,
        excerpt=_excerpt(entry.example.text),
        target=entry.target,
        target_given=entry.target_given,
        predicted=entry.predicted,
        value=entry.value,
        top=top,
        top_score=top_score,
        delta_top=None if ablation is None else ablation.delta_top,
        delta_random=None if ablation is None else ablation.delta_random,
    )


@dataclass(frozen=True)
class Page:
    """One page: its route key, file, template, template variables and JSON payload."""

    key: str
    file: str
    template: str
    title: str
    context: Mapping[str, Any]
    data: Mapping[str, Any]


@dataclass
class _Site:
    """Everything shared by the pages of one rendering (small: no score arrays)."""

    run: Run
    settings: Settings
    env: jinja2.Environment
    names: tuple[str, ...]
    title: str
    value_label: str
    method: str

    @classmethod
    def gather(cls, run: Run, settings: Settings) -> _Site:
        env = environment(settings.templates)
        count = len(run)
        names = tuple(page_name(i, id_, count) for i, id_ in enumerate(run.ids))
        info = run.info
        model = info.model.rstrip("/").rsplit("/", 1)[-1] or info.model
        title = settings.title or info.title or f"{model} · {count} input{'s' * (count != 1)}"
        value_label = "cosine" if info.task == "encoder" else "p(target)"
        method = f"{info.method}: {METHODS.get(info.method, '')}".rstrip(": ")
        return cls(run, settings, env, names, title, value_label, method)

    def common(self, links: Links) -> dict[str, Any]:
        info = self.run.info
        return {
            "report_title": self.title,
            "info": info,
            "links": links,
            "value_label": self.value_label,
            "method": self.method,
            "count": len(self.names),
            "keys_as_rows": self.settings.keys_as_rows,
        }


@dataclass(frozen=True)
class _Rows:
    """The index table's rows, made afresh from the manifest on each pass (as the page is
    written), so 10,000 inputs do not mean 10,000 rows in memory."""

    run: Run
    names: tuple[str, ...]
    tops: np.ndarray
    """Each input's top head as a flat index layer * heads + head."""
    top_scores: np.ndarray

    def __iter__(self) -> Iterator[Row]:
        heads = self.run.info.num_heads
        for i, entry in enumerate(self.run.entries):
            top = (int(self.tops[i]) // heads, int(self.tops[i]) % heads)
            yield _row(i, entry, self.names[i], top, float(self.top_scores[i]))


def _index_page(site: _Site) -> Page:
    info = site.run.info
    layers, heads = info.num_layers, info.num_heads
    grids = site.run.head_scores(info.metric)
    count = len(grids)
    mean = grids.mean(axis=0) if count else np.zeros((layers, heads), np.float32)
    flat = grids.reshape(count, layers * heads)
    tops = flat.argmax(axis=1)  # as charts.top_head: the first one on ties
    top_scores = flat[np.arange(count), tops]
    # Little-endian uint32 in base64: 10,000 inputs as Python ints would cost ~50 MB. Made a
    # block at a time, without a float64 copy of every score.
    ranking = np.empty((count, layers * heads), "<u4")
    for start in range(0, count, RANK_BLOCK):
        block = flat[start : start + RANK_BLOCK]
        ranking[start : start + RANK_BLOCK] = np.rint(block.astype(np.float64) * RANK_SCALE)
    del grids, flat
    deltas: list[float] = []
    randoms: list[float] = []
    values: list[float] = []
    for entry in site.run.entries:
        values.append(entry.value)
        if entry.ablation is not None:
            deltas.append(entry.ablation.delta_top)
            randoms.append(entry.ablation.delta_random)
    data = {
        "kind": "index",
        "spec": charts.to_vega(charts.grid_spec(mean)),
        "heads": heads,
        "scale": RANK_SCALE,
        "per_input": layers * heads,
        "scores": base64.b64encode(ranking.data).decode("ascii"),
    }
    context = {
        "rows": _Rows(site.run, site.names, tops, top_scores),
        "top_heads": charts.top_heads(mean, TOP_HEADS_SHOWN) if count else [],
        "mean_delta_top": float(np.mean(deltas)) if deltas else None,
        "mean_delta_random": float(np.mean(randoms)) if randoms else None,
        "mean_value": float(np.mean(values)) if values else None,
    }
    return Page("index", "index.html", "index.html", site.title, context, data)


def _about_page(site: _Site) -> Page:
    info = site.run.info
    context = {
        "parameters": sorted(info.parameters.items()),
        "versions": sorted(info.versions.items()),
    }
    return Page("about", "about.html", "about.html", "About this run", context, {"kind": "about"})


def _example_page(site: _Site, index: int, result: Result) -> Page:
    info, settings = site.run.info, site.settings
    linked = charts.linked_spec(
        result, info.metric, keys_as_rows=settings.keys_as_rows, top_k=settings.top_k
    )
    grid = np.asarray(result.head_scores[linked.metric])
    count = len(site.names)
    neighbour = {
        "prev": (index - 1, site.run.ids[index - 1]) if index > 0 else None,
        "next": (index + 1, site.run.ids[index + 1]) if index + 1 < count else None,
    }
    name = site.names[index]
    context = {
        "index": index,
        "result": result,
        "example": result.example,
        "segments": _segments(result),
        "meta": sorted((str(k), _meta_text(v)) for k, v in result.example.meta.items()),
        "top_heads": charts.top_heads(grid, TOP_HEADS_SHOWN),
        "top": linked.top,
        "packed": linked.packed,
        "ablation": result.ablation,
        "tokens": len(result.tokens),
        **neighbour,
    }
    data = {
        "kind": "example",
        "spec": charts.to_vega(linked.spec),
        "name": name,
        "budget": linked.budget,
    }
    return Page(
        f"example-{index + 1}",
        f"examples/{name}.html",
        "example.html",
        result.example.id,
        context,
        data,
    )


def _segments(result: Result) -> list[tuple[str, str]]:
    return [(s.name, s.text) for s in result.example.segments]


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- rendering ------------------------------------------------------------------------------


def _render(site: _Site, page: Page, links: Links) -> Iterator[str]:
    """The page's HTML in pieces, as the template makes them (written out as they come)."""
    template = site.env.get_template(page.template)
    return template.generate(
        **site.common(links), **page.context, page=page, data=page.data, inline=False
    )


def _render_body(site: _Site, page: Page, links: Links) -> Markup:
    """Only the page's `content` block (for the single file), with the same variables."""
    template = site.env.get_template(page.template)
    context = template.new_context(
        {**site.common(links), **page.context, "page": page, "data": page.data}
    )
    return Markup("".join(template.blocks["content"](context)))


def _site_assets(env: jinja2.Environment) -> dict[str, str]:
    return {
        VEGA_ASSET: vega_bundle(),
        "reportgen.css": asset_source(env, "reportgen.css"),
        "reportgen.js": asset_source(env, "reportgen.js"),
    }


def _write(path: Path, text: str | Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        if isinstance(text, str):
            fh.write(text)
        else:
            fh.writelines(text)


def _pages(site: _Site) -> Iterator[tuple[Page, int]]:
    """Index, about, then one page per input, streamed (yields (page, depth))."""
    yield _index_page(site), 0
    yield _about_page(site), 0
    for i in range(len(site.names)):
        yield _example_page(site, i, site.run.result(i)), 1


def is_site(path: str | Path) -> bool:
    """Whether a folder holds a reportgen site (its index.html names reportgen as generator)."""
    try:
        with open(Path(path) / "index.html", encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return '<meta name="generator" content="reportgen' in head


def render_site(
    run: Run,
    out: Path,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Render the whole site into `out`, atomically; also the single file if settings ask.

    Everything is written into a temporary folder that replaces `out` only when complete, so an
    error or Ctrl-C leaves a previous site as it was."""
    out = Path(out)
    site = _Site.gather(run, settings)
    target = None if settings.single_file is None else Path(settings.single_file)
    single = None if target is None else _SingleFile(site)
    staged: Path | None = None
    try:
        with atomic_dir(out, is_site, settings.force) as tmp:
            for name, text in _site_assets(site.env).items():
                _write(tmp / "assets" / name, text)
            _write(tmp / ".nojekyll", "")
            for page, depth in _pages(site):
                _write(tmp / page.file, _render(site, page, Links(site.names, depth)))
                if single is not None:
                    single.add(page)
                if progress is not None and page.key.startswith("example-"):
                    progress(1)
            if single is not None and target is not None:
                inside = _inside(target, out)
                if inside is not None:  # e.g. site/report.html: it goes in with the site
                    os.replace(single.stage(tmp / inside), tmp / inside)
                else:
                    staged = single.stage(target)
        if staged is not None and target is not None:
            os.replace(staged, target)
            staged = None
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    return out


def _inside(path: Path, folder: Path) -> Path | None:
    """`path` relative to `folder` if it lies inside it, else None."""
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


def render_single_file(run: Run, path: Path, settings: Settings) -> Path:
    """The whole report as one HTML file (bundle, styles, every page's data, a small router),
    written atomically; it works inside `<iframe sandbox="allow-scripts">`."""
    site = _Site.gather(run, settings)
    single = _SingleFile(site)
    for page, _ in _pages(site):
        single.add(page)
    staged = single.stage(Path(path))
    os.replace(staged, path)
    return Path(path)


class _SingleFile:
    """Collects page bodies for the single file, failing early above SINGLE_FILE_LIMIT."""

    def __init__(self, site: _Site) -> None:
        self.site = site
        self.links = Links(site.names, 0, single=True)
        self.sections: list[dict[str, Any]] = []
        self.size = len(vega_bundle_packed())

    def add(self, page: Page) -> None:
        body = _render_body(self.site, page, self.links)
        data = packed(script_json(page.data))
        self.size += len(body) + len(data)
        if self.size > SINGLE_FILE_LIMIT:
            raise OutputError(
                f"the single-file report would exceed {SINGLE_FILE_LIMIT / 2**20:.3g} MiB (at page "
                f"'{page.title}'); use the site folder, fewer inputs, or a smaller --top-k"
            )
        self.sections.append(
            {
                "key": page.key,
                "title": page.title,
                "kind": page.data["kind"],
                "body": body,
                "data": data,
            }
        )

    def stage(self, path: Path) -> Path:
        """Write the file next to `path` under a temporary name; the caller renames it."""
        env = self.site.env
        template = env.get_template("single.html")
        html = template.generate(
            **self.site.common(self.links),
            sections=self.sections,
            data={"kind": "single"},
            page=Page("single", path.name, "single.html", self.site.title, {}, {}),
            inline=True,
            inline_assets={
                "vega": vega_bundle_packed(),
                "js": script_text(asset_source(env, "reportgen.js")),
                "css": style_text(asset_source(env, "reportgen.css")),
            },
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.writelines(html)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)


def iframe_html(path: str | Path, height: int = 900) -> str:
    """An `<iframe sandbox="allow-scripts" srcdoc=...>` showing a single-file report (for
    notebooks); the document is attribute-escaped by markupsafe."""
    html = Path(path).read_text("utf-8")
    return str(
        Markup(
            '<iframe sandbox="allow-scripts" style="width:100%;height:{}px;border:0" '
            'srcdoc="{}"></iframe>'
        ).format(int(height), html)
    )


def save_figure(spec: Mapping[str, Any], path: str | Path) -> Path:
    """Write a figure spec as .svg or .png (2× scale), offline with vl-convert."""
    import vl_convert

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(vl_convert.vegalite_to_svg(dict(spec)), "utf-8")
    elif suffix == ".png":
        path.write_bytes(vl_convert.vegalite_to_png(dict(spec), scale=2))
    else:
        raise OutputError(f"{path}: unknown figure format '{suffix}' (use .svg or .png)")
    return path
