"""Writing: the static site, the single file, and figures.

Pages are rendered one at a time and streamed to their files inside a staging folder that
updates the output only when complete (`fsutil.staged_update`), so an error or Ctrl-C leaves a
previous site as it was; the site folder's record of its files (`.reportgen-manifest.json`)
decides what may be replaced, so files reportgen did not write there (`.git`, `CNAME`) stay.
The single file carries a seal, its own SHA-256, by which a later build knows it may
overwrite it. Output is deterministic: the same run renders to byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    INDEX_ASSET,
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
from reportgen.site.pages import (
    ExampleContext,
    Links,
    Page,
    SiteContext,
    pages,
    with_neighbours,
)

SINGLE_FILE_LIMIT = 64 * 2**20
"""Largest single-file report, in bytes; above it, use the site folder (or a smaller --top-k)."""
SINGLE_FILE_MARKER = b'<meta name="generator" content="reportgen'
"""What a single file reportgen wrote has in its head, next to its seal: `base.html` writes a
`<meta name="reportgen-seal">` holding `fsutil.SEAL_PLACEHOLDER`, over which `fsutil.seal`
writes the file's SHA-256. So a file reportgen wrote, unchanged, can be told from any other (a
generator meta tag alone anyone can write) and is overwritten without --force."""


GITHUB_PAGES_LIMIT = 10**9
"""GitHub Pages publishes sites of at most 1 GB; a bigger site is built, with a warning."""


def _variables(site: SiteContext, page: Page, links: Links) -> dict[str, Any]:
    context = {} if page.context is None else page.context.variables()
    data = page.payload(links)
    return {**site.common(links).variables(), **context, "page": page, "data": data}


def _render(site: SiteContext, page: Page, links: Links) -> Iterator[str]:
    """The page's HTML in pieces, as the template makes them (written out as they come)."""
    template = site.env.get_template(page.template)
    return template.generate(**_variables(site, page, links), inline=False)


def _render_body(site: SiteContext, page: Page, links: Links) -> Markup:
    """Only the page's `content` block (for the single file), with the same variables."""
    return content_block(site.env, page, _variables(site, page, links))


def content_block(env: jinja2.Environment, page: Page, variables: Mapping[str, Any]) -> Markup:
    """The `content` block of `page`'s template rendered with `variables` (a single file's
    section)."""
    template = env.get_template(page.template)
    context = template.new_context(dict(variables))
    return Markup("".join(template.blocks["content"](context)))


def _site_assets(env: jinja2.Environment) -> dict[str, str]:
    return {
        VEGA_ASSET: vega_bundle(),
        "reportgen.css": asset_source(env, "reportgen.css"),
        INDEX_ASSET: asset_source(env, INDEX_ASSET),
        "reportgen.js": asset_source(env, "reportgen.js"),
    }


def inline_script(env: jinja2.Environment) -> str:
    """The single file's one inline script: the index table's code, then the page code (the
    order the site's pages load them in, so `reportgen.js` finds the table code defined)."""
    return asset_source(env, INDEX_ASSET) + "\n" + asset_source(env, "reportgen.js")


def _write(path: Path, text: str | Iterable[str]) -> int:
    """Write a file; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        if isinstance(text, str):
            fh.write(text)
        else:
            fh.writelines(text)
        return fh.tell()


def size_text(size: int) -> str:
    """Bytes as people read them: `812 kB`, `3.4 MB`, `1.27 GB` (powers of 1000, as GitHub
    states its limits)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def size_warning(size: int, pages: int, count: int) -> str | None:
    """The warning for a site over GitHub Pages' limit (None under it), with the figure and
    the fix."""
    if size <= GITHUB_PAGES_LIMIT:
        return None
    per_page = f"; pages for {pages} of {count} inputs" if pages < count else ""
    return (
        f"the site is {size_text(size)}{per_page}, over GitHub Pages' 1 GB limit for a "
        "published site: write pages for fewer inputs with --pages N (the index keeps every "
        "input), or a smaller --top-k"
    )


def is_site(path: str | Path) -> bool:
    """Whether a folder holds a reportgen site: its record of the files reportgen wrote, and
    those files unchanged (a generator meta tag alone proves nothing: anyone can write one)."""
    return owned(path, "site")


def is_single_file(path: str | Path) -> bool:
    """Whether `path` is a single-file report reportgen wrote, unchanged since (its seal)."""
    return is_sealed(path, SINGLE_FILE_MARKER)


class SiteSize:
    """What a rendering wrote: the site's bytes (its single file too, when inside it)."""

    def __init__(self) -> None:
        self.bytes = 0


def render_site(
    run: Run,
    out: Path,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    size: SiteSize | None = None,
) -> Path:
    """Render the whole site into `out` (see the module), and the single file if settings ask.
    A single file inside `out` (`site/report.html`) is written with the site, as one of its
    files; one elsewhere is moved into place after the site. The site's size goes into `size`;
    a site over GitHub Pages' limit calls `on_warning` before it replaces the old one."""
    out = Path(out)
    if settings.single_file is not None:
        check_single_file(settings.single_file, settings.force, out, SINGLE_FILE_MARKER)
    site = SiteContext.gather(run, settings)
    single = None if settings.single_file is None else _SingleFile(site)
    with site_update(out, settings) as (tmp, place_single):
        written = 0
        for name, text in _site_assets(site.env).items():
            written += _write(tmp / "assets" / name, text)
        written += _write(tmp / ".nojekyll", "")
        for page, depth in pages(site):
            written += _write(tmp / page.file, _render(site, page, site.links(depth)))
            if single is not None:
                single.add(page)
            if progress is not None and page.key.startswith("example-"):
                progress(1)
        if single is not None:
            written += place_single(single.stage)
        if size is not None:
            size.bytes = written
        warning = size_warning(written, len(site.choice.order), len(run))
        if warning is not None and on_warning is not None:
            on_warning(warning)
    return out


@contextlib.contextmanager
def site_update(
    out: Path, settings: Settings
) -> Iterator[tuple[Path, Callable[[Callable[[Path], Path]], int]]]:
    """A staged update of the site `out` (all of it or nothing), with `place(stage)` to write
    the single file `settings.single_file`: `stage(path)` writes it under a temporary name
    next to `path` and returns that. One inside `out` (`site/report.html`) goes in with the
    site (`place` returns its bytes); one elsewhere is moved into place after the site,
    checked again that nobody wrote it meanwhile (`place` returns 0)."""
    target = settings.single_file
    staged: list[Path] = []
    try:
        with staged_update(out, "site", settings.force, recognise=is_single_file) as tmp:

            def place(stage: Callable[[Path], Path]) -> int:
                assert target is not None, "no single file was asked for"
                inside = _inside(target, out)
                if inside is None:
                    staged.append(stage(target))
                    return 0
                os.replace(stage(tmp / inside), tmp / inside)
                return (tmp / inside).stat().st_size

            yield tmp, place
        if staged and target is not None:
            check_single_file(target, settings.force, out, SINGLE_FILE_MARKER)  # changed since?
            os.replace(staged.pop(), target)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)


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
        self.links = site.single_links()
        self.sections: list[dict[str, Any]] = []
        self.size = len(vega_bundle_packed())

    def add(self, page: Page) -> None:
        """Add a page (an input's page only if the file holds that input's page)."""
        context = page.context
        if isinstance(context, ExampleContext) and not self.links.has(context.index):
            return
        page = with_neighbours(page, self.site, self.links)
        body = _render_body(self.site, page, self.links)
        section = single_section(page.key, page, body, page.payload(self.links))
        self.size += len(body) + len(section["data"])
        if self.size > SINGLE_FILE_LIMIT:
            raise OutputError(
                f"the single-file report would exceed {SINGLE_FILE_LIMIT / 2**20:.3g} MiB (at page "
                f"'{page.title}'); use the site folder, fewer inputs, or a smaller --top-k"
            )
        self.sections.append(section)

    def stage(self, path: Path) -> Path:
        """Write the file next to `path` under a temporary name; the caller renames it."""
        common = self.site.common(self.links).variables()
        return stage_single_file(self.site.env, common, self.sections, self.site.title, path)


def single_section(key: str, page: Page, body: Markup, data: Mapping[str, Any]) -> dict[str, Any]:
    """One page of a single file: its rendered `content` block and its data, gzipped."""
    return {
        "key": key,
        "title": page.title,
        "kind": page.data["kind"],
        "body": body,
        "data": packed(script_json(data)),
    }


def stage_single_file(
    env: jinja2.Environment,
    common: Mapping[str, Any],
    sections: Sequence[Mapping[str, Any]],
    title: str,
    path: Path,
) -> Path:
    """Write a single file of `sections` (bodies and packed data; the first one keyed `index`
    opens) next to `path` under a temporary name, sealed; the caller renames it."""
    template = env.get_template("single.html")
    page = Page("single", path.name, "single.html", title, None, {"kind": "single"})
    js = script_text(inline_script(env))
    html = template.generate(
        **common,
        sections=sections,
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
    notebooks), `height` px tall until the report says its own height (it posts it to its
    parent; the script beside the frame, where the host runs scripts, sizes the frame to it,
    at most 20,000 px); the document is attribute-escaped by markupsafe."""
    html = Path(path).read_text("utf-8")
    return str(
        Markup(
            '<iframe sandbox="allow-scripts" style="width:100%;height:{}px;border:0" '
            'srcdoc="{}"></iframe><script>{}</script>'
        ).format(int(height), html, Markup(_FRAME_SIZER))
    )


_FRAME_SIZER = (
    "(function(){var f=document.currentScript.previousElementSibling;"
    "window.addEventListener('message',function(e){var d=e.data;"
    "if(e.source!==f.contentWindow||!d||d.reportgen!=='height'||typeof d.height!=='number')return;"
    "f.style.height=Math.max(150,Math.min(20000,Math.round(d.height)))+'px';});})();"
)
"""The host's side of the report's height message: only from its own frame, a number, bounded."""


def save_figure(spec: Mapping[str, Any], path: str | Path, force: bool = False) -> Path:
    """Write a figure spec as .svg or .png (2× scale), offline with vl-convert.

    The file carries its own SHA-256 (an SVG comment, a PNG `tEXt` chunk), so a later figure
    replaces it only if reportgen wrote it and nobody changed it since; any other file at
    `path` is refused without `force`. The file appears whole or not at all."""
    import vl_convert

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise OutputError(f"{path}: unknown figure format '{suffix}' (use .svg or .png)")
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; give a file path, e.g. {path}/figure{suffix}")
    if os.path.lexists(path) and not force and not is_figure(path):
        raise OutputError(
            f"--out {path} exists and was not written by reportgen (or was changed since); "
            "choose another path, or pass --force to overwrite it"
        )
    if suffix == ".svg":
        svg = _renumbered(vl_convert.vegalite_to_svg(dict(spec)))
        data = f"<!-- reportgen figure {SEAL_PLACEHOLDER} -->\n{svg}".encode()
    else:
        data = _png_sealed(vl_convert.vegalite_to_png(dict(spec), scale=2))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if suffix == ".svg":
            seal(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_SVG_ID = re.compile(r'(id="|url\(#|href="#)(gradient_|clip|pattern_)(\d+)')


def _renumbered(svg: str) -> str:
    """Vega numbers an SVG's gradients and clips with counters that live as long as the
    process, so the second figure drawn differs from the first: number them from 0 in order of
    appearance, and the same figure is the same bytes whatever was drawn before. Only ids and
    references to them change, never text."""
    seen: dict[tuple[str, str], int] = {}

    def number(match: re.Match[str]) -> str:
        where, kind, n = match.groups()
        key = (kind, n)
        if key not in seen:
            seen[key] = sum(1 for k in seen if k[0] == kind)
        return f"{where}{kind}{seen[key]}"

    return _SVG_ID.sub(number, svg)


def is_figure(path: str | Path) -> bool:
    """Whether `path` is a figure `save_figure` wrote, unchanged since."""
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return is_sealed(path, b"<!-- reportgen figure ")
    try:
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    except OSError:
        return False
    chunks = list(_png_chunks(data))
    ours = [c for c in chunks if c[0] == b"tEXt" and c[1].startswith(_PNG_KEY)]
    if len(ours) != 1:
        return False
    _, body, start, stop = ours[0]
    rest = data[:start] + data[stop:]
    return body[len(_PNG_KEY) :] == hashlib.sha256(rest).hexdigest().encode("ascii")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEY = b"reportgen-sha256\x00"


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """A PNG's chunks as (type, body, start, stop) byte offsets; nothing for a file that is not
    a well-formed PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        return
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        stop = at + 12 + size
        if stop > len(data):
            return
        yield data[at + 4 : at + 8], data[at + 8 : at + 8 + size], at, stop
        at = stop


def _png_sealed(png: bytes) -> bytes:
    """The PNG with a `tEXt` chunk `reportgen-sha256` after its header, holding the SHA-256 of
    the PNG without that chunk (checked by `is_figure`)."""
    chunks = list(_png_chunks(png))
    if not chunks or chunks[0][0] != b"IHDR":
        raise OutputError("vl-convert returned an image that is not a PNG")
    after = chunks[0][3]
    body = b"tEXt" + _PNG_KEY + hashlib.sha256(png).hexdigest().encode("ascii")
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:after] + chunk + png[after:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
