"""The committed demo comparison (site/compare/, README "Emergence"): every figure the README
quotes is the one the page shows, both read here (the README's numbers parsed, not copied), so
a retrain that changes the page and not the README, or the other way round, fails; the demo
index links to the comparison, and its single file stands alone.

site/compare/ is built from checkpoints the repository does not hold, so the golden test
(tests/test_golden.py) leaves it out; tests/test_train_checkpoints.py rebuilds the first ones."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import README, ROOT

from reportgen.charts import compare as views
from reportgen.modelpath import demo_model_path, weights_sha256

pytestmark = pytest.mark.unit

COMPARE = ROOT / "site" / "compare"
NUM = r"[+−-]?\d+(?:\.\d+)?"
P_VALUE = rf"{NUM}(?: × 10[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)?"
HEAD = r"L\d+ H\d+"
SHARE = rf"({NUM})%"
_SUPERSCRIPTS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


@cache
def claims() -> str:
    """The measured paragraph of the README's "Emergence" section, on one line."""
    text = README.read_text("utf-8")
    section = text.split("### Emergence: the grounding heads on the demo", 1)[1]
    paragraphs = section.split("\n## ", 1)[0].split("\n\n")
    found = [p for p in paragraphs if p.startswith("Measured on the ")]
    assert len(found) == 1, 'README\'s "Emergence" has no "Measured on the ..." paragraph'
    return " ".join(found[0].split())


def quoted(pattern: str) -> tuple[str, ...]:
    """The groups of `pattern` in the README's paragraph (one match, or the test fails)."""
    found = re.search(pattern, claims())
    assert found, f"README's Emergence paragraph no longer says /{pattern}/: {claims()}"
    return found.groups()


def items(text: str) -> list[str]:
    """`0.02, 0.21 and 7.16` → its items."""
    return re.split(r", | and ", text)


def agrees(quote: str, value: float) -> bool:
    """Whether `value` is `quote` at the precision it is written with: a decimal's places,
    or a power of ten's significant digits (`1.2 × 10⁻⁷`)."""
    quote = quote.replace("−", "-")
    if "×" in quote:
        mantissa, power = (part.strip() for part in quote.split("× 10"))
        digits = len(mantissa.lstrip("+-").replace(".", ""))
        number = float(mantissa) * 10.0 ** int(power.translate(_SUPERSCRIPTS))
        return f"{value:.{digits - 1}e}" == f"{number:.{digits - 1}e}"
    places = len(quote.partition(".")[2])
    return f"{value:.{places}f}" == f"{float(quote):.{places}f}"


def _step(label: str) -> int:
    return int(label.removeprefix("step "))


@cache
def page() -> dict:
    """The comparison page's embedded data."""
    html = (COMPARE / "index.html").read_text("utf-8")
    found = re.search(r'<script type="application/json" id="rg-data">(.*?)</script>', html, re.S)
    assert found
    return json.loads(found.group(1))


def _dataset(name: str) -> list[dict]:
    return next(d["values"] for d in page()["spec"]["data"] if d["name"] == name)


def shares() -> dict[tuple[int, str], float]:
    """(step, head) → the head's mean share over the inputs, as the page draws it."""
    return {(_step(r["checkpoint"]), r["unit"]): r["mean"] for r in _dataset(views.UNITS_DATA)}


def checkpoints() -> dict[int, dict]:
    """step → the page's row for that checkpoint (p(target), information gain, ablation)."""
    return {_step(r["checkpoint"]): r for r in _dataset(views.CHECKPOINTS_DATA)}


def sign_tests() -> dict[int, tuple[int, int, str]]:
    """step → (inputs where the top heads lowered log p more than random heads, inputs, the
    sign test's p as shown), from the page's table of models."""
    html = (COMPARE / "index.html").read_text("utf-8")
    table = html.split('data-rg="models"', 1)[1].split("</table>", 1)[0]
    found = re.findall(
        r'<a href="models/[^"]+">step (\d+)</a>.*?(\d+) of (\d+) <span class="rg-muted">'
        r"p = ([^<]+)</span>",
        table,
        re.S,
    )
    return {int(s): (int(k), int(n), p) for s, k, n, p in found}


def test_the_head_shares_the_readme_quotes_are_the_pages() -> None:
    got = shares()
    steps = sorted({s for s, _ in got})
    heads = len(got) // len(steps)
    (n_inputs,) = quoted(r"Measured on the (\d+) demo inputs")
    title = (COMPARE / "index.html").read_text("utf-8")
    assert f"{len(steps)} models compared · {n_inputs} inputs" in title
    count, uniform = quoted(rf"a uniform share is 1/(\d+) = ({NUM})%")
    assert int(count) == heads and agrees(uniform, 100 / heads)
    top = quoted(rf"the final model's top heads, ({HEAD}), ({HEAD}) and ({HEAD}),")
    last = sorted((r["rank"], r["unit"]) for r in _dataset(views.UNITS_DATA) if r["c"] == 0)
    assert [unit for _, unit in last[:3]] == list(top)  # the last checkpoint's strongest three
    assert [got[steps[-1], unit] for _, unit in last] == sorted(
        (v for (s, _), v in got.items() if s == steps[-1]), reverse=True
    )
    listed: dict[int, list[str]] = {}  # step -> the three heads' shares quoted at that step
    *values, step = quoted(rf"start near uniform \({SHARE}, {SHARE}, {SHARE} at step (\d+)\)")
    listed[int(step)] = values
    step, *values = quoted(rf"still there at step (\d+) \({SHARE}, {SHARE}, {SHARE}\)")
    listed[int(step)] = values
    step, *values = quoted(rf"by step (\d+) they carry {SHARE}, {SHARE} and {SHARE}")
    listed[int(step)] = values
    *values, step = quoted(rf"settle at {SHARE}, {SHARE} and {SHARE} at step (\d+)\.")
    listed[int(step)] = values
    assert sorted(listed) == [0, 100, 200, 800]
    for step, values in listed.items():
        for head, value in zip(top, values, strict=True):
            assert agrees(value, 100 * got[step, head]), (step, head, value, got[step, head])
    # near uniform at step 0: within 1.5× of 1/heads either way
    assert all(1 / 1.5 < got[0, head] * heads < 1.5 for head in top)
    # "(4–5× uniform)" at the step they first carry that much
    low, high = map(int, quoted(r"they carry [^(]*\((\d+)–(\d+)× uniform\)"))
    at = int(quoted(r"by step (\d+) they carry")[0])
    assert all(low <= round(got[at, head] * heads) <= high for head in top)
    # they emerge between two consecutive checkpoints: the first step where all three carry
    # `low`× uniform is the later one
    before, after = map(int, quoted(r"emerge between steps (\d+) and (\d+)"))
    assert steps.index(after) == steps.index(before) + 1
    strong = [s for s in steps if all(got[s, head] * heads >= low for head in top)]
    assert strong[0] == after == at
    # the peaks: each named head's largest share is at the step quoted; all three in the range
    first, last, *peaks = quoted(
        rf"peak at steps (\d+)–(\d+) \(({HEAD}) {SHARE} at step (\d+), ({HEAD}) {SHARE} at step "
        r"(\d+)\)"
    )
    for head, value, step in (peaks[:3], peaks[3:]):
        assert agrees(value, 100 * got[int(step), head])
        assert max(steps, key=lambda s: got[s, head]) == int(step)
    for head in top:
        assert int(first) <= max(steps, key=lambda s: got[s, head]) <= int(last)


def test_the_information_gain_and_p_target_the_readme_quotes_are_the_pages() -> None:
    gains, steps, probabilities = quoted(
        rf"The information gain rises with them: ((?:{NUM}(?:, | and ))+{NUM}) nats at steps "
        rf"((?:\d+(?:, | and ))+\d+) \(mean p\(target\) ((?:{NUM}(?:, | and ))+{NUM})\)"
    )
    rows = checkpoints()
    for gain, step, p in zip(items(gains), items(steps), items(probabilities), strict=True):
        assert agrees(gain, rows[int(step)]["gain"]), (step, gain, rows[int(step)]["gain"])
        assert agrees(p, rows[int(step)]["value"]), (step, p, rows[int(step)]["value"])
    assert [rows[s]["gain"] for s in map(int, items(steps))] == sorted(
        rows[s]["gain"] for s in map(int, items(steps))
    )  # it rises


def test_the_ablation_figures_the_readme_quotes_are_the_pages() -> None:
    rows, signs = checkpoints(), sign_tests()
    assert sorted(signs) == sorted(rows)
    top, step, wins, n, p = quoted(
        rf"top-3 heads changes log p\(target\) by ({NUM}) at step (\d+) \(no better than 3 "
        rf"random heads: (\d+) of (\d+) inputs, sign test p = ({P_VALUE})\)"
    )
    assert agrees(top, rows[int(step)]["ablate_top"])
    assert signs[int(step)][:2] == (int(wins), int(n)) and int(wins) <= int(n) / 2
    assert agrees(p, float(signs[int(step)][2]))
    top_a, top_b, step_a, step_b, random_a, random_b = quoted(
        rf"by ({NUM}) and ({NUM}) at steps (\d+) and (\d+) \(against ({NUM}) and ({NUM}) for "
        r"random heads\)"
    )
    for value, random, step in ((top_a, random_a, step_a), (top_b, random_b, step_b)):
        assert agrees(value, rows[int(step)]["ablate_top"])
        assert agrees(random, rows[int(step)]["ablate_random"])
    top, step, wins, n, p = quoted(
        rf"and by ({NUM}) at step (\d+), where it beats random heads on (\d+) of (\d+) inputs "
        rf"\(p = ({P_VALUE})\)"
    )
    assert agrees(top, rows[int(step)]["ablate_top"])
    assert signs[int(step)][:2] == (int(wins), int(n))
    assert agrees(p, float(signs[int(step)][2]))
    # "The rerun's step 800 is byte-identical to the shipped reportgen/demo_model"
    (step,) = quoted(r"The rerun's step (\d+) is byte-identical to the shipped")
    about = (COMPARE / "models" / f"step-{step}" / "about.html").read_text("utf-8")
    assert f'<code class="rg-hash">{weights_sha256(demo_model_path())}</code>' in about


def test_the_readme_figures_are_checked_at_their_precision() -> None:
    assert agrees("0.006", 0.005553) and not agrees("0.005", 0.005553)
    assert agrees("−0.070", -0.070173) and not agrees("-0.07", -0.0751)
    assert agrees("+0.0007", 0.000728) and agrees("0.90", 0.9017)
    assert agrees("1.2 × 10⁻⁷", 1.19e-7) and not agrees("1.2 × 10⁻⁷", 1.2e-6)


def _links(html: str) -> list[str]:
    return re.findall(r'\b(?:src|href)="([^"]*)"', html)


def test_the_demo_index_links_to_the_comparison_and_its_single_file_stands_alone() -> None:
    from reportgen.site.writer import is_single_file

    index = (ROOT / "site" / "index.html").read_text("utf-8")
    assert "compare/index.html" in _links(index)
    assert (ROOT / "site" / "compare" / "index.html").is_file()
    single: Path = COMPARE / "comparison.html"
    assert is_single_file(single)
    html = single.read_text("utf-8")
    outside = [u for u in _links(html) if not u.startswith(("#", "data:"))]
    assert outside == [], f"site/compare/comparison.html links out: {outside[:5]}"
    assert not re.search(r"url\((?!['\"]?(?:data:|#))|@import", html)
