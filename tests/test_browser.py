"""A real headless Chromium opens tl_spec pages from disk: they render, drill down, stay offline.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and Playwright from PyPI, which
drives that browser (``executable_path``; Playwright's own browser download is not used). With
``CI`` set, a missing browser or Playwright FAILS these tests; locally they are skipped with the
reason. ``test_dump_dom_*`` needs only the browser (Chromium's ``--dump-dom``/``--screenshot``).

Screenshots go to pytest's tmp dir, and to ``tests/artifacts/`` when ``TL_SPEC_ARTIFACTS`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_viz import (  # noqa: F401 (session fixtures shared with test_viz)
    TRICKY_TOKENS,
    tricky_patterns,
    viz_files,
    viz_report,
    viz_si,
    viz_twins,
)
from tl_spec.viz import head_grid
from tl_spec.viz.html import reset_notebook_bundle

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must provide it: see the CI setup for the browser tests)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary (TL_SPEC_CHROMIUM, or chromium on PATH)."""
    path = os.environ.get("TL_SPEC_CHROMIUM") or shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not path:
        _missing("no chromium browser: install it with `apt-get install -y chromium`")
    return path


@pytest.fixture(scope="module")
def browser(chromium):
    """A Playwright Chromium (the system binary), shared by this module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed: pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=FLAGS)
        yield b
        b.close()


class Watch:
    """A page that records console errors, page errors and every request that is not file://."""

    def __init__(self, browser, width: int = 1400, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.remote: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r):
            if r.request.url.startswith("file://"):
                r.continue_()
            else:
                self.remote.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.remote == [], self.remote


def keep(page, tmp_path: Path, name: str, **kwargs) -> Path:
    """Screenshot into the tmp dir (and tests/artifacts/ when TL_SPEC_ARTIFACTS is set)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), **kwargs)
    assert shot.stat().st_size > 10_000
    if os.environ.get("TL_SPEC_ARTIFACTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / name)
    return shot


@pytest.fixture(scope="module")
def report(viz_report):
    return viz_report


def test_report_renders_offline_and_drills_down(browser, report, tmp_path):
    w = Watch(browser)
    page = w.page
    page.goto(report.as_uri())
    grid = page.locator("#grid-1")
    page.wait_for_selector('#grid-1 .tlspec-drill[data-state="ready"] .tlspec-views canvas')
    assert grid.locator(".tlspec-cell").count() == 3 * 8
    first = grid.get_attribute("data-selected")
    # hover: the exact value
    cell = grid.locator('.tlspec-cell[data-l="1"][data-h="2"]')
    cell.hover()
    label = cell.get_attribute("aria-label")
    assert grid.locator(".tlspec-hover").inner_text() == label and label.startswith("L1H2 = 0.")
    # click: the drill-down follows, with a fresh CircuitsVis canvas
    target = "L1H2" if first != "L1H2" else "L2H5"
    grid.locator(f'.tlspec-cell[aria-label^="{target} "]').click()
    page.wait_for_selector(f'#grid-1[data-selected="{target}"] .tlspec-drill[data-state="ready"] '
                           ".tlspec-views canvas")
    assert grid.locator(".tlspec-drill-title").inner_text() == target
    assert grid.locator(f'.tlspec-cell[aria-label^="{target} "]').get_attribute("aria-pressed") == "true"
    page.wait_for_selector(f'#grid-1 .tlspec-drill[data-layer="L{target[1]}"] .tlspec-layer-view canvas')
    assert grid.locator(".tlspec-layer-view canvas").count() >= 8  # AttentionHeads: every head
    # twins: base, tuned and their difference side by side
    page.wait_for_selector('#grid-2 .tlspec-drill[data-state="ready"] .tlspec-views canvas')
    twin = page.locator("#grid-2")
    twin.locator('.tlspec-cell[aria-label^="L0H2 "]').click()
    page.wait_for_selector('#grid-2[data-selected="L0H2"] .tlspec-drill[data-state="ready"]')
    caps = twin.locator(".tlspec-view-cap b").all_inner_texts()
    assert caps == ["base", "tuned", "tuned − base"]
    assert twin.locator(".tlspec-views canvas").count() == 3
    page.wait_for_selector('#grid-2 .tlspec-drill[data-layer="L0"]')
    page.wait_for_timeout(300)
    keep(page, tmp_path, "report.png", full_page=True)
    w.clean()
    page.close()


def test_tricky_tokens_and_nan_render(browser, tmp_path):
    scores = np.array([[0.5, np.nan, -0.25], [np.inf, 0.0, 1.0]])
    grid = head_grid(scores, patterns=tricky_patterns(2, 3), title="</script> & <b>title</b>")
    path = grid.save(tmp_path / "tricky.html")
    w = Watch(browser, 1100, 800)
    page = w.page
    page.goto(path.as_uri())
    page.wait_for_selector('.tlspec-drill[data-state="ready"] .tlspec-views canvas')
    assert page.locator(".tlspec-grid-title").inner_text() == "</script> & <b>title</b>"
    assert page.locator("b", has_text="title").count() == 0  # shown as text, not markup
    page.locator(".tlspec-tokens summary").click()
    shown = page.locator(".tlspec-toklist li").evaluate_all(
        "els => els.map(e => e.lastChild.textContent)")
    assert shown == TRICKY_TOKENS
    missing = page.locator(".tlspec-cell.tlspec-missing")
    assert missing.count() == 2 and missing.first.get_attribute("aria-label") == "L0H1 = missing"
    missing.first.click()
    page.wait_for_selector('.tlspec-grid[data-selected="L0H1"] .tlspec-drill[data-state="ready"]')
    assert page.locator(".tlspec-drill-value").inner_text() == "score missing"
    keep(page, tmp_path, "tricky_tokens.png", full_page=True)
    w.clean()
    page.close()


def test_notebook_output_renders_offline(browser, viz_si, tmp_path):
    """The grid's _repr_html_ inserted the way JupyterLab does (innerHTML, scripts re-created)."""
    model, si = viz_si
    reset_notebook_bundle()  # as in a fresh kernel: this first grid output carries the bundle
    fragment = json.dumps(head_grid(si, model=model)._repr_html_()).replace("<", "\\u003c")
    host = ("<!DOCTYPE html><meta charset=utf-8><title>notebook</title>"
            '<div class="jp-OutputArea-output" id="out"></div>'
            f'<script type="application/json" id="frag">{fragment}</script>'
            "<script>const out = document.getElementById('out');"
            "out.innerHTML = JSON.parse(document.getElementById('frag').textContent);"
            "for (const old of out.querySelectorAll('script')) {"
            "  const s = document.createElement('script');"
            "  for (const a of old.attributes) s.setAttribute(a.name, a.value);"
            "  s.textContent = old.textContent; old.replaceWith(s); }</script>")
    path = tmp_path / "notebook.html"
    path.write_text(host, encoding="utf-8")
    w = Watch(browser, 1200, 900)
    w.page.goto(path.as_uri())
    w.page.wait_for_selector('.tlspec-drill[data-state="ready"] .tlspec-views canvas')
    w.page.locator('.tlspec-cell[aria-label^="L0H3 "]').click()
    w.page.wait_for_selector('.tlspec-grid[data-selected="L0H3"] .tlspec-drill[data-state="ready"]')
    keep(w.page, tmp_path, "notebook_cell.png", full_page=True)
    w.clean()
    w.page.close()


def test_dump_dom_deep_link_and_screenshot(chromium, report, tmp_path):
    """Chromium alone (no Playwright): the page renders and a #grid-1:L2H5 link selects that head."""
    url = report.as_uri() + "#grid-1:L2H5"
    shot = tmp_path / "dump_dom.png"
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=8000", "--window-size=1400,1000",
                          f"--screenshot={shot}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'id="grid-1"' in dom and 'data-selected="L2H5"' in dom
    assert "<canvas" in dom and 'data-state="ready"' in dom
    assert shot.stat().st_size > 10_000
    if os.environ.get("TL_SPEC_ARTIFACTS"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "report_cli.png")

