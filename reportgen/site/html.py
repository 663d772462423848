"""The HTML environment: Jinja with autoescape and strict undefined names, the filters pages
use, the one helper that puts JSON inside `<script>`, the Content-Security-Policy of pages, and
the assets (the Vega bundle built once per process).

A user folder (`--templates`) overrides any built-in template or asset by file name.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from reportgen import __version__
from reportgen.errors import OutputError

GENERATOR = f"reportgen {__version__}"
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)
"""Site pages: scripts only from the site's own files, so no inline script or handler runs
(injected markup can run nothing); styles from the site, plus inline style attributes (the head
bars' widths); images from the site or made by the page (PNG/SVG export); no connections.
'unsafe-eval' stays because Vega compiles its expressions (all ours) with `Function`: its
CSP-safe vega-interpreter bundles offline, but pages running it miss the click and brush
budgets at T = 512 (measured by `python -m benchmarks.csp`). Eval is reachable only from a
script already running, and none but the site's own can run."""
VEGA_ASSET = "vega.js"
INDEX_ASSET = "reportgen-index.js"
"""The index page's table and head list (a script of its own, loaded before reportgen.js)."""


# --- helpers shared with templates ----------------------------------------------------------


def script_json(data: Any) -> Markup:
    """JSON for a `<script>` element: `<` is written `\\u003c`, so no `</script>` or `<!--` can
    end or confuse the element, and U+2028/U+2029 are escaped for older JS parsers."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


def single_file_csp(script: str) -> str:
    """The single file's policy: its one inline script allowed by its SHA-256 (`script` is its
    exact text), so injected inline scripts and handlers are blocked; 'unsafe-eval' for Vega, as
    in the site (see CSP), which also runs the Vega bundle the page inflates. Inline styles: the
    file carries its stylesheet inline (with no network, CSS cannot send anything away)."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        f"default-src 'none'; script-src 'sha256-{digest}' 'unsafe-eval'; "
        "style-src 'unsafe-inline'; img-src data: blob:; connect-src 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


def script_text(source: str) -> Markup:
    """JavaScript source for an inline `<script>`: `</script` and `<!--` become harmless
    (`<\\/script`, `<\\!--`, same meaning inside JS strings and regular expressions)."""
    text = re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)
    return Markup(text.replace("<!--", "<\\!--"))


def style_text(source: str) -> Markup:
    """CSS for an inline `<style>`: `</style` cannot close it early."""
    return Markup(re.sub(r"</(style)", r"<\\/\1", source, flags=re.IGNORECASE))


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
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "base.html").is_file():
            return candidate
    raise FileNotFoundError(f"reportgen's templates are missing (looked in {package})")


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
