"""What a person sees: headless Chromium clicks preset -> Unlearn -> Compare in the real app.

Screenshots go to a temporary folder, or to the folder LUNE_SCREENSHOTS names:
`LUNE_SCREENSHOTS=docs/screenshots pytest -m browser` retakes the ones README shows, on purpose, not on every
test run. Needs Debian's /usr/bin/chromium and the playwright package; the app runs the embedded model, so
this takes minutes on a CPU.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("LUNE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "lune-screenshots")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RUN_TIMEOUT_MS = 25 * 60 * 1000  # a shared 2-core CPU; usually 2-8 minutes, 15+ beside another suite

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")]


def first_preset() -> tuple[str, str]:
    """(title, first question) of the first preset."""
    from lune_core.config import RunLimits
    from lune_web.forms import preset_rows, presets

    if not presets():
        pytest.skip("no presets in assets/")
    return presets()[0]["title"], preset_rows(presets()[0]["id"], RunLimits())[0][0]


@pytest.fixture
def page(app_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})  # a classroom projector
        page.goto(app_url)
        page.wait_for_selector("text=Facts to forget", timeout=60_000)
        yield page
        browser.close()


# The computed font size of an element and the contrast of its text colour on the nearest background that
# is not transparent (WCAG's relative luminance).
CONTRAST = """e => {
    const rgb = c => c.match(/[\\d.]+/g).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92
        : Math.pow((v + 0.055) / 1.055, 2.4); }).reduce((a, v, i) => a + v * [0.2126, 0.7152, 0.0722][i], 0);
    let bg = e, colour;
    while (bg && (colour = rgb(getComputedStyle(bg).backgroundColor)).length === 4 && colour[3] === 0)
        bg = bg.parentElement;
    const back = bg ? rgb(getComputedStyle(bg).backgroundColor).slice(0, 3) : [255, 255, 255];
    const [a, b] = [lum(rgb(getComputedStyle(e).color).slice(0, 3)), lum(back)].sort((x, y) => y - x);
    return [parseFloat(getComputedStyle(e).fontSize), (a + 0.05) / (b + 0.05)];
}"""


def first_data_row(table):
    """Gradio's dataframe is a virtual grid: row 1 is the header, row 2 the first data row."""
    return table.locator("[role=row][aria-rowindex='2']").first


def shot(page, name: str, selector: str | None = None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if selector:
        page.locator(selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / name))


def test_preset_unlearn_compare(page):
    title, question = first_preset()
    # 1. Pick a preset: the facts fill the table and the base model's answers appear below them.
    page.get_by_label("Preset").click()
    page.get_by_role("option", name=title).click()
    playwright.expect(page.locator("#facts")).to_contain_text(question)
    base = page.locator("#base-answers")
    playwright.expect(base).to_contain_text("says it", timeout=RUN_TIMEOUT_MS)
    playwright.expect(first_data_row(base)).to_contain_text(question)
    shot(page, "1-facts.png", "#facts-title")

    # 2. Unlearn with the defaults: the status counts steps and the plot draws loss lines.
    page.get_by_role("button", name="Unlearn", exact=True).click()
    status = page.locator("#run-status")
    playwright.expect(status).to_contain_text(re.compile(r"step \d+ / \d+"), timeout=RUN_TIMEOUT_MS)
    playwright.expect(page.locator("#loss-plot .scatterlayer .trace").first).to_be_visible(timeout=60_000)
    playwright.expect(status).to_contain_text(re.compile(r"step ([3-9]|\d\d) / |Done"), timeout=RUN_TIMEOUT_MS)
    shot(page, "2-training.png", "#unlearn-title")

    # 3. Compare: the figures first, then a fold per kind, each saying what its rows hold; the first fact
    # is forgotten, with a word (not only a colour).
    playwright.expect(status).to_contain_text("Done", timeout=RUN_TIMEOUT_MS)
    compare = page.locator("#compare")
    playwright.expect(compare.locator("details.kind summary").first).to_contain_text("The facts' own questions")
    assert page.evaluate("document.querySelector('#metric-cards').getBoundingClientRect().top "
                         "< document.querySelector('#compare').getBoundingClientRect().top")
    playwright.expect(compare.locator("details.kind[data-kind=forget] summary")).to_contain_text("forgotten")
    compare.locator("details.kind summary").evaluate_all("all => all.forEach(s => s.click())")
    first_row = compare.locator("tr[data-verdict]").first
    playwright.expect(first_row).to_contain_text("forget")
    playwright.expect(first_row).to_contain_text("forgotten")
    playwright.expect(compare).to_contain_text("general")
    # the preset's curated neighbours are rows of their own kind, with the sub-kind visible
    playwright.expect(compare).to_contain_text("neighbour · same subject (curated)")
    playwright.expect(compare).to_contain_text("adversarial · multiple choice")
    cards = page.locator("#metric-cards")
    playwright.expect(cards).to_contain_text("Forget success")
    assert re.search(r"Forget success\s*\d+ %", cards.inner_text())
    # neighbours sit beside general retention, never hidden away
    assert re.search(r"Neighbour retention\s*(\d+ %|–).*General retention\s*\d+ %", cards.inner_text(), re.S)
    # the base model's own rate sits next to the degenerate rate, so 5 % is read against it
    assert re.search(r"Degenerate answers\s*\d+ %.*before: \d+ %", cards.inner_text(), re.S)
    # the probes the question's words cannot reach have cards of their own, and every card its count
    for title in ("Rewordings, other words", "Same-answer facts kept", "Fluency", "Still inside"):
        assert re.search(rf"{title}\s*(\d+ %|\d+\.\d+|–)", cards.inner_text()), title
    hints = cards.locator(".card .hint").all_inner_texts()
    assert hints and all(re.search(r"of \d+ (prompt|answer|fact)", h) for h in hints), hints
    assert re.search(r"Truth ratio\s*[\d.e+-]+", cards.inner_text()) and "0.00 →" not in cards.inner_text()
    playwright.expect(page.locator("#forgetting-kind")).to_contain_text("Kind of forgetting")
    playwright.expect(page.locator("#lens-plot")).to_contain_text("logit lens")
    playwright.expect(page.locator("#lens-plot .hm").first).to_be_attached()
    playwright.expect(compare).to_contain_text("paraphrase · other words")
    assert not page.get_by_text("Traceback").count()
    # every row of the comparison is on the page: no scrolling inside the table, no table wider than its box,
    # no word broken inside
    inner = compare.evaluate("""e => [...e.querySelectorAll('*')].filter(x => {
        const s = getComputedStyle(x);
        return ['auto', 'scroll'].includes(s.overflowY) && x.scrollHeight > x.clientHeight + 4;}).length""")
    assert inner == 0
    assert compare.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    assert compare.locator("td").first.evaluate("c => getComputedStyle(c).wordBreak") == "normal"
    # projector legibility: hint text at least 14 px and 4.5:1 against its card
    size, ratio = cards.locator(".hint").first.evaluate(CONTRAST)
    assert size >= 14 and ratio >= 4.5, (size, ratio)
    # scrolled down to the comparison, the step bar is still at the top of the window
    assert page.evaluate("document.querySelector('#steps-nav').getBoundingClientRect().top") == 0
    shot(page, "3-compare.png", "#compare-title")

    # 4. Deleting a row: the status line says what the table holds now, never the old count.
    page.get_by_role("button", name="- Remove the last row").click()
    playwright.expect(page.locator("#facts-status")).to_contain_text("The table holds 1 fact.")


def test_the_privacy_lesson_teaches_then_forgets(page):
    """The fictional person: unknown to the model, taught in this page, then forgotten."""
    page.get_by_label("Preset").click()
    page.get_by_role("option", name="Fictional person (teach, then forget)").click()
    playwright.expect(page.locator("#facts")).to_contain_text("Elara Voss")
    base = page.locator("#base-answers")
    playwright.expect(base).to_contain_text("does not say it", timeout=RUN_TIMEOUT_MS)
    page.get_by_role("button", name="Teach these facts to the model").click()
    teach = page.locator("#teach-status")
    playwright.expect(teach).to_contain_text("Taught", timeout=RUN_TIMEOUT_MS)
    # the table below now shows what the taught model says: the invented details
    playwright.expect(base).to_contain_text("says it", timeout=RUN_TIMEOUT_MS)
    shot(page, "5-taught.png", "#teach-panel")
    page.get_by_role("button", name="Unlearn", exact=True).click()
    playwright.expect(page.locator("#run-status")).to_contain_text("Done", timeout=RUN_TIMEOUT_MS)
    compare = page.locator("#compare")
    compare.locator("details.kind[data-kind=forget] summary").click()
    first_row = compare.locator("tr[data-verdict]").first
    playwright.expect(first_row).to_contain_text("forget")
    # known before (the taught model is "before"), so the verdict is about forgetting, not "not known before"
    assert "not known before" not in first_row.inner_text()
    shot(page, "6-taught-then-forgotten.png", "#compare-title")


def test_what_was_typed_survives_a_reload_and_nothing_stale_stays(page):
    """A reconnect or a reload must not wipe a lesson: the facts and settings come back from the visitor's
    own browser, and the page says so. What described a table that changed (the base model's answers,
    the preset's description) goes with the change."""
    title, question = first_preset()
    page.get_by_label("Preset").click()
    page.get_by_role("option", name=title).click()
    playwright.expect(page.locator("#facts")).to_contain_text(question)
    playwright.expect(page.locator("#base-answers")).to_contain_text("says it", timeout=RUN_TIMEOUT_MS)
    assert page.locator("#preset-info").inner_text().strip()
    page.wait_for_timeout(1500)  # the browser keeps the table once its change event has run
    page.reload()
    page.wait_for_selector("text=Facts to forget", timeout=60_000)
    playwright.expect(page.locator("#facts")).to_contain_text(question, timeout=30_000)
    playwright.expect(page.locator("#facts-status")).to_contain_text("Restored the 2 facts")
    page.get_by_role("button", name="Clear the table").click()
    playwright.expect(page.locator("#facts-status")).to_contain_text("The table is empty")
    playwright.expect(page.locator("#base-answers")).not_to_contain_text("says it")
    assert not page.locator("#preset-info").inner_text().strip()
    # every table fits its box at 1024 pixels
    for selector in ("#facts", "#base-answers", "#compare"):
        assert page.locator(selector).evaluate("e => e.scrollWidth <= e.clientWidth + 1"), selector
