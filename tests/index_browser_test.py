"""The index in a real browser (headless Chromium from the system, driven by Playwright; nothing downloaded):
a 10,000-input index's first page opens without console errors, fast, its images decode, and the links
between pages and from the lists lead where they say.

Skipped, with the reason, where there is no Chromium (``/usr/bin/chromium``, or PULSE_JAX_CHROMIUM) or no
Playwright; CI sets PULSE_JAX_REQUIRE_BROWSER=1, under which a missing browser fails instead."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulse_jax import reports

CHROMIUM = os.environ.get("PULSE_JAX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
MISSING = [what for what, ok in (("Chromium (apt-get install chromium)", Path(CHROMIUM).is_file()),
                                 ("Playwright (pip install playwright)", importlib.util.find_spec("playwright")))
           if not ok]
if MISSING and os.environ.get("PULSE_JAX_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"the browser test must run here (PULSE_JAX_REQUIRE_BROWSER=1), but {', '.join(MISSING)} is "
                       "missing")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"no browser to test the index in: {', '.join(MISSING)} missing")

N = 10_000
# Offline, quiet Chromium: this machine's network is closed, and Chromium's background services would
# knock at it at every start.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A 10,000-input run's index: entries every 9th of which missed eps, 12 failures, and the sheets of the
    first two pages (what a browser loads from them)."""
    out = tmp_path_factory.mktemp("run")
    names = [f"face{i:05d}" for i in range(N)]
    entries = {}
    for i, name in enumerate(names):
        entries[name] = {"input": name, "outputs": {"image": str(out / f"{name}.png"),
                                                    "sheet": str(out / f"{name}_sheet.png")},
                         "best_seed": 0, "success": i % 9 != 0, "degradation": "bicubic",
                         "seeds": [{"seed": 0, "min_l2": 1e-3, "best_loss": 0.1, "best_step": 7}]}
    for i, name in enumerate(names[:2 * reports.PAGE_SIZE]):
        pixels = np.random.default_rng(i).integers(0, 255, (24, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / f"{name}_sheet.png")
    run = {"failed": [{"input": f"bad{i}.png", "error": f"bad{i}.png: cannot read image"} for i in range(12)],
           "skipped": [], "searched": names}
    report = reports.build_report({"config": {"steps": 100}, "seeds": 1, "resolution": 1024}, entries, run)
    reports.IndexWriter(out).write(report)
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url):
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
    page.goto(url, wait_until="load")
    return page, problems


def test_the_first_page_of_a_large_index_opens_fast_and_clean(browser, index):
    """Opened twice (the first also warms the browser's own caches); "well under a second": the page holds
    PAGE_SIZE sheets whatever the run's size (tests/reports_test.py), measured here at ~0.1 s."""
    url = (index / "index.html").as_uri()
    open_page(browser, url)[0].close()
    page, problems = open_page(browser, url)
    timing = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())")
    import json

    loaded_ms = json.loads(timing)["domContentLoadedEventEnd"]
    assert loaded_ms < 1000, loaded_ms
    assert page.locator("section").count() == reports.PAGE_SIZE
    assert f"{N} inputs" in page.locator("h1").inner_text() and "12 failed" in page.locator("nav").first.inner_text()
    # Lazy images load as they come into view: scroll through, then every one has decoded.
    for y in range(0, page.evaluate("document.body.scrollHeight"), 600):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(20)
    page.wait_for_load_state("networkidle")
    decoded = page.evaluate("Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth)))")
    assert len(decoded) == reports.PAGE_SIZE and min(decoded) == 64
    assert problems == [], problems
    page.close()


def test_links_between_pages_and_from_the_lists_lead_where_they_say(browser, index):
    page, problems = open_page(browser, (index / "index.html").as_uri())
    page.click("a[rel=next]")
    page.wait_for_load_state("load")
    assert page.url.endswith("index-2.html") and "page 2" in page.locator("h1").inner_text()
    page.click("a[rel=prev]")
    page.wait_for_load_state("load")
    assert page.url.endswith("/index.html")
    page.click("text=50")  # the last page, from the first page's page numbers
    page.wait_for_load_state("load")
    assert page.url.endswith("index-50.html") and page.locator("section").count() == reports.PAGE_SIZE
    problems.clear()  # page 50's sheets were not made for this test: its lazy images did not load
    page.goto((index / "index-missed.html").as_uri())
    page.click("text=face00207")  # 207 = 9 * 23 missed eps; on page 2
    page.wait_for_load_state("load")
    assert page.url.endswith("index-2.html#face00207")
    assert page.evaluate("document.getElementById('face00207').getBoundingClientRect().top") < 50  # scrolled to it
    # The sheets in view load lazily: leaving before they have would cancel them, reported as failed loads.
    page.wait_for_load_state("networkidle")
    page.goto((index / "index-failed.html").as_uri())
    assert page.locator("li").count() == 12
    assert problems == [], problems  # the list pages, and page 2 where a link led
    page.close()
