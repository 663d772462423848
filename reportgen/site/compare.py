"""The comparison site: one page comparing models' head scores, each model's own report in a
sub-folder (`reportgen.comparison` describes the layout). Same machinery as a run's site: the
staged update and its record of files, the Jinja environment (autoescape, strict), JSON
through `script_json`, classic scripts from the site's assets, the same CSP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reportgen import charts
from reportgen.charts import compare as views
from reportgen.errors import SettingsError
from reportgen.fsutil import check_single_file
from reportgen.settings import Settings
from reportgen.site.pages import Context, Evidence, Links, Page, SiteContext, evidence
from reportgen.site.writer import (
    SINGLE_FILE_MARKER,
    _site_assets,
    _write,
    content_block,
    render_site,
    single_section,
    site_update,
    stage_single_file,
)

if TYPE_CHECKING:
    from reportgen.comparison import Member

TOP_SHOWN = 3
ALT_TOP = 10
"""Units in the text alternative's table of the strongest."""
MODELS_FOLDER = "models"
"""Where each model's own report goes inside the comparison site."""


@dataclass(frozen=True)
class ModelRow:
    """A compared model as the page's table shows it."""

    label: str
    link: str | None
    """Its own report's index page, relative to the comparison page (None in the single
    file, which holds the comparison page only)."""
    model: str
    weights_sha256: str
    shape: tuple[int, int]
    """(layers, heads)."""
    mean_value: float | None
    top: list[tuple[str, float]]
    """Its strongest units (label, mean score), strongest first."""
    reused: bool
    gain: float | None = None
    """Its mean grounding information gain (nats), if computed."""
    evidence: Evidence | None = None
    """Its own top-k heads ablated against k random heads, over the inputs (None: no
    ablation in its run)."""


@dataclass(frozen=True)
class CompareContext(Context):
    """The comparison page: the models, the units compared, what the charts show."""

    models: list[ModelRow]
    layer_level: bool
    """Whether the models' layer × head shapes differ (compared per layer, summed over heads)."""
    shapes: list[tuple[str, int, int]]
    """(label, layers, heads) of each model, for the note when they differ."""
    first: str
    last: str
    final_top: list[tuple[str, float]]
    counterfactual: str | None = None
    """What the information gain compares each input with (None: not computed)."""
    ablation: Evidence | None = None
    """The last model's ablation evidence, for the intervention, effect and k the table
    names (None: no model ablated)."""
    single: bool = False
    """The single file: the comparison page alone, without the models' own reports."""
    token_input: str | None = None
    """The input whose token heatmaps the page draws per checkpoint (None: none drawn)."""
    token_reason: str | None = None
    """Why no token heatmaps are drawn, when they are not."""
    token_cells: int = views.TOKEN_CELLS
    """Cells kept per head and checkpoint for them."""
    alt_top: list[tuple[str, list[float | None]]] = field(default_factory=list)
    """The text alternative: the last model's strongest units (label, mean share in each
    model, None where a model lacks the unit), strongest first."""


def comparison_page(
    members: Sequence[Member],
    metric: str,
    value_label: str,
    counterfactual: str | None = None,
    token_input: int = 0,
    keys_as_rows: bool = False,
) -> tuple[Page, Callable[[], Page]]:
    """The page (context and data) comparing `members` under `metric`, and a function making
    it as the single file holds it (no links to the models' own reports, which only the site
    folder has) from the same numbers; `counterfactual` describes what the members'
    information gains compare with. The token heatmaps are of input `token_input` (0-based),
    keys as rows if `keys_as_rows`."""
    shapes = [(m.model.label, m.run.info.num_layers, m.run.info.num_heads) for m in members]
    layer_level = len({s[1:] for s in shapes}) > 1
    ablated = [
        [(e.ablation.delta_top, e.ablation.delta_random) for e in m.run.entries if e.ablation]
        for m in members
    ]
    trend = views.trends(
        [m.model.label for m in members],
        [m.run.head_scores(metric) for m in members],
        [[e.value for e in m.run.entries] for m in members],
        layer_level=layer_level,
        gains=[[g.gain for g in m.gains or ()] for m in members] if counterfactual else (),
        ablations=ablated,
    )
    evidences = [evidence(m.run) for m in members]
    tokens, reason = token_view(members, token_input, keys_as_rows, layer_level)
    shown = next((e for e in reversed(evidences) if e is not None), None)
    rows = []
    for c, m in enumerate(members):
        grid = trend.mean[c]
        units = [
            (views.unit_label(ly, h, layer_level), float(grid[ly, h]))
            for ly in range(grid.shape[0])
            for h in range(grid.shape[1])
            if not np.isnan(grid[ly, h])
        ]
        units.sort(key=lambda u: -u[1])  # stable: ties keep layer, head order
        rows.append(
            ModelRow(
                label=m.model.label,
                link=f"{MODELS_FOLDER}/{m.folder}/index.html",
                model=m.run.info.model,
                weights_sha256=m.run.info.weights_sha256,
                shape=(m.run.info.num_layers, m.run.info.num_heads),
                mean_value=trend.values[c],
                top=units[:TOP_SHOWN],
                reused=m.reused,
                gain=_gain_mean(trend, c),
                evidence=evidences[c],
            )
        )
    context = CompareContext(
        models=rows,
        layer_level=layer_level,
        shapes=shapes,
        first=members[0].model.label,
        last=members[-1].model.label,
        final_top=rows[-1].top,
        counterfactual=counterfactual,
        ablation=shown,
        token_input=None if tokens is None else tokens.id,
        token_reason=reason,
        alt_top=[
            (
                views.unit_label(ly, h, layer_level),
                [None if np.isnan(v) else float(v) for v in trend.mean[:, ly, h]],
            )
            for ly, h in views.order(trend)[:ALT_TOP]
        ],
    )
    effect, k = (shown.effect_label, shown.k) if shown is not None else ("", 0)

    def page(links: Sequence[str], shown_context: CompareContext) -> Page:
        data = {
            "kind": "compare",
            "spec": charts.to_vega(
                views.compare_spec(trend, value_label, links, effect, k, token_view=tokens)
            ),
            "names": views.compare_names(gain=bool(trend.gains), ablation=bool(trend.ablations)),
        }
        return Page("index", "index.html", "compare.html", "Comparison", shown_context, data)

    def single() -> Page:
        unlinked = [replace(r, link=None) for r in rows]
        return page((), replace(context, models=unlinked, single=True))

    return page([r.link for r in rows if r.link is not None], context), single


def token_view(
    members: Sequence[Member], index: int, keys_as_rows: bool, layer_level: bool
) -> tuple[views.TokenView | None, str | None]:
    """Input `index`'s strongest cells in every model, for the page's token heatmaps, or
    None and the reason they are not drawn."""
    if not members[0].run.entries:
        return None, "there are no inputs"
    if layer_level:
        return None, "the models differ in layers × heads, so they are compared per layer"
    entry = members[0].run.entries[index]
    if len(entry.tokens) > views.TOKEN_MAX:
        return None, (
            f"input '{entry.id}' has {len(entry.tokens)} tokens, more than the "
            f"{views.TOKEN_MAX} this page draws per checkpoint"
        )
    cells = []
    for m in members:
        stats = m.run.result(index).stats
        cells.append(views.TokenCells(stats.top_cells, stats.top_values, stats.total))
    rows = views.token_rows(cells, len(entry.tokens))
    return views.TokenView(entry.id, tuple(entry.tokens), rows, keys_as_rows), None


def _gain_mean(trend: views.Trends, c: int) -> float | None:
    gain = trend.gains[c] if trend.gains else None
    return None if gain is None else gain[0]


def render_comparison(
    members: Sequence[Member],
    out: Path,
    settings: Settings,
    counterfactual: str | None = None,
    heat_input: str | None = None,
) -> Path:
    """Write the comparison site into `out` (a staged update: all of it or nothing), and with
    `settings.single_file` the comparison page as one file too (inside `out`, written with
    the site; elsewhere, moved into place after it); `counterfactual` describes what the
    members' information gains compare with; `heat_input` is the id of the input drawn as
    token heatmaps per checkpoint (None: the first)."""
    target = settings.single_file
    if target is not None:
        check_single_file(target, settings.force, out, SINGLE_FILE_MARKER)
    last = members[-1].run
    own_site = SiteContext.gather(last, replace(settings, links=()))
    env, metric = own_site.env, own_site.metric
    value_label = own_site.value_label
    count = len(last)
    title = settings.title or (
        f"{len(members)} models compared · {count} input{'s' * (count != 1)}"
    )
    ids = [e.id for e in last.entries]
    if heat_input is not None and heat_input not in ids:
        raise SettingsError(
            f"--heat-input '{heat_input}': no input has that id (give one of the inputs' ids)"
        )
    chosen = 0 if heat_input is None else ids.index(heat_input)
    page, single_page = comparison_page(
        members, metric, value_label, counterfactual, chosen, settings.keys_as_rows
    )
    # the last model's page variables, but this page's title and no single run's evidence
    common = replace(own_site.common(Links((), 0)), report_title=title, evidence=None)
    with site_update(out, settings) as (tmp, place_single):
        for name, text in _site_assets(env).items():
            _write(tmp / "assets" / name, text)
        _write(tmp / ".nojekyll", "")
        for m in members:
            own = replace(
                settings,
                single_file=None,
                force=False,
                links=(),  # relative to the comparison, not to each model's report
                title=f"{m.model.label} · {count} input{'s' * (count != 1)}",
            )
            render_site(m.run, tmp / MODELS_FOLDER / m.folder, own)
        template = env.get_template(page.template)
        html = template.generate(**_page_variables(common, page), inline=False)
        _write(tmp / page.file, html)
        if target is not None:
            one = single_page()
            shared = replace(common, links=Links((), 0, single=True))
            body = content_block(env, one, _page_variables(shared, one))
            sections = [single_section("index", one, body, one.data)]
            place_single(
                lambda path: stage_single_file(env, shared.variables(), sections, title, path)
            )
    return out


def _page_variables(common: Context, page: Page) -> dict[str, Any]:
    return {
        **common.variables(),
        **(page.context.variables() if page.context is not None else {}),
        "page": page,
        "data": page.data,
    }
