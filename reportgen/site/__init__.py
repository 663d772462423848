"""Site: render a run as a self-contained static HTML site, or as one single HTML file.

    SITE/index.html                  summary, dataset grid, table of every input
    SITE/examples/0001-<slug>.html   a page per input (linked grid + heatmap), or per chosen
                                     input (--pages N, --page-id)
    SITE/about.html                  the run manifest
    SITE/assets/                     vega bundle (once), reportgen.css, reportgen.js,
                                     reportgen-index.js (the index's table)
    SITE/.nojekyll

    html    the Jinja environment, filters, `script_json`, the assets
    pages   typed page contexts gathered from a run
    writer  the site folder, the single file, figures

Pages are Jinja templates (`base.html` inherited by every page; a user folder overrides them by
file name). Each page's data is JSON inside `<script type="application/json">` written through
`script_json`, the one helper that makes JSON safe there. Links are relative, scripts classic
(`<script src>`), and nothing is fetched: the site works from file:// and under any sub-path,
and a Content-Security-Policy forbids network connections.
"""

from reportgen.site.html import (
    CSP,
    environment,
    head_label,
    number,
    packed,
    percent,
    script_json,
    script_text,
    signed,
    vega_bundle,
)
from reportgen.site.pages import Links, SiteContext, page_name, slug
from reportgen.site.writer import (
    SINGLE_FILE_LIMIT,
    iframe_html,
    is_site,
    render_single_file,
    render_site,
    save_figure,
)

__all__ = [
    "CSP",
    "SINGLE_FILE_LIMIT",
    "Links",
    "SiteContext",
    "environment",
    "head_label",
    "iframe_html",
    "is_site",
    "number",
    "packed",
    "page_name",
    "percent",
    "render_single_file",
    "render_site",
    "save_figure",
    "script_json",
    "script_text",
    "signed",
    "slug",
    "vega_bundle",
]
