"""Writing: the static site, the single file, and figures.

Pages are rendered one at a time and streamed to their files inside a staging folder that
updates the output only when complete (`fsutil.staged_update`), so an error or Ctrl-C leaves a
previous site as it was; the site folder's record of its files (`.reportgen-manifest.json`)
decides what may be replaced, so files reportgen did not write there (`.git`, `CNAME`) stay.
The single file carries a seal, its own SHA-256, by which a later build knows it may
overwrite it. Output is deterministic: the same run renders to byte-identical files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from reportgen.errors import OutputError
from reportgen.fsutil import (
    SEAL_PLACEHOLDER,
    check_single_file,
    is_sealed,
    owned,
    seal,
    staged_update,
)
from reportgen.records import Run
from reportgen.settings import Settings
from reportgen.site.html import (
    VEGA_ASSET,
    asset_source,
    packed,
    script_json,
    script_text,
    single_file_csp,
    style_text,
    vega_bundle,
    vega_bundle_packed,
)
from reportgen.site.pages import Links, Page, SiteContext, pages

SINGLE_FILE_LIMIT = 64 * 2**20
"""Largest single-file report, in bytes; above it, use the site folder (or a smaller --top-k)."""
SINGLE_FILE_MARKER = b'<meta name="generator" content="reportgen'
"""What a single file reportgen wrote has in its head, next to its seal: `base.html` writes a
`<meta name="reportgen-seal">` holding `fsutil.SEAL_PLACEHOLDER`, over which `fsutil.seal`
writes the file's SHA-256. So a file reportgen wrote, unchanged, can be told from any other (a
generator meta tag alone anyone can write) and is overwritten without --force."""


def _variables(site: SiteContext, page: Page, links: Links) -> dict[str, Any]:
    context = {} if page.context is None else page.context.variables()
    return {**site.common(links).variables(), **context, "page": page, "data": page.data}


def _render(site: SiteContext, page: Page, links: Links) -> Iterator[str]:
    """The page's HTML in pieces, as the template makes them (written out as they come)."""
    template = site.env.get_template(page.template)
    return template.generate(**_variables(site, page, links), inline=False)


def _render_body(site: SiteContext, page: Page, links: Links) -> Markup:
    """Only the page's `content` block (for the single file), with the same variables."""
    template = site.env.get_template(page.template)
    context = template.new_context(_variables(site, page, links))
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


def is_site(path: str | Path) -> bool:
    """Whether a folder holds a reportgen site: its record of the files reportgen wrote, and
    those files unchanged (a generator meta tag alone proves nothing: anyone can write one)."""
    return owned(path, "site")


def is_single_file(path: str | Path) -> bool:
    """Whether `path` is a single-file report reportgen wrote, unchanged since (its seal)."""
    return is_sealed(path, SINGLE_FILE_MARKER)


def render_site(
    run: Run,
    out: Path,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Render the whole site into `out` (see the module), and the single file if settings ask.
    A single file inside `out` (`site/report.html`) is written with the site, as one of its
    files; one elsewhere is moved into place after the site."""
    out = Path(out)
    target = settings.single_file
    if target is not None:
        check_single_file(target, settings.force, out, SINGLE_FILE_MARKER)
    site = SiteContext.gather(run, settings)
    single = None if target is None else _SingleFile(site)
    staged: Path | None = None
    try:
        with staged_update(out, "site", settings.force, recognise=is_single_file) as tmp:
            for name, text in _site_assets(site.env).items():
                _write(tmp / "assets" / name, text)
            _write(tmp / ".nojekyll", "")
            for page, depth in pages(site):
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
            check_single_file(target, settings.force, out, SINGLE_FILE_MARKER)  # changed since?
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
    check_single_file(path, settings.force, None, SINGLE_FILE_MARKER)
    site = SiteContext.gather(run, settings)
    single = _SingleFile(site)
    for page, _ in pages(site):
        single.add(page)
    staged = single.stage(Path(path))
    try:
        check_single_file(path, settings.force, None, SINGLE_FILE_MARKER)  # changed since?
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return Path(path)


class _SingleFile:
    """Collects page bodies for the single file, failing early above SINGLE_FILE_LIMIT."""

    def __init__(self, site: SiteContext) -> None:
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
        page = Page("single", path.name, "single.html", self.site.title, None, {"kind": "single"})
        js = script_text(asset_source(env, "reportgen.js"))
        html = template.generate(
            **self.site.common(self.links).variables(),
            sections=self.sections,
            data=page.data,
            page=page,
            inline=True,
            inline_assets={
                "vega": vega_bundle_packed(),
                "js": js,
                "css": style_text(asset_source(env, "reportgen.css")),
            },
            csp=single_file_csp(str(js)),  # the inline script's hash
            seal=SEAL_PLACEHOLDER,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.writelines(html)
            seal(Path(tmp))
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
