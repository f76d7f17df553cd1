"""Take the Compare section's screenshots at 1024×768 (a classroom projector) in headless Chromium:
the capital cities preset cut to its first three facts, Unlearn with the defaults, then the figures,
the kind of forgetting and the logit-lens heatmap. Writes docs/screenshots/4-compare-figures.png and
4-lens.png; the test suite never writes them.

    python scripts/screenshots.py            # starts `python app.py` on a free port
    python scripts/screenshots.py --url URL  # uses a running app
"""
from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lune_web.reliability.app_server import serve_app  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 20 * 60 * 1000
FACTS = 3


def drive(url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.goto(url)
        page.wait_for_selector("text=Facts to forget", timeout=120_000)
        count = page.locator("#preset-count input[type=number]")
        count.fill(str(FACTS))
        count.press("Enter")
        page.get_by_label("Preset").click()
        page.get_by_role("option", name="Capital cities").click()
        expect(page.locator("#facts-status")).to_contain_text(f"Loaded {FACTS} of the preset's", timeout=60_000)
        page.get_by_role("button", name="Unlearn", exact=True).click()
        expect(page.locator("#run-status")).to_contain_text("Done", timeout=WAIT_MS)
        SHOTS.mkdir(parents=True, exist_ok=True)
        for name, selector in (("4-compare-figures.png", "#compare-title"), ("4-lens.png", "#lens-plot")):
            # below the sticky step bar, which would otherwise cover the section's first lines
            page.locator(selector).first.evaluate(
                "e => { e.scrollIntoView({block: 'start'}); window.scrollBy(0, -70); }")
            page.wait_for_timeout(800)
            page.screenshot(path=str(SHOTS / name))
            print(f"wrote {SHOTS / name}")
        print(re.sub(r"\s+", " ", page.locator("#metric-cards").inner_text())[:1500])
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running app (default: start one)")
    args = parser.parse_args()
    with (contextlib.nullcontext(args.url) if args.url else
          serve_app(Path("/tmp/lune-screenshots-app.log"), timeout=300)) as url:
        drive(url)


if __name__ == "__main__":
    main()
