"""Report and figure polish: CircuitsVis loaded once per notebook and page, numbers rounded,
axis labels on every chart, legends that match what is drawn, papers cited.

The browser tests use the headless Chromium and Playwright set-up of ``test_browser.py``
(skipped locally without them, failing under ``CI``).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import tl_spec
from test_browser import Watch, browser, chromium, keep  # noqa: F401 (fixtures)
from test_viz import viz_files, viz_report, viz_si, viz_twins  # noqa: F401 (fixtures)
from tl_spec.prompts import E06_TEXTS, STANDARD_10
from tl_spec.viz import (
    delta_si_figure,
    head_grid,
    perplexity_slope_figure,
    probe_response_figure,
    si_by_layer_figure,
    stability_figure,
    write_report,
)
from tl_spec.viz.charts import line_chart
from tl_spec.viz.grid import exact_value
from tl_spec.viz.html import circuitsvis_bundle, notebook_runtime, page, reset_notebook_bundle

BUNDLE_MARK = "var CircuitsVis="  # once in the wheel's bundle, nowhere else
BUNDLE_BYTES = len(circuitsvis_bundle().encode("utf-8"))

# A number in text: not glued to a word (L0H3, hashes) nor inside a longer number.
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def significant_digits(token: str) -> int:
    """Significant digits of a number as written ("0.00120" -> 3, "15,530" -> 4, "1.5e+04" -> 2)."""
    mantissa = re.split("e", token.lstrip("+-−").replace(",", ""))[0]
    if "." in mantissa:
        return len(mantissa.replace(".", "").lstrip("0")) or 1
    return len(mantissa.lstrip("0").rstrip("0")) or 1  # trailing zeros of an integer: ambiguous


def test_significant_digits_counts_what_it_should():
    assert [significant_digits(t) for t in ("0.7041309750771352", "0.00120", "15,530", "-3.03",
                                            "1.553e+04", "100", "0")] == [16, 3, 4, 3, 4, 1, 1]
    text = "L0H3 score 0.7041309750771352 at 715065bab181f46b, 2.5 % and 1,234,567"
    assert NUMBER.findall(text) == ["0.7041309750771352", "2.5", "1,234,567"]


# ---------------------------------------------------------------- CircuitsVis once

def _notebook_host(outputs: list[str], *, late: str | None = None) -> str:
    """A page that inserts each output the way JupyterLab does (innerHTML, scripts re-created),
    in order; ``late`` is inserted 600 ms later (a bundle that arrives after its grid)."""
    frag = json.dumps({"outputs": outputs, "late": late}).replace("<", "\\u003c")
    return ("<!DOCTYPE html><meta charset=utf-8><title>notebook</title><div id=cells></div>"
            f'<script type="application/json" id="frag">{frag}</script>'
            "<script>const data = JSON.parse(document.getElementById('frag').textContent);"
            "function insert(html) { const out = document.createElement('div');"
            "  out.className = 'jp-OutputArea-output'; out.innerHTML = html;"
            "  document.getElementById('cells').appendChild(out);"
            "  for (const old of out.querySelectorAll('script')) {"
            "    const s = document.createElement('script');"
            "    for (const a of old.attributes) s.setAttribute(a.name, a.value);"
            "    s.textContent = old.textContent; old.replaceWith(s); } }"
            "data.outputs.forEach(insert);"
            "if (data.late) setTimeout(() => insert(data.late), 600);</script>")


def _watch_console(page) -> list[str]:
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"{m.type}: {m.text}"))
    return seen


def _bundle_scripts(page) -> int:
    return page.evaluate("""m => Array.from(document.scripts)
        .filter(s => s.type !== "application/json" && s.textContent.includes(m)).length""",
                         BUNDLE_MARK)


@pytest.fixture(scope="module")
def three_grids(viz_si):
    """Three head grids of one kernel, as their _repr_html_ outputs (a fresh kernel)."""
    model, si = viz_si
    grids = [head_grid(si, model=model, grid_id="g1"),
             head_grid(si.per_head * 2.0, model=model, title="doubled", grid_id="g2"),
             head_grid(-si.per_head, model=model, prompt=STANDARD_10[3], title="negated",
                       grid_id="g3")]
    reset_notebook_bundle()
    outputs = [g._repr_html_() for g in grids]
    return grids, outputs


def test_notebook_outputs_carry_the_bundle_once(three_grids):
    grids, outputs = three_grids
    assert [o.count(BUNDLE_MARK) for o in outputs] == [1, 0, 0]
    total = len("".join(outputs).encode("utf-8"))
    assert total < BUNDLE_BYTES + 250_000  # three grids: one bundle, not three (~1.3 MB each)
    assert all(o.count('class="tlspec-patterns"') == 1 for o in outputs)
    # a grid without patterns never carries it, neither in a notebook nor on its own page
    plain = head_grid([[0.1, 0.2]])
    reset_notebook_bundle()
    assert BUNDLE_MARK not in plain._repr_html_() and BUNDLE_MARK not in plain.html()
    assert BUNDLE_MARK not in plain.to_page()
    assert notebook_runtime(needs_bundle=True).count(BUNDLE_MARK) == 1  # still the first one
    assert page("t", "<p>x</p>").count(BUNDLE_MARK) == 1


def test_notebook_with_three_grids_loads_circuitsvis_once(browser, three_grids, tmp_path):
    grids, outputs = three_grids
    path = tmp_path / "notebook.html"
    path.write_text(_notebook_host(outputs), encoding="utf-8")
    w = Watch(browser, 1300, 900)
    console = _watch_console(w.page)
    w.page.goto(path.as_uri())
    for gid in ("g1", "g2", "g3"):
        w.page.wait_for_selector(f'#{gid} .tlspec-drill[data-state="ready"] .tlspec-views canvas')
    assert _bundle_scripts(w.page) == 1
    # drill-down still works in a grid that only waited for the bundle
    w.page.locator('#g3 .tlspec-cell[aria-label^="L1H2 "]').click()
    w.page.wait_for_selector('#g3[data-selected="L1H2"] .tlspec-drill[data-state="ready"] '
                             ".tlspec-views canvas")
    assert w.page.locator("#g3 .tlspec-drill-value").inner_text() == \
        f"score {exact_value(-float(grids[0].scores[1, 2]))}"
    w.page.wait_for_timeout(300)
    keep(w.page, tmp_path, "notebook_three_grids.png", full_page=True)
    assert not [m for m in console if "already registered" in m], console[:5]
    w.clean()
    w.page.close()


def test_rerun_cell_and_late_bundle_register_nothing_twice(browser, three_grids, tmp_path):
    """A re-run cell sends the bundle again (guarded: no second registration), and a grid
    inserted before the bundle waits for it (a re-opened notebook renders in order anyway)."""
    grids, outputs = three_grids
    reset_notebook_bundle()
    again = grids[0]._repr_html_()
    assert again.count(BUNDLE_MARK) == 1
    path = tmp_path / "rerun.html"
    path.write_text(_notebook_host([outputs[1], outputs[2], again], late=outputs[0]),
                    encoding="utf-8")
    w = Watch(browser, 1300, 900)
    console = _watch_console(w.page)
    w.page.goto(path.as_uri())
    for gid in ("g2", "g3"):
        w.page.wait_for_selector(f'#{gid} .tlspec-drill[data-state="ready"] .tlspec-views canvas')
    w.page.wait_for_function("document.querySelectorAll('#g1').length === 2")
    w.page.wait_for_timeout(1500)
    assert _bundle_scripts(w.page) == 2  # two copies sent, one ran
    assert not [m for m in console if "already registered" in m], console[:5]
    w.clean()
    w.page.close()


def test_unguarded_bundle_twice_does_warn(browser, tmp_path):
    """The control: the wheel's bundle run twice registers its kernels twice (what the guard
    prevents), so the console check above can fail."""
    from tl_spec.viz.html import bundle_path

    raw = re.sub(r"//# sourceMappingURL=\S*", "", bundle_path().read_text(encoding="utf-8"))
    raw = raw.replace("</script", "<\\/script")
    path = tmp_path / "twice.html"
    path.write_text(f"<!DOCTYPE html><meta charset=utf-8><script>{raw}</script>"
                    f"<script>{raw}</script><div id=x></div><script>"
                    "CircuitsVis.render('x', CircuitsVis.AttentionPattern, {attention: [[1]], "
                    "tokens: ['a']});</script>", encoding="utf-8")
    w = Watch(browser, 600, 400)
    console = _watch_console(w.page)
    w.page.goto(path.as_uri())
    w.page.wait_for_timeout(1500)
    twice = len([m for m in console if "already registered" in m])
    path.write_text(path.read_text(encoding="utf-8").replace(f"<script>{raw}</script>", "", 1),
                    encoding="utf-8")
    console.clear()
    w.page.goto(path.as_uri())
    w.page.wait_for_timeout(1500)
    once = len([m for m in console if "already registered" in m])
    assert twice > 100 and once == 0, (twice, once)
    w.page.close()


# ---------------------------------------------------------------- the report

@pytest.fixture(scope="module")
def full_report(viz_files, tmp_path_factory):
    """SI, ΔSI, probe, sweep, sensitivity and a comparison in one report."""
    model = tl_spec.zoo.load("base-gqa")
    other = tl_spec.zoo.load("base-mha")
    probe = tl_spec.perturbation_probe(model, STANDARD_10[:4], sigma=0.05, n_resamples=200)
    sweep = tl_spec.probe_sweep(model, STANDARD_10[:4], sigmas=(0, 0.1, 0.2), seeds=(42,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"sigmas": (0, 0.1, 0.2), "seeds": (42, 123, 7)}
        sens = tl_spec.noise_sensitivity(model, E06_TEXTS[:4], **kw)
        sens_b = tl_spec.noise_sensitivity(other, E06_TEXTS[:4], **kw)
    cmp = tl_spec.compare_sensitivity(sens, sens_b)
    path = write_report([*viz_files, probe, sweep, sens, cmp],
                        tmp_path_factory.mktemp("polish_report"))
    return path, {"probe": probe, "sens": sens, "cmp": cmp}


def test_report_names_units_and_papers(full_report):
    path, results = full_report
    html = path.read_text(encoding="utf-8")
    for text in ("PPL per unit σ", "nats/token per unit σ", "Appendix B of D&#x27;Elia (2026)",
                 "Table 2 of D&#x27;Elia (2026)", "Table 5 of D&#x27;Elia (2026)",
                 "Table 4 of D&#x27;Elia (2026)",
                 "“Alignment Robustness Depends More on Training than Architecture.”"):
        assert text in html, text
    assert "GUIDE" not in html and "../shared" not in html
    assert html.count('<section class="r-refs">') == 1 and 'id="ref-delia2026"' in html
    assert "Appendix B" not in html.replace("Appendix B of D&#x27;Elia (2026)", "")
    assert html.count(BUNDLE_MARK) == 1


def test_report_without_patterns_has_no_bundle(viz_si, tmp_path):
    si = viz_si[1]
    moved = type(si).from_dict({**si.to_dict(), "provenance": {**si.provenance,
                                                                "model": "/no/such/ckpt"}})
    html = write_report([moved], tmp_path).read_text(encoding="utf-8")
    assert BUNDLE_MARK not in html and "Grid only" in html


def test_report_numbers_and_charts_in_the_browser(browser, full_report, tmp_path):
    path, results = full_report
    w = Watch(browser)
    w.page.goto(path.as_uri())
    w.page.wait_for_selector('#grid-1 .tlspec-drill[data-state="ready"] .tlspec-views canvas')
    text = w.page.evaluate("""() => {
        const body = document.body.cloneNode(true);
        body.querySelectorAll('script, style').forEach(e => e.remove());
        body.querySelectorAll('*').forEach(e => e.append(' '));  // table cells stay apart
        const attrs = Array.from(document.querySelectorAll('[title], [aria-label], [data-text]'))
            .map(e => [e.title, e.getAttribute('aria-label'), e.dataset.text].join(' '));
        return body.textContent + ' ' + attrs.join(' ');
    }""")
    numbers = NUMBER.findall(text)
    assert len(numbers) > 300  # the tables, grids, charts and provenance were all read
    too_long = sorted({n for n in numbers if significant_digits(n) > 6})
    assert too_long == [], too_long[:10]
    header = w.page.locator("#grid-1 .tlspec-drill-value").inner_text()
    assert re.fullmatch(r"score -?\d\.\d{1,4}|score -?0\.0\d{1,4}", header), header
    charts = w.page.evaluate("""() => Array.from(document.querySelectorAll('figure.r-chart'))
        .map(f => ({x: f.dataset.xlabel, y: f.dataset.ylabel,
                    texts: Array.from(f.querySelectorAll('svg text')).map(t => t.textContent),
                    box: f.querySelector('svg').getBoundingClientRect().height}))""")
    assert len(charts) == 3  # probe by layer, sweep, sensitivity; the comparison has none
    for c in charts:
        assert c["x"] and c["y"] and c["x"] in c["texts"] and c["y"] in c["texts"], c
        assert c["box"] > 100
    sens_chart = next(c for c in charts if c["y"] == "perplexity (PPL)")
    assert {"seed 42", "seed 123", "seed 7"} <= set(sens_chart["texts"])
    # no blank tail: the page ends with the report's footer
    tail = w.page.evaluate("""() => document.documentElement.scrollHeight -
        (document.querySelector('.r-foot').getBoundingClientRect().bottom + window.scrollY)""")
    assert 0 <= tail < 60, tail
    keep(w.page, tmp_path, "report_polish.png", full_page=True)
    w.clean()
    w.page.close()


def test_line_chart_ticks_inside_the_data_and_deterministic():
    a = line_chart([0, 0.1, 0.2], {"seed 42": [431.7, 1049.2, 3377.9]},
                   xlabel="noise σ", ylabel="perplexity (PPL)")
    assert a == line_chart([0, 0.1, 0.2], {"seed 42": [431.7, 1049.2, 3377.9]},
                           xlabel="noise σ", ylabel="perplexity (PPL)")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", a)
    assert ">noise σ</text>" in a and ">perplexity (PPL)</text>" in a and "seed 42" in texts
    shown = [t for t in texts if re.fullmatch(r"[−\d.,]+", t)]
    ticks = [float(t.replace("−", "-").replace(",", "")) for t in shown]
    assert len(ticks) >= 6 and 3377.9 not in ticks and 431.7 not in ticks  # not the extremes
    assert all(significant_digits(t) <= 3 for t in shown), shown  # round numbers
    assert "<style" not in a and "<?xml" not in a


# ---------------------------------------------------------------- paper figures

def test_every_figure_has_axis_labels_and_honest_legends(viz_twins):
    _, _, delta = viz_twins
    figs = [delta_si_figure({"twin": delta}), perplexity_slope_figure({"a": [16.7, 157.0, 46.4]}),
            probe_response_figure({"a": 2.0}), si_by_layer_figure({"a": [0.3, 0.5]}),
            stability_figure({"a": [0.9, 0.8]})]
    for fig, _ in figs:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel(), (ax.get_xlabel(), ax.get_ylabel())
    # ΔSI: each legend swatch is the bar it explains (colour and fill), no grey stand-in
    fig, data = figs[0]
    ax = fig.axes[0]
    bar = ax.patches[0]
    swatches = ax.get_legend().get_patches()
    sig = delta.interval.low > 0 or delta.interval.high < 0
    assert len(swatches) == 1 and data.notes["legend"] == [
        f"{'decrease' if delta.delta_pct < 0 else 'increase'}, 95% CI "
        f"{'excludes' if sig else 'includes'} 0"]
    assert np.allclose(swatches[0].get_edgecolor()[:3], bar.get_edgecolor()[:3])
    assert np.allclose(swatches[0].get_facecolor()[:3], bar.get_facecolor()[:3])
    # slopes: the per-seed marks are in the legend, next to the mean; units on the axis
    fig, data = figs[1]
    assert data.notes["legend"] == ["value", "mean"]
    assert "PPL per unit σ" in fig.axes[0].get_ylabel()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["value", "mean"]


def test_slope_figure_from_results_says_per_seed(full_report):
    _, results = full_report
    fig, data = perplexity_slope_figure(results["sens"])
    assert data.notes["legend"] == ["per-seed slope", "mean"]
    assert len(data.series[next(iter(data.series))]["y"]) == 3


def test_notebook_bundle_follows_cells_and_reruns(monkeypatch):
    """Kernel side: one bundle per kernel; the cell that carried it sends it again when re-run
    (its old output, and the bundle with it, is replaced); Colab (a frame per output) always."""
    import sys
    import types

    parent = {"header": {"msg_id": "m1"}, "metadata": {"cellId": "cell-a"}}
    shell = types.SimpleNamespace(get_parent=lambda: parent)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))

    def sent(cell: str, msg: str) -> int:
        parent.update(header={"msg_id": msg}, metadata={"cellId": cell})
        return notebook_runtime(needs_bundle=True).count(BUNDLE_MARK)

    reset_notebook_bundle()
    assert [sent("cell-a", "m1"), sent("cell-a", "m1"), sent("cell-b", "m2"),
            sent("cell-a", "m3"), sent("cell-b", "m4"), sent("cell-a", "m3")] == [1, 0, 0, 1, 0, 0]
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert [sent("cell-c", "m5"), sent("cell-c", "m5")] == [1, 1]
    reset_notebook_bundle()
