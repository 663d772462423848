"""Benchmark: the cost of running pages without 'unsafe-eval' (Vega through vega-interpreter).

One example page at T = 512 of a random 12 × 12-head GPT-2 (as benchmark 3 builds it), opened
in headless Chromium from file:// in two variants, interleaved round by round:

- codegen: the page as reportgen writes it: its CSP allows 'unsafe-eval' and Vega compiles its
  expressions with `Function`;
- interpreter: a copy of the page whose CSP drops 'unsafe-eval' and that loads a Vega bundle
  carrying vega-interpreter (`vega.expressionInterpreter`, bundled offline by vl-convert as
  `html.vega_bundle` bundles Vega), which the page code then uses.

Each round times clicks, brushes and full brushes, with the mouse and through the view API,
exactly as benchmark 3 does (its `_measure`), and checks that each variant ran as intended:
the interpreter in use or not, and no CSP violation.

    python -m benchmarks.csp [--quick] [--reps ROUNDS]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import browser
from benchmarks.common import Options, Table, median, verdict

VARIANTS = ("interpreter", "codegen")
KEYS = ("first render", "click mouse", "click api", "brush mouse", "brush api", "full mouse")
KEYS += ("full api",)
VEGA_INTERPRETER = "2.0.0"
"""The vega-interpreter that vl-convert embeds for Vega 6 (it bundles only what it embeds)."""
QUOTE = "&#39;"  # the CSP is an attribute value, autoescaped

VIOLATIONS_JS = """
(() => {
  window.__rgViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => {
    window.__rgViolations.push(e.violatedDirective + " " + (e.blockedURI || e.sample || ""));
  });
})();
"""


def interpreter_bundle() -> str:
    """Vega with vega-interpreter as `vega.expressionInterpreter`, as one classic script."""
    import vl_convert

    cdn = "https://cdn.jsdelivr.net/npm"  # resolved from what vl-convert embeds, not fetched
    vega = f"{cdn}/vega@{vl_convert.get_vega_version()}/+esm"
    interpreter = f"{cdn}/vega-interpreter@{VEGA_INTERPRETER}/+esm"
    snippet = (
        f'import * as vegaModule from "{vega}"; '
        f'import {{ expressionInterpreter }} from "{interpreter}"; '
        "window.vega = Object.assign({}, vegaModule, { expressionInterpreter });"
    )
    return str(vl_convert.javascript_bundle(snippet))


def _interpreter_copy(page: Path) -> Path:
    """The page without 'unsafe-eval' in its CSP, loading the interpreter bundle, beside it."""
    html = page.read_text("utf-8")
    eval_source = f" {QUOTE}unsafe-eval{QUOTE}"
    script = '<script src="../assets/vega.js"></script>'
    if html.count(eval_source) != 1 or html.count(script) != 1:
        raise RuntimeError(f"{page}: no 'unsafe-eval' in its CSP, or no {script}")
    bundle = page.parent.parent / "assets" / "vega-interpreter.js"
    bundle.write_text(interpreter_bundle(), "utf-8")
    html = html.replace(eval_source, "").replace(script, script.replace("vega.js", bundle.name))
    copy = page.with_name(page.stem + "-interpreter.html")
    copy.write_text(html, "utf-8")
    return copy


def _round(
    chromium: Any, variant: str, url: str, reps: int, rng: random.Random
) -> dict[str, float]:
    context = chromium.new_context(viewport=browser.VIEWPORT)
    try:
        page = context.new_page()
        page.add_init_script(VIOLATIONS_JS)
        page.add_init_script(browser.PROBE_JS)
        session = browser._Session(page, url)
        loads = [session.load() for _ in range(reps)]
        used = page.evaluate("() => !!window.vega.expressionInterpreter")
        if used != (variant == "interpreter"):
            raise RuntimeError(f"{variant}: the interpreter was {'' if used else 'not '}in use")
        found = {"first render": median(loads), **browser._measure(session, reps, rng)}
        violations = page.evaluate("() => window.__rgViolations")
        if violations:
            raise RuntimeError(f"{variant}: CSP violations {violations}")
        return found
    finally:
        context.close()


def run(opts: Options) -> list[Table]:
    tokens = 16 if opts.quick else browser.TARGET_T
    rounds = 1 if opts.quick else max(opts.reps, 4)
    reps = 2 if opts.quick else 5
    [page] = browser._pages(opts, (tokens,)).values()
    urls = {"interpreter": _interpreter_copy(page).as_uri(), "codegen": page.as_uri()}
    rng = random.Random(0)
    times: dict[str, dict[str, list[float]]] = {v: {k: [] for k in KEYS} for v in VARIANTS}
    with browser._chromium() as chromium:
        for r in range(rounds):
            for variant in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                opts.log(f"csp: round {r + 1}/{rounds}, {variant}")
                for key, value in _round(chromium, variant, urls[variant], reps, rng).items():
                    times[variant][key].append(value)
    got = {v: {k: median(values) for k, values in times[v].items()} for v in VARIANTS}
    table = Table(
        f"6. CSP: Vega with vega-interpreter (no 'unsafe-eval') vs compiled expressions, "
        f"example page at T = {tokens}, ms",
        ["measure", "interpreter", "codegen", "interpreter ÷ codegen", "target", "met"],
    )
    targets = {"click": browser.TARGETS_MS["click"], "brush": browser.TARGETS_MS["brush"]}
    targets["full"] = browser.TARGETS_MS["full brush"]
    targets["first render"] = browser.TARGETS_MS["first render"]
    for key in KEYS:
        a, b = got["interpreter"][key], got["codegen"][key]
        limit = targets[key.split()[0]] if key != "first render" else targets["first render"]
        met = verdict(a, limit, True, opts.quick or tokens != browser.TARGET_T)
        table.add(key, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}×", f"≤ {limit:.0f}", met)
    table.notes += [
        f"Medians over {rounds} rounds × {reps} repetitions of each interaction per variant, "
        "variants alternating which goes first; interactions as in benchmark 3 (random heads "
        "and rectangles, real mouse events and the view API).",
        "Both variants show the same page (the interpreter copy differs in its CSP and its Vega "
        "bundle, which adds vega-interpreter); neither ran into a CSP violation.",
    ]
    return [table]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.csp", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="T = 16, one round, judge nothing")
    parser.add_argument("--reps", type=int, default=6, help="rounds per variant")
    args = parser.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="reportgen-bench-") as tmp:
        opts = Options(quick=args.quick, work=Path(tmp), reps=args.reps, threads=None)
        for table in run(opts):
            print(table.markdown(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
