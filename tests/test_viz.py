"""tl_spec.viz without a browser: safe embedding, head grids, patterns, reports, figures.

The browser half (a real headless Chromium opening the pages) is in ``test_browser.py``; it
reuses the session fixtures defined here (``viz_si``, ``viz_twins``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import tl_spec
from tl_spec.errors import TLSpecError
from tl_spec.prompts import STANDARD_10
from tl_spec.viz import (
    PatternSet,
    capture_patterns,
    delta_si_figure,
    head_grid,
    perplexity_slope_figure,
    probe_response_figure,
    save,
    si_by_layer_figure,
    stability_figure,
    write_report,
)
from tl_spec.viz.html import circuitsvis_bundle, page, reset_notebook_bundle, script_json
from tl_spec.viz.report import add_report_parser, run_report
from tl_spec.viz.sections import SECTION_RENDERERS, Section, register_section

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TRICKY_TOKENS = ["<bos>", "</script>", "&amp; &", "\"q\" 'q'", "ünï 日本 ✓", "<!--", "<b>x</b>",
                 " \u2028 "]


# ---------------------------------------------------------------- shared session fixtures
# test_browser.py imports these fixtures; pytest then holds a second definition of each, so the
# values are memoized here to build every model, result and report once per session.
_MEMO: dict[str, Any] = {}


def _once(key: str, build: Any) -> Any:
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


@pytest.fixture(scope="session")
def viz_si(tl_model):
    """(model, SIResult) for the tiny GQA checkpoint (3 layers x 8 heads)."""
    def build():
        model = tl_model("llama-gqa", "bridge")
        return model, tl_spec.specialization_index(model, STANDARD_10)

    return _once("si", build)


@pytest.fixture(scope="session")
def viz_twins(tiny_checkpoints, tmp_path_factory):
    """(base, tuned, DeltaResult): the MHA checkpoint and its twin with shared heads."""
    from tl_spec.zoo.tiny import build_twin_with_shared_heads

    def build():
        root = tmp_path_factory.mktemp("viz_twin")
        twin = build_twin_with_shared_heads(tiny_checkpoints["llama-mha"], root / "twin",
                                            layers=[0, 2], heads=[1, 2, 3])
        base = tl_spec.load_model(tiny_checkpoints["llama-mha"])
        tuned = tl_spec.load_model(twin)
        return base, tuned, tl_spec.delta_si(base, tuned, STANDARD_10, n_resamples=200)

    return _once("twins", build)


@pytest.fixture(scope="session")
def viz_files(viz_si, viz_twins, tmp_path_factory):
    """The two results written as JSON files (their provenance names the local checkpoints)."""
    def build():
        root = tmp_path_factory.mktemp("viz_results")
        viz_si[1].to_json(root / "si.json")
        viz_twins[2].to_json(root / "delta.json")
        return root / "si.json", root / "delta.json"

    return _once("files", build)


@pytest.fixture(scope="session")
def viz_report(viz_files, tmp_path_factory):
    """The report of both files; the models come from the directories their provenance names."""
    return _once("report", lambda: write_report(list(viz_files),
                                                tmp_path_factory.mktemp("viz_report")))


def tricky_patterns(n_layers: int = 2, n_heads: int = 3, seed: int = 0) -> PatternSet:
    """Synthetic causal patterns over tokens that break naive HTML embedding."""
    rng = np.random.default_rng(seed)
    n = len(TRICKY_TOKENS)
    raw = np.tril(rng.random((n_layers, n_heads, n, n)) ** 4) + np.eye(n) * 1e-3
    return PatternSet.from_array(TRICKY_TOKENS, raw / raw.sum(-1, keepdims=True),
                                 label="synthetic </script> & model", prompt="</script> & ü")


# ---------------------------------------------------------------- safe embedding

def test_script_json_escapes_markup_and_drops_nan():
    text = script_json({"t": TRICKY_TOKENS, "x": float("nan"), "y": [math.inf, 1.5]})
    assert not set("<>&\u2028") & set(text)
    back = json.loads(text)
    assert back == {"t": TRICKY_TOKENS, "x": None, "y": [None, 1.5]}


def test_page_inlines_the_wheel_bundle_once_and_fetches_nothing():
    doc = page("t", "<p>x</p>")
    assert doc.count("var CircuitsVis=") == 1
    assert "sourceMappingURL" not in doc and "unpkg.com" not in doc
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", doc)
    assert 'http-equiv="Content-Security-Policy"' in doc and "connect-src &#x27;none&#x27;" in doc
    # two scripts (the bundle, the grid runtime), each closed only at its end
    assert doc.lower().count("</script") == 2
    assert "</script" not in circuitsvis_bundle().lower()


def test_missing_bundle_is_a_clear_error(monkeypatch, tmp_path):
    import tl_spec.viz.html as vh

    vh.circuitsvis_bundle.cache_clear()
    monkeypatch.setattr(vh, "bundle_path", lambda: tmp_path / "nope.js")
    try:
        with pytest.raises(TLSpecError, match="reinstall circuitsvis"):
            vh.circuitsvis_bundle()
    finally:
        monkeypatch.undo()
        vh.circuitsvis_bundle.cache_clear()


# ---------------------------------------------------------------- head grid

def test_grid_cells_labels_values_and_missing():
    scores = np.array([[0.25, -0.5, 0.125], [np.nan, 0.0, 1.0]])
    grid = head_grid(scores, title="toy </script>")
    html = grid.html()
    cells = re.findall(r'<button type="button" class="tlspec-cell[^"]*"[^>]*>', html)
    assert len(cells) == 6
    assert 'aria-label="L0H1 = -0.5"' in html and 'title="L1H2 = 1"' in html  # 4 significant digits
    assert 'aria-label="L1H0 = missing"' in html and "tlspec-missing" in html
    assert "toy &lt;/script&gt;" in html and "toy </script>" not in html
    assert grid.scale.diverging and grid.scale.vmin == -1.0 and grid.scale.vmax == 1.0
    assert grid.value("L0H2") == 0.125 and math.isnan(grid.value("L1H0"))
    assert grid.initial == (1, 2)  # largest |score|
    assert not head_grid(np.abs(np.nan_to_num(scores))).scale.diverging
    assert 'data-state="no-patterns"' in html and "Grid only" in html


def test_grid_html_is_deterministic_and_inline_ready(viz_si):
    model, si = viz_si
    a = head_grid(si, model=model).html()
    b = head_grid(si, model=model).html()
    assert a == b
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", a)  # no uuids
    grid = head_grid(si, model=model)
    reset_notebook_bundle()  # the kernel's first grid output carries the bundle, later ones not
    inline = grid._repr_html_()
    assert inline.count("var CircuitsVis=") == 1 and inline.count('class="tlspec-patterns"') == 1
    assert grid._repr_html_().count("var CircuitsVis=") == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"scores": [1.0, 2.0]}, r"\[layers, heads\] array"),
    ({"scores": "abc"}, r"\[layers, heads\] array"),
    ({"scores": [[1.0]], "decimals": 7}, "decimals must be"),
    ({"scores": [[1.0]], "prompt": "hi"}, "prompt= needs model="),
    ({"scores": [[1.0]], "patterns": "x"}, "PatternSet"),
    ({"scores": [[1.0]], "model": ("a", "b", "c")}, "one model or a"),
    ({"scores": [[1.0]], "model": "/no/such/dir", "max_length": 1}, "max_length for a drill-down"),
])
def test_grid_bad_input(kwargs, message):
    with pytest.raises(TLSpecError, match=message):
        head_grid(**kwargs)


def test_grid_checks_the_model_before_running_it(viz_si, viz_twins):
    model, si = viz_si
    base, tuned, delta = viz_twins
    with pytest.raises(TLSpecError, match="the model has 3 x 8"):
        head_grid(np.zeros((4, 8)), model=model)
    with pytest.raises(TLSpecError, match=r"model=\(base, tuned\)"):
        head_grid(delta, model=base)
    with pytest.raises(TLSpecError, match="either model="):
        head_grid(si, model=model, patterns=tricky_patterns(3, 8))
    with pytest.raises(TLSpecError, match="non-empty string"):
        head_grid(si, model=model, prompt=[""])


def test_pattern_set_round_trip_and_key():
    ps = tricky_patterns()
    again = tricky_patterns()
    other = tricky_patterns(seed=1)
    assert ps.key == again.key != other.key
    assert ps.shape == (2, 3, len(TRICKY_TOKENS))
    rng = np.random.default_rng(0)
    n = len(TRICKY_TOKENS)
    raw = np.tril(rng.random((2, 3, n, n)) ** 4) + np.eye(n) * 1e-3
    want = raw / raw.sum(-1, keepdims=True)
    assert np.abs(ps.decode() - np.tril(want)).max() <= 0.5e-3 + 1e-12
    record = ps.to_json()
    assert record["n"] == n and record["scale"] == 1000 and len(record["layers"]) == 2
    with pytest.raises(TLSpecError, match="n = len"):
        PatternSet.from_array(["a"], np.ones((1, 1, 2, 2)))


def test_captured_patterns_equal_the_models_own(viz_si):
    model, _ = viz_si
    prompt = STANDARD_10[0]
    ps = capture_patterns(model, prompt, label="gqa", decimals=4, max_length=64)
    tokens = model.to_tokens(prompt)
    _, cache = model.run_with_cache(tokens)
    ref = np.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0].float().numpy()
                    for layer in range(model.cfg.n_layers)])
    assert ps.shape == ref.shape[:3]
    assert np.abs(ps.decode() - np.tril(ref)).max() <= 0.5e-4 + 1e-6
    assert "".join(ps.tokens[1:]) == prompt  # byte-level tokens decode back to the prompt


def test_grid_for_si_and_for_twins(viz_si, viz_twins):
    model, si = viz_si
    grid = head_grid(si, model=model)
    assert grid.shape == (3, 8) and not grid.twins and len(grid.prompts) == 1
    assert grid.prompts[0]["base"].prompt == STANDARD_10[0]
    base, tuned, delta = viz_twins
    twins = head_grid(delta, model=(base, tuned), prompt=[STANDARD_10[0], STANDARD_10[4]])
    assert twins.twins and twins.scale.diverging and len(twins.pattern_sets) == 4
    first = twins.prompts[0]
    assert first["base"].tokens == first["tuned"].tokens
    b, t = first["base"].decode(), first["tuned"].decode()
    assert np.array_equal(b[0, 0], t[0, 0])  # the source head is untouched
    for h in (1, 2, 3):  # the edited heads now copy it
        assert np.array_equal(t[0, h], t[0, 0]) and not np.array_equal(b[0, h], b[0, 0])
    html = twins.html()
    assert 'data-mode="diff"' in html and html.count('class="tlspec-patterns"') == 4


def test_save_writes_a_page(tmp_path):
    grid = head_grid([[1.0, np.nan]], patterns=tricky_patterns(1, 2))
    path = grid.save(tmp_path / "sub" / "grid.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count("var CircuitsVis=") == 1
    assert [p.name for p in path.parent.iterdir()] == ["grid.html"]  # no temp file left
    with pytest.raises(TLSpecError, match="is a directory"):
        grid.save(tmp_path)


# ---------------------------------------------------------------- report

def test_report_sections_grids_and_patterns(viz_report):
    assert viz_report.name == "report.html"
    html = viz_report.read_text(encoding="utf-8")
    for text in ("SI (pattern) · llama-gqa", "ΔSI (pattern) · llama-mha → twin", "SI by layer", "ΔSI by layer",
                 "simultaneous CI", "715065bab181f46bf12ed471951141e2", "Provenance and settings",
                 f"drill-down prompt “{STANDARD_10[0]}”"):
        assert text in html, text
    assert html.count("var CircuitsVis=") == 1
    assert html.count('class="tlspec-patterns"') == 3  # gqa, mha base, twin: each once
    assert html.count('class="tlspec tlspec-grid"') == 2
    assert 'id="grid-1"' in html and 'id="grid-2"' in html


def test_report_is_byte_identical_for_the_same_inputs(viz_files, viz_twins, tmp_path):
    base, tuned, _ = viz_twins
    a = write_report([viz_files[1]], tmp_path / "a", model=base, tuned_model=tuned).read_bytes()
    b = write_report([viz_files[1]], tmp_path / "b", model=base, tuned_model=tuned).read_bytes()
    assert a == b and a.count(b'class="tlspec-patterns"') == 2


def test_report_without_models_says_why(viz_si, viz_twins, tmp_path):
    si = viz_si[1]
    moved = type(si).from_dict({**si.to_dict(), "provenance": {**si.provenance,
                                                                "model": "/no/such/ckpt"}})
    html = write_report([moved], tmp_path / "r").read_text(encoding="utf-8")
    assert "Grid only: the model recorded in the result (/no/such/ckpt) is not a local directory" in html
    assert "--model PATH" in html and 'class="tlspec-patterns"' not in html
    with_model = write_report([moved], tmp_path / "r2", model=viz_si[0], prompt="A new prompt.")
    text = with_model.read_text(encoding="utf-8")
    assert text.count('class="tlspec-patterns"') == 1 and "A new prompt." in text


def test_report_registry_takes_new_kinds(tmp_path):
    @dataclass
    class ProbeResult:
        kind: ClassVar[str] = "probe_verdict_test"
        per_head: Any = field(default_factory=lambda: np.array([[1.0, -2.0]]))
        provenance: dict = field(default_factory=lambda: {"model": "m"})

    @dataclass
    class Unknown:
        kind: ClassVar[str] = "mystery_test"
        per_head: Any = field(default_factory=lambda: np.array([[0.5]]))
        provenance: dict = field(default_factory=dict)

    @register_section("probe_verdict_test")
    def render(result, ctx):
        grid = head_grid(result.per_head, title="probe response", grid_id=ctx.next_id())
        return Section("Probe verdicts", "<p>verdict table</p>" + grid.html(include_runtime=False),
                       [grid])

    try:
        html = write_report([ProbeResult(), Unknown()], tmp_path).read_text(encoding="utf-8")
    finally:
        del SECTION_RENDERERS["probe_verdict_test"]
    assert "Probe verdicts" in html and "verdict table" in html and "probe response" in html
    assert "No report renderer is registered for result kind “mystery_test”" in html


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_report_cli(viz_files, tmp_path, capsys):
    si_file, delta_file = viz_files
    out = tmp_path / "cli"
    for argv, msg in [
        ([str(tmp_path / "none.json"), "--out", str(out)], "no such result file"),
        ([str(si_file), "--out", str(out), "--model", str(tmp_path / "nope")], "no such checkpoint"),
        ([str(si_file), "--out", str(si_file)], "is a file"),
        ([str(si_file), "--out", str(out), "--decimals", "9"], "decimals must be"),
        ([str(si_file), "--out", str(out), "--prompt", " "], "--prompt must be"),
    ]:
        assert run_report(_cli(["report", *argv])) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()  # nothing written on bad input
    bad = tmp_path / "bad.json"
    bad.write_text(si_file.read_text()[:100])
    assert run_report(_cli(["report", str(bad), "--out", str(out)])) == 2
    assert "not valid JSON" in capsys.readouterr().err and not out.exists()
    assert run_report(_cli(["report", str(si_file), str(delta_file), "--out", str(out)])) == 0
    assert "wrote" in capsys.readouterr().out and (out / "report.html").stat().st_size > 1e6


# ---------------------------------------------------------------- figures

def test_delta_figure_data_and_files(viz_twins, tmp_path):
    _, _, delta = viz_twins
    fig, data = delta_si_figure([delta, delta], names=["twin", "twin again"])
    assert data.series["twin"]["y"] == [delta.delta_pct]
    assert data.series["twin"]["low"] == [delta.interval.low]
    assert data.series["twin"]["high"] == [delta.interval.high]
    assert data.notes["level"] == 0.95 and fig.axes[0].get_ylabel() == "ΔSI (%)"
    png, svg = save(fig, tmp_path / "fig1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert svg.read_text().lstrip().startswith("<?xml") and svg.stat().st_size > 5000
    png2, svg2 = save(fig, tmp_path / "again.svg")  # an extension is dropped, not doubled
    assert svg2.name == "again.svg" and svg2.read_text() == svg.read_text()
    with pytest.raises(TLSpecError, match="DeltaResult"):
        delta_si_figure([1.0])


def test_perplexity_slope_figure():
    fig, data = perplexity_slope_figure({"LLaMA-2": [16.73, 156.96, 46.35],
                                         "Mistral": [451_342, 391_573, 440_977]})
    assert fig.axes[0].get_yscale() == "log"
    assert data.series["LLaMA-2"]["y"] == [16.73, 156.96, 46.35]
    assert data.series["Mistral"]["mean"][0] == pytest.approx(427_964.0)
    with pytest.raises(TLSpecError, match="positive"):
        perplexity_slope_figure({"a": [1.0, -2.0]})
    with pytest.raises(TLSpecError, match="finite"):
        perplexity_slope_figure({"a": [float("nan")]})


def test_probe_response_figure_bands_and_verdicts():
    fig, data = probe_response_figure({"flat": [1.0, -2.0], "mid": 12.0, "strong": [22.0, 30.0],
                                       "drop": -9.0})
    assert data.bands == {"stable": [-5.0, 5.0], "suppressed": [20.0, math.inf]}
    assert data.notes["verdict"] == {"flat": "stable (healthy)", "mid": "indeterminate",
                                     "strong": "suppressed (pathological)",
                                     "drop": "optimized (noise-sensitive)"}
    assert data.series["strong"]["mean"] == [26.0]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["drop", "strong", "mid", "flat"]


def test_si_by_layer_figure(viz_si, viz_twins):
    _, si = viz_si
    _, _, delta = viz_twins
    fig, data = si_by_layer_figure([delta.base, delta.tuned], names=["base", "tuned"])
    assert data.series["tuned"]["y"] == pytest.approx(delta.tuned.per_layer.tolist())
    assert data.series["base"]["x"] == [0, 1, 2] and data.xlabel == "layer"
    si_ep = tl_spec.SIResult.from_dict({**si.to_dict(), "per_layer": None})
    with pytest.raises(TLSpecError, match="per-layer SI"):
        si_by_layer_figure([si_ep])


def test_stability_figure_null_band():
    fig, data = stability_figure({"a": [0.9, 0.7, 0.8]}, null_band=([0.1, 0.2, 0.1], 0.4))
    assert data.bands == {"null_low": [0.1, 0.2, 0.1], "null_high": [0.4, 0.4, 0.4]}
    assert data.series["a"]["y"] == [0.9, 0.7, 0.8]
    with pytest.raises(TLSpecError, match="null_band"):
        stability_figure({"a": [1.0, 2.0]}, null_band=([1, 2, 3], 0.0))


def test_figures_leave_matplotlib_global_state_alone(tmp_path):
    import matplotlib

    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig, _ = stability_figure({"a": [1.0, 2.0]})
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    backend, params = matplotlib.get_backend(), dict(matplotlib.rcParams)  # (imports pyplot)
    save(stability_figure({"a": [1.0, 2.0]})[0], tmp_path / "f")
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == params


# ---------------------------------------------------------------- notebooks

@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_twins_delta_si.ipynb"])
def test_notebooks_show_the_head_grid(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "head_grid(" in code


def test_report_sections_for_noise_results(tmp_path):
    """Probe verdicts, sweep tables and sensitivity curves get their own sections."""
    import tl_spec
    from tl_spec.prompts import E06_TEXTS, STANDARD_10

    model = tl_spec.zoo.load("base-gqa")
    probe = tl_spec.perturbation_probe(model, STANDARD_10[:4], sigma=0.05, n_resamples=200)
    sweep = tl_spec.probe_sweep(model, STANDARD_10[:4], sigmas=(0, 0.1, 0.2), seeds=(42,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sens = tl_spec.noise_sensitivity(model, E06_TEXTS, sigmas=(0, 0.1, 0.2), seeds=(42, 123))
    html = tl_spec.viz.write_report([probe, sweep, sens], tmp_path).read_text()
    assert "No report renderer" not in html
    assert probe.verdict in html and f"{probe.response_pct:+.2f} %" in html
    assert "Probe sweep" in html and "sigma 0.2" in html
    # matplotlib charts: sensitivity curves (2 seeds) and sweep regions (4)
    assert 'data-ylabel="perplexity (PPL)" data-series="2"' in html
    assert 'data-ylabel="SI (mean of seeds)" data-series="4"' in html
