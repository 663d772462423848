"""The Content-Security-Policy of the pages: no inline script or handler runs in a site page,
and in the single file only its own inline script (allowed by its hash). 'unsafe-eval' stays for
Vega (see html.CSP; benchmarks/csp.py measures the alternative). Checked on the policy text
(unit) and in Chromium with markup patched into built pages (browser): the injected code has no
effect and the browser reports the violation."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reportgen.records import Run
from reportgen.settings import Settings
from reportgen.site import render_site
from reportgen.site.html import CSP, single_file_csp

INJECTED = (
    '<img src="x" onerror="document.title = \'pwned\'; window.__rg_pwned = 1">'
    "<script>document.title = 'pwned'; window.__rg_pwned = 2;</script>"
)
VIOLATIONS_JS = """
window.__rg_violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__rg_violations.push(e.violatedDirective);
});
"""


def _policy(page: str) -> dict[str, list[str]]:
    [content] = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    directives = [d.split() for d in html.unescape(content).split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


@pytest.mark.unit
def test_site_policy_allows_no_inline_script() -> None:
    policy = {d.split()[0]: d.split()[1:] for d in CSP.split(";")}
    assert policy["script-src"] == ["'self'", "'unsafe-eval'"]
    assert policy["default-src"] == ["'none'"] and policy["connect-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]


@pytest.mark.unit
def test_single_file_policy_allows_its_own_script_by_hash(synthetic_run: Path, tmp_path) -> None:
    single = tmp_path / "single.html"
    render_site(Run.open(synthetic_run), tmp_path / "site", Settings(single_file=single))
    page = single.read_text("utf-8")
    policy = _policy(page)
    inline = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(inline) == 1, "one inline script"
    digest = base64.b64encode(hashlib.sha256(inline[0].encode("utf-8")).digest()).decode()
    assert policy["script-src"] == [f"'sha256-{digest}'", "'unsafe-eval'"]
    assert single_file_csp(inline[0]) == html.unescape(
        re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)[0]
    )
    for name in (tmp_path / "site").rglob("*.html"):
        assert _policy(name.read_text("utf-8"))["script-src"] == ["'self'", "'unsafe-eval'"]


@pytest.fixture(scope="module")
def patched(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A built site and single file, then copies of their pages with hostile markup patched
    in: an inline handler and an inline script at the start of the body's main element."""
    root = tmp_path_factory.mktemp("csp")
    render_site(Run.open(synthetic_run), root / "site", Settings(single_file=root / "single.html"))
    pages: dict[str, Path] = {}
    for name, source in [
        ("index", root / "site" / "index.html"),
        ("example", root / "site" / "examples" / "0001-reference.html"),
        ("single", root / "single.html"),
    ]:
        text = source.read_text("utf-8")
        text = text.replace(
            '<main class="rg-wrap" id="rg-main">',
            '<main class="rg-wrap" id="rg-main">' + INJECTED,
            1,
        )
        assert INJECTED in text
        copy = source.with_name(f"patched-{source.name}")
        copy.write_text(text, "utf-8")
        pages[name] = copy
    return pages


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from browser import launch
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def _open(chromium: Any, path: Path) -> tuple[Any, list[str]]:
    page = chromium.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.on("dialog", lambda d: (console.append(f"dialog {d.message}"), d.dismiss()))
    page.add_init_script(VIOLATIONS_JS)
    page.goto(path.as_uri())
    page.evaluate("() => window.reportgen.ready.then(() => true)")
    page.wait_for_timeout(100)  # the image's error event, if anything were to run
    return page, console


@pytest.mark.browser
@pytest.mark.parametrize("name", ["index", "example", "single"])
def test_injected_inline_script_and_handler_are_blocked(chromium, patched, name) -> None:
    page, console = _open(chromium, patched[name])
    try:
        assert page.evaluate("() => window.__rg_pwned") is None, "no injected code ran"
        assert page.title() != "pwned"
        violations = page.evaluate("() => window.__rg_violations")
        assert violations.count("script-src-elem") >= 1, violations  # the inline <script>
        assert violations.count("script-src-attr") >= 1, violations  # the onerror handler
        refused = [m for m in console if "Content Security Policy" in m]
        assert len(refused) >= 2, console
        if name != "index":  # the page's own code still runs: its chart is drawn
            assert page.evaluate("() => !!window.reportgen.view")
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.parametrize("name", ["example", "single"])
def test_pages_interact_without_any_violation(chromium, patched, name) -> None:
    """The unpatched pages: hovering and clicking heads runs clean."""
    source = patched[name].with_name(patched[name].name.removeprefix("patched-"))
    page, console = _open(chromium, source)
    try:
        if name == "single":
            page.evaluate("() => window.reportgen.show('example-1').then(() => true)")
        from browser import cell_center

        from reportgen.charts import GRID_CELLS

        before = page.evaluate("() => window.reportgen.data('heat').length")
        for layer, head in [(2, 3), (3, 1)]:
            x, y = cell_center(page, f"{GRID_CELLS}_marks", layer=layer, head=head)
            page.mouse.move(x, y, steps=3)  # a tooltip on the way
            page.mouse.down()
            page.mouse.up()
            page.evaluate("() => window.reportgen.settled().then(() => true)")
        assert page.evaluate("() => window.reportgen.selection()") == [[3, 1]]
        assert before > 0
        heat = page.evaluate("() => window.reportgen.data('heat').length")
        assert heat > 0
        assert page.evaluate("() => window.__rg_violations") == []
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        page.close()
