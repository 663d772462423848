"""Pages: what each template receives, as typed contexts, gathered from a run.

Every page gets the `Common` context; the index, about and example pages add their own
(`IndexContext`, `AboutContext`, `ExampleContext`). A page's JSON payload (`data`) is what its
JavaScript reads: the compiled Vega spec and the names it needs (`charts.page_names`).
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from reportgen import charts
from reportgen.charts import Packed
from reportgen.data.blocks import is_long
from reportgen.data.examples import Example
from reportgen.data.methods import METHODS
from reportgen.data.results import Ablation, Result, layer_deltas
from reportgen.data.stats import (
    HeadTests,
    Interval,
    LayerTests,
    PairedTest,
    bootstrap_mean,
    head_tests,
    layer_tests,
    paired_test,
)
from reportgen.errors import SettingsError
from reportgen.records import Entry, Run, RunInfo
from reportgen.settings import Settings, parse_link
from reportgen.site.html import environment

TOP_HEADS_SHOWN = 5
RELEVANCE_TOKENS_SHOWN = 3
"""Key tokens per layer in the rollout chart's text alternative."""
EXCERPT = 90
RANK_SCALE = 65_535
"""Per-input head scores (shares, at most 1) are embedded in the index as little-endian uint16
integers, round(score × RANK_SCALE): a resolution of 1.5e-5 (the table shows 0.1%) in half
the bytes of uint32; the scores are most of a large index's weight."""
RANK_DTYPE = "<u2"
RANK_BLOCK = 1024
"""Inputs whose scores are scaled at a time (so there is no float64 copy of them all)."""
FALLBACK_ROWS = 100
"""Rows of the index table written into the HTML (what a browser without JavaScript shows);
the page's script draws the whole table, paged, from the page's data."""
SINGLE_FILE_PAGES = 100
"""Per-input pages the single file holds at most (the site's first ones in page order: named
ids, then the largest ablation effect); its index lists every input."""

TopHeads = list[tuple[int, int, float]]
"""(layer, head, score), 0-based, strongest first."""

EFFECT_LABELS = {
    "logprob": "log p(target)",
    "prob": "p(target)",
    "logit-diff": "logit(target) − logit(contrast)",
    "cosine": "cosine",
}
INTERVENTION_LABELS = {
    "zero": "zeroed",
    "mean": "mean-ablated (each head's output replaced by its mean over all tokens of all inputs)",
    "resample": "resample-ablated (each head's output replaced by its output at the same position "
    "on another input)",
}


@dataclass(frozen=True)
class Evidence:
    """The dataset's ablation evidence, from the entries: the top-k heads against k random
    heads as a paired test over inputs, and the flow knockout against no change; with
    --ablate-layers, each layer's ablation (and flow knockout) against no change, BH-corrected
    over the layers."""

    intervention: str
    effect: str
    effect_label: str
    k: int
    draws: int
    mean_delta_top: float
    mean_delta_random: float
    test: PairedTest
    """d_i = Δ top-k − Δ random (mean over the draws); negative: the top heads matter more."""
    knockout: PairedTest | None
    """d_i = Δ knockout (against 0), where the run has a flow metric."""
    knockout_flow: str | None
    """`SRC→DST`."""
    seed: int
    layers: LayerTests | None = None
    """Per layer, every head of the layer ablated (the same intervention) against no change."""
    layer_knockouts: LayerTests | None = None
    """Per layer, the flow knocked out in every head of the layer against no change."""


def evidence(run: Run) -> Evidence | None:
    """The dataset test of a run's ablations (None without any); seeded by the run's --seed."""
    tops, randoms, knocks = [], [], []
    ablations: list[Ablation] = []
    first: Ablation | None = None
    for entry in run.entries:
        a = entry.ablation
        if a is None:
            continue
        first = first or a
        ablations.append(a)
        tops.append(a.delta_top)
        randoms.append(a.delta_random)
        if a.delta_knockout is not None:
            knocks.append(a.delta_knockout)
    if first is None:
        return None
    seed = int(run.info.parameters.get("seed") or 0)
    knock = first.knockout
    by_layer = [layer_tests(deltas) for _, deltas in layer_deltas(ablations)]
    return Evidence(
        intervention=first.intervention,
        effect=first.effect,
        effect_label=EFFECT_LABELS.get(first.effect, first.effect),
        k=len(first.heads),
        draws=first.draws,
        mean_delta_top=float(np.mean(tops)),
        mean_delta_random=float(np.mean(randoms)),
        test=paired_test(tops, randoms, seed),
        knockout=paired_test(knocks, [0.0] * len(knocks), seed) if knocks else None,
        knockout_flow=None if knock is None else f"{knock.src}→{knock.dst}",
        seed=seed,
        layers=by_layer[0] if by_layer else None,
        layer_knockouts=by_layer[1] if len(by_layer) > 1 else None,
    )


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


# --- links ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Relative links from one page: files in the site, fragments in the single file."""

    names: tuple[str, ...]
    depth: int = 0
    """Folders between the page and the site root (0 for index.html, 1 for examples/)."""
    single: bool = False
    pages: frozenset[int] | None = None
    """The inputs (0-based) that have a page here; None: every input."""

    def has(self, i: int) -> bool:
        """Whether input `i` has a page to link to."""
        return self.pages is None or i in self.pages

    @functools.cached_property
    def _sorted(self) -> tuple[int, ...]:
        return tuple(sorted(self.pages if self.pages is not None else range(len(self.names))))

    def in_order(self) -> tuple[int, ...]:
        """The inputs with a page here, in input order."""
        return self._sorted

    def page_count(self) -> int:
        """How many inputs have a page here."""
        return len(self.names) if self.pages is None else len(self.pages)

    def _root(self) -> str:
        return "../" * self.depth

    def index(self) -> str:
        return "#index" if self.single else f"{self._root()}index.html"

    def site(self, url: str) -> str | None:
        """A `--link` target from this page: an http(s) address as it is, a path in the site
        relative to this page (None in the single file, which has no site around it)."""
        if url.split("/", 1)[0].endswith(":"):  # https://… (parse_link allows no other scheme)
            return url
        return None if self.single else f"{self._root()}{url}"

    def about(self) -> str:
        return "#about" if self.single else f"{self._root()}about.html"

    def example(self, i: int) -> str:
        if self.single:
            return f"#example-{i + 1}"
        folder = "" if self.depth == 1 else f"{self._root()}examples/"  # pages are siblings
        return f"{folder}{self.names[i]}.html"

    def asset(self, name: str) -> str:
        return f"{self._root()}assets/{name}"


# --- contexts -------------------------------------------------------------------------------


class Context:
    """A template context: its fields are the template's variables."""

    def variables(self) -> dict[str, Any]:
        """The fields by name (shallow: no copies of what they hold)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Common(Context):
    """What every page receives."""

    report_title: str
    info: RunInfo
    """The run's description (model, method, metric, parameters, versions)."""
    links: Links
    value_label: str
    """What an input's value is: `p(target)`, or `cosine` for a bare encoder."""
    method: str
    """The method's name and one-line description."""
    metric: str
    """The metric the grids show (the run's, or the one `render --metric` asked for)."""
    count: int
    """Number of inputs."""
    keys_as_rows: bool
    evidence: Evidence | None
    """The dataset's ablation test (index and about pages show it)."""
    intervention_labels: Mapping[str, str]
    """How each intervention reads in a sentence ("mean-ablated (...)")."""
    effect_labels: Mapping[str, str]
    """Each effect measure's name on the page ("log p(target)")."""
    site_links: tuple[tuple[str, str], ...] = ()
    """The navigation's extra links (`--link`), (text, url): `links.site(url)` places them."""


@dataclass(frozen=True)
class Row:
    """An input as the index table shows it (from its entry: no arrays loaded)."""

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


@dataclass(frozen=True)
class Rows:
    """The index table's first FALLBACK_ROWS rows (what the HTML holds for a browser without
    JavaScript; the script draws every row from the page's data), made afresh from the entries
    on each pass, as the page is written."""

    run: Run
    names: tuple[str, ...]
    tops: np.ndarray
    """Each input's top head as a flat index layer * heads + head."""
    top_scores: np.ndarray
    limit: int = FALLBACK_ROWS

    def __len__(self) -> int:
        return min(self.limit, len(self.run))

    def __iter__(self) -> Iterator[Row]:
        heads = self.run.info.num_heads
        for i, entry in enumerate(self.run.entries[: self.limit]):
            top = (int(self.tops[i]) // heads, int(self.tops[i]) % heads)
            yield _row(i, entry, self.names[i], top, float(self.top_scores[i]))


@dataclass(frozen=True)
class IndexContext(Context):
    """The index page: the dataset grid's strongest heads, the ablation means, the inputs."""

    rows: Rows
    top_heads: TopHeads
    head_intervals: list[tuple[float, float]]
    """Each of `top_heads`' bootstrap confidence interval of its mean share (low, high)."""
    interval: Interval | None
    heads_tested: HeadTests | None
    """Per head, share above the uniform share over the inputs (sign test, BH)."""
    mean_delta_top: float | None
    mean_delta_random: float | None
    mean_value: float | None
    site_pages: int
    """How many inputs have a page in the site (the single file may hold fewer)."""
    page_choice: str
    """How the inputs with pages were chosen, as a sentence (empty: every input has one)."""


@dataclass(frozen=True)
class AboutContext(Context):
    """The about page: the run's parameters and versions, sorted by name."""

    parameters: list[tuple[str, Any]]
    versions: list[tuple[str, str]]


@dataclass(frozen=True)
class TextPiece:
    """A run of an input's text as the model read it: as is, or (`token` set) a word it did
    not know and read as that unknown token instead (the page shows the token, the word
    struck through)."""

    text: str
    token: str | None = None


def text_pieces(result: Result) -> list[tuple[str, tuple[TextPiece, ...]]]:
    """(name, pieces) of each segment of the input: its text cut around the words the model
    read as its unknown token."""
    text = result.example.text
    unknown = sorted((u for u in result.unknown if u.end > u.start), key=lambda u: u.start)
    out = []
    for name, start, end in result.example.char_spans():
        pieces, at = [], start
        for u in unknown:
            if u.start < at or u.end > end:  # another segment's, or overlapping the last
                continue
            if u.start > at:
                pieces.append(TextPiece(text[at : u.start]))
            pieces.append(TextPiece(u.text, result.tokens[u.position]))
            at = u.end
        if at < end or not pieces:
            pieces.append(TextPiece(text[at:end]))
        out.append((name, tuple(pieces)))
    return out


@dataclass(frozen=True)
class ExampleContext(Context):
    """An input's page: its result, the linked chart's facts, and its neighbours."""

    index: int
    result: Result
    example: Example
    segments: list[tuple[str, tuple[TextPiece, ...]]]
    """(name, pieces of its text) of each segment: pieces the model read as its unknown
    token are marked (`text_pieces`)."""
    meta: list[tuple[str, str]]
    """The input's metadata as (key, text), sorted by key."""
    top_heads: TopHeads
    top: tuple[int, int]
    """The head selected when the page opens, 0-based."""
    packed: Packed
    ablation: Ablation | None
    tokens: int
    overview: charts.Overview | None
    """A long input's zoomable overview (its facts; its data is in the page's `data.long`),
    or None: the heatmap of the linked chart, as for short inputs."""
    blocks_missing: bool
    """A long input from a run without block sums (older reportgen): the page says so."""
    prev: tuple[int, str] | None
    """(index, id) of the previous input that has a page, if any."""
    next: tuple[int, str] | None
    signed_method: bool
    """The method's scores carry a sign: the heatmap shows them (a toggle shows magnitudes)."""
    relevance_strongest: list[list[tuple[str, float]]] | None
    """The rollout chart as text: each layer's strongest key tokens (label, share of the
    layer's relevance), or None without a rollout."""
    pair_flow_table: tuple[list[str], list[list[float | None]]] | None
    """Wang et al.'s per-layer flow as text: the curves' labels and each layer's values, or
    None without it."""


def token_label(result: Result, position: int) -> str:
    """`token (position)` as the model read it; an unknown token adds the word it replaced, as
    the page's script labels the cells of its text alternative (`tokenLabel` in reportgen.js)."""
    token = result.tokens[position]
    word = next((u.text for u in result.unknown if u.position == position), None)
    shown = token if word is None else f"{token} for “{word}” (not in the vocabulary)"
    return f"{shown} ({position})"


@dataclass(frozen=True)
class Page:
    """One page: its route key, file, template, title, context and JSON payload."""

    key: str
    file: str
    template: str
    title: str
    context: Context | None
    data: Mapping[str, Any]

    def payload(self, links: Links) -> Mapping[str, Any]:
        """The page's JSON data as rendered with `links`: the index adds each input's page
        link (`hrefs`, null for an input without a page there), so the script links nothing
        of its own making."""
        if self.data.get("kind") != "index":
            return self.data
        hrefs = [links.example(i) if links.has(i) else None for i in range(len(links.names))]
        return {**self.data, "hrefs": hrefs}


# --- which inputs get pages -----------------------------------------------------------------


@dataclass(frozen=True)
class PageChoice:
    """The inputs that get a page: `order` lists them by priority (named ids in the order
    given, then by largest |Δ top-k|, ties in input order), `chosen` as a set."""

    order: tuple[int, ...]
    named: int
    """How many of `order` (its first) were named by id."""
    by_effect: int | None
    """--pages N, if given."""

    @property
    def chosen(self) -> frozenset[int]:
        return frozenset(self.order)


def effect_order(run: Run) -> list[int]:
    """Every input by decreasing |Δ top-k| (its ablation's change with its top heads ablated),
    ties in input order; inputs without an ablation last, in input order."""
    keyed = []
    for i, entry in enumerate(run.entries):
        a = entry.ablation
        magnitude = abs(a.delta_top) if a is not None and np.isfinite(a.delta_top) else -1.0
        keyed.append((-magnitude, i))
    return [i for _, i in sorted(keyed)]


def choose_pages(run: Run, settings: Settings) -> PageChoice:
    """Which inputs get a page under `settings.pages` and `settings.page_ids` (see Settings)."""
    count = len(run)
    where = {id_: i for i, id_ in enumerate(run.ids)}
    named: list[int] = []
    for id_ in settings.page_ids:
        if id_ not in where:
            shown = ", ".join(repr(x) for x in run.ids[:3]) + (", …" if count > 3 else "")
            raise SettingsError(
                f"--page-id {id_!r}: no input of the run has this id (ids are like {shown}); "
                "give the id as the inputs name it"
            )
        if where[id_] not in named:
            named.append(where[id_])
    if settings.pages is None:
        if not settings.page_ids:
            return PageChoice(tuple(named + effect_order(run)), 0, None)
        return PageChoice(tuple(named), len(named), None)
    if settings.pages > 0 and count and all(e.ablation is None for e in run.entries):
        raise SettingsError(
            f"--pages {settings.pages} picks the inputs with the largest ablation effect, and "
            "this run has no ablation (computed with --ablate-k 0): name inputs with --page-id, "
            "or compute the run with --ablate-k 1 or more"
        )
    taken = set(named)
    rest = [i for i in effect_order(run) if i not in taken][: settings.pages]
    return PageChoice(tuple(named + rest), len(named), settings.pages)


def choice_sentence(choice: PageChoice, count: int) -> str:
    """How the inputs with pages were chosen, for the index (empty when all have one)."""
    if len(choice.order) == count:
        return ""
    parts = []
    if choice.by_effect is not None:
        parts.append(f"the {choice.by_effect} with the largest |Δ top-k| (--pages)")
    if choice.named:
        parts.append(f"{choice.named} named with --page-id")
    return " and ".join(parts)


def neighbours(index: int, links: Links) -> tuple[int | None, int | None]:
    """The previous and next inputs that have a page under `links` (None at either end)."""
    if links.pages is None:
        count = len(links.names)
        return (index - 1 if index > 0 else None), (index + 1 if index + 1 < count else None)
    order = links.in_order()
    at = bisect.bisect_left(order, index)
    after = at + 1 if at < len(order) and order[at] == index else at
    return (order[at - 1] if at > 0 else None), (order[after] if after < len(order) else None)


# --- gathering ------------------------------------------------------------------------------


@dataclass
class SiteContext:
    """Everything shared by the pages of one rendering (small: no score arrays)."""

    run: Run
    settings: Settings
    env: Any
    """The Jinja environment."""
    names: tuple[str, ...]
    """Every input's page name."""
    title: str
    value_label: str
    method: str
    metric: str
    evidence: Evidence | None
    choice: PageChoice
    """The inputs that get a page in the site."""
    _links: dict[int, Links] = field(default_factory=dict, repr=False)

    @classmethod
    def gather(cls, run: Run, settings: Settings) -> SiteContext:
        env = environment(settings.templates)
        count = len(run)
        names = tuple(page_name(i, id_, count) for i, id_ in enumerate(run.ids))
        info = run.info
        model = info.model.rstrip("/").rsplit("/", 1)[-1] or info.model
        title = settings.title or info.title or f"{model} · {count} input{'s' * (count != 1)}"
        value_label = "cosine" if info.task == "encoder" else "p(target)"
        known = METHODS.get(info.method)
        method = f"{info.method}: {known.summary}" if known else info.method
        metric = str(settings.report_metric or info.metric)
        found = evidence(run)
        choice = choose_pages(run, settings)
        return cls(run, settings, env, names, title, value_label, method, metric, found, choice)

    def links(self, depth: int) -> Links:
        """Links from a page of the site `depth` folders down (made once per depth)."""
        if depth not in self._links:
            every = len(self.choice.order) == len(self.names)
            pages = None if every else self.choice.chosen
            self._links[depth] = Links(self.names, depth, pages=pages)
        return self._links[depth]

    def single_links(self) -> Links:
        """Links in the single file: pages for at most SINGLE_FILE_PAGES inputs, the first in
        page order."""
        order = self.choice.order[:SINGLE_FILE_PAGES]
        every = len(order) == len(self.names)
        return Links(self.names, 0, single=True, pages=None if every else frozenset(order))

    def common(self, links: Links) -> Common:
        return Common(
            report_title=self.title,
            info=self.run.info,
            links=links,
            value_label=self.value_label,
            method=self.method,
            metric=self.metric,
            count=len(self.names),
            keys_as_rows=self.settings.keys_as_rows,
            evidence=self.evidence,
            intervention_labels=INTERVENTION_LABELS,
            effect_labels=EFFECT_LABELS,
            site_links=tuple(parse_link(link) for link in self.settings.links),
        )


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


def top_share(flat: np.ndarray, n: int) -> np.ndarray:
    """Per head (columns of `flat`, [inputs, heads]), the share of inputs (rows) that have it
    among their `n` highest scores (ties: the lower head index first, as a stable sort gives),
    made a block of inputs at a time."""
    count, width = flat.shape
    n = min(n, width)
    hits = np.zeros(width, np.int64)
    for start in range(0, count, RANK_BLOCK):
        block = np.asarray(flat[start : start + RANK_BLOCK], np.float64)
        best = np.argsort(-block, axis=1, kind="stable")[:, :n]
        hits += np.bincount(best.ravel(), minlength=width)
    return hits / count if count else hits.astype(np.float64)


def index_table(
    run: Run, tops: np.ndarray, top_scores: np.ndarray
) -> tuple[dict[str, list[Any]], list[float], list[float], list[float]]:
    """The index table's columns, one list per column over every input (what the page's
    script sorts, filters and pages), and the values, Δ top-k and Δ random of the inputs."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "id", "text", "target", "given", "predicted", "value", "top", "top_score",
            "delta_top", "delta_random",
        )
    }  # fmt: skip
    deltas: list[float] = []
    randoms: list[float] = []
    values: list[float] = []
    for i, entry in enumerate(run.entries):
        a = entry.ablation
        values.append(entry.value)
        if a is not None:
            deltas.append(a.delta_top)
            randoms.append(a.delta_random)
        columns["id"].append(entry.id)
        columns["text"].append(_excerpt(entry.example.text))
        columns["target"].append(entry.target)
        columns["given"].append(1 if entry.target_given else 0)
        columns["predicted"].append(entry.predicted)
        columns["value"].append(_short(entry.value))
        columns["top"].append(int(tops[i]))
        columns["top_score"].append(_short(float(top_scores[i])))
        columns["delta_top"].append(None if a is None else _short(a.delta_top))
        columns["delta_random"].append(None if a is None else _short(a.delta_random))
    return columns, values, deltas, randoms


def _short(x: float) -> float | None:
    """A number as the page's data holds it: exact (rounding would tie inputs the table must
    sort apart), None if not finite."""
    return float(x) if np.isfinite(x) else None


def index_page(site: SiteContext) -> Page:
    info = site.run.info
    layers, heads = info.num_layers, info.num_heads
    grids = site.run.head_scores(site.metric)
    count = len(grids)
    empty = np.zeros((layers, heads), np.float64)
    mean = grids.mean(axis=0) if count else empty
    seed = int(info.parameters.get("seed") or 0)
    interval = bootstrap_mean(grids, seed) if count else None
    tested = head_tests(grids) if count else None
    flat = grids.reshape(count, layers * heads)
    tops = flat.argmax(axis=1)  # as charts.top_head: the first one on ties
    top_scores = flat[np.arange(count), tops]
    top = top_share(flat, charts.TOP_N).reshape(layers, heads)
    sd = grids.std(axis=0, dtype=np.float64) if count else empty
    # Little-endian uint16 in base64: 10,000 inputs as Python ints would cost ~50 MB. Made a
    # block at a time, without a float64 copy of every score.
    ranking = np.empty((count, layers * heads), RANK_DTYPE)
    for start in range(0, count, RANK_BLOCK):
        block = flat[start : start + RANK_BLOCK]
        ranking[start : start + RANK_BLOCK] = np.rint(block.astype(np.float64) * RANK_SCALE)
    del flat
    columns, values, deltas, randoms = index_table(site.run, tops, top_scores)
    del grids
    low = empty if interval is None else interval.low
    high = empty if interval is None else interval.high
    data = {
        "kind": "index",
        "spec": charts.to_vega(charts.dataset_grid_spec(mean, low, high, sd, top)),
        "names": charts.index_names(),
        "layers": layers,
        "heads": heads,
        "scale": RANK_SCALE,
        "per_input": layers * heads,
        "scores": base64.b64encode(ranking.data).decode("ascii"),
        "rows": columns,
        "top_n": charts.TOP_N,
    }
    top_heads = charts.top_heads(mean, TOP_HEADS_SHOWN) if count else []
    intervals = (
        []
        if interval is None
        else [(float(interval.low[a, b]), float(interval.high[a, b])) for a, b, _ in top_heads]
    )
    context = IndexContext(
        rows=Rows(site.run, site.names, tops, top_scores),
        top_heads=top_heads,
        head_intervals=intervals,
        interval=interval,
        heads_tested=tested,
        mean_delta_top=float(np.mean(deltas)) if deltas else None,
        mean_delta_random=float(np.mean(randoms)) if randoms else None,
        mean_value=float(np.mean(values)) if values else None,
        site_pages=len(site.choice.order),
        page_choice=choice_sentence(site.choice, count),
    )
    return Page("index", "index.html", "index.html", site.title, context, data)


def about_page(site: SiteContext) -> Page:
    info = site.run.info
    context = AboutContext(
        parameters=sorted(info.parameters.items()), versions=sorted(info.versions.items())
    )
    return Page("about", "about.html", "about.html", "About this run", context, {"kind": "about"})


def example_page(site: SiteContext, index: int, result: Result) -> Page:
    settings = site.settings
    if settings.top_k is not None and settings.top_k > result.stats.k:
        raise SettingsError(
            f"--top-k {settings.top_k}: the run stores {result.stats.k} cells per head (input "
            f"'{result.example.id}'); compute it again with --top-k {settings.top_k}"
        )
    tokens = len(result.tokens)
    has_blocks = result.stats.blocks is not None
    overview = charts.pack_overview(result, settings.top_k) if has_blocks else None
    known = METHODS.get(site.run.info.method)
    # a signed method's heatmap shows the signs (a long input's overview shows magnitudes)
    signed = bool(known and known.signed) and overview is None
    linked = charts.linked_spec(
        result,
        site.metric,
        keys_as_rows=settings.keys_as_rows,
        top_k=settings.top_k,
        heat=overview is None,
        signed=signed,
    )
    grid = np.asarray(result.head_scores(linked.metric))
    name = site.names[index]
    before, after = neighbours(index, site.links(1))
    context = ExampleContext(
        index=index,
        result=result,
        example=result.example,
        segments=text_pieces(result),
        meta=sorted((str(k), _meta_text(v)) for k, v in result.example.meta.items()),
        top_heads=charts.top_heads(grid, TOP_HEADS_SHOWN),
        top=linked.top,
        packed=linked.packed,
        ablation=result.ablation,
        tokens=tokens,
        overview=overview,
        blocks_missing=is_long(tokens) and not has_blocks,
        prev=_neighbour(site, before),
        next=_neighbour(site, after),
        signed_method=signed,
        relevance_strongest=None
        if result.relevance is None
        else [
            [(token_label(result, j), share) for j, share in layer]
            for layer in charts.relevance_strongest(result.relevance, RELEVANCE_TOKENS_SHOWN)
        ],
        pair_flow_table=None
        if result.pairs is None
        else charts.pair_flow_table(result.pairs, linked.metric),
    )
    vega = charts.to_vega(linked.spec)
    data: dict[str, Any] = {
        "kind": "example",
        "spec": charts.symmetric_signed_domain(vega) if signed else vega,
        "names": charts.page_names(),
        "name": name,
        "budget": linked.budget,
    }
    if result.unknown:  # [position, word]: the tooltips, the strip and the table add the word
        data["unknown"] = [[u.position, u.text] for u in result.unknown]
    if overview is not None:
        data["long"] = {
            **overview.data,
            "keys_as_rows": settings.keys_as_rows,
            "titles": {"query": charts.QUERY_TITLE, "key": charts.KEY_TITLE},
            "outline": charts.OUTLINE,
        }
    return Page(
        f"example-{index + 1}",
        f"examples/{name}.html",
        "example.html",
        result.example.id,
        context,
        data,
    )


def _neighbour(site: SiteContext, index: int | None) -> tuple[int, str] | None:
    return None if index is None else (index, site.run.ids[index])


def with_neighbours(page: Page, site: SiteContext, links: Links) -> Page:
    """An input's page with its previous and next links among the inputs `links` has pages
    for (the single file holds fewer than the site)."""
    context = page.context
    if not isinstance(context, ExampleContext):
        return page
    before, after = neighbours(context.index, links)
    moved = replace(context, prev=_neighbour(site, before), next=_neighbour(site, after))
    return replace(page, context=moved)


def pages(site: SiteContext) -> Iterator[tuple[Page, int]]:
    """Index, about, then the page of each input that has one (in input order), streamed
    (yields (page, depth))."""
    yield index_page(site), 0
    yield about_page(site), 0
    for i in sorted(site.choice.chosen):
        yield example_page(site, i, site.run.result(i)), 1


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
