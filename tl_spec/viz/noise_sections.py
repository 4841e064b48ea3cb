"""Report sections for the noise results: probe verdicts, sweep tables, sensitivity curves.

Registered on import (``tl_spec.viz`` imports this module). Curves are inline SVG written here:
no script, no network, deterministic output.

>>> from tl_spec.viz.noise_sections import line_svg
>>> line_svg([0, 0.1, 0.2], {"seed 42": [1.0, 1.5, 2.5]}).startswith("<svg")
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tl_spec.viz.html import esc
from tl_spec.viz.sections import (
    ReportContext,
    Section,
    _label,
    _num,
    _provenance,
    _stats,
    register_section,
)

__all__ = ["line_svg"]

_VERDICT_COLOUR = {"suppressed (pathological)": "#b2182b", "stable (healthy)": "#1a7f37",
                   "optimized (noise-sensitive)": "#2166ac", "indeterminate": "#6e7781"}
_SERIES = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def line_svg(x: Sequence[float], series: Mapping[str, Sequence[float]], *, width: int = 560,
             height: int = 220, xlabel: str = "sigma", ylabel: str = "") -> str:
    """A small line chart as inline SVG (one polyline per series, axes, ticks, legend)."""
    xs = np.asarray(x, dtype=float)
    ys = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in ys.values()] or [np.zeros(1)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad_l, pad_r, pad_t, pad_b = 56, 170, 10, 34  # the legend sits in the right-hand gutter
    def px(v: float) -> float:
        span = (xs.max() - xs.min()) or 1.0
        return pad_l + (v - xs.min()) / span * (width - pad_l - pad_r)
    def py(v: float) -> float:
        return pad_t + (hi - v) / (hi - lo) * (height - pad_t - pad_b)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(ylabel)} against '
             f'{esc(xlabel)}" style="font:11px system-ui,sans-serif">',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" '
             f'y2="{height - pad_b}" stroke="#8c959f"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" '
             'stroke="#8c959f"/>']
    for v in xs:
        parts.append(f'<text x="{px(v):.1f}" y="{height - pad_b + 14}" text-anchor="middle" '
                     f'fill="#57606a">{v:g}</text>')
    for v in np.linspace(lo, hi, 4):
        parts.append(f'<text x="{pad_l - 6}" y="{py(v) + 4:.1f}" text-anchor="end" '
                     f'fill="#57606a">{v:.4g}</text>')
    parts.append(f'<text x="{(width + pad_l) / 2:.0f}" y="{height - 4}" text-anchor="middle" '
                 f'fill="#24292f">{esc(xlabel)}</text>')
    for i, (name, v) in enumerate(ys.items()):
        colour = _SERIES[i % len(_SERIES)]
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, v) if math.isfinite(b))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        parts.append(f'<text x="{width - pad_r + 10}" y="{pad_t + 12 + 14 * i}" '
                     f'fill="{colour}">{esc(name)}</text>')
    return "".join(parts) + "</svg>"


def _verdict_badge(verdict: str) -> str:
    colour = _VERDICT_COLOUR.get(verdict, "#6e7781")
    return (f'<span style="color:{colour};font-weight:600">{esc(verdict)}</span>')


@register_section("perturbation_probe")
def _render_probe(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    iv = result.interval
    stats = [("response", f"{result.response_pct:+.2f} %",
              f"{iv.level:.0%} CI [{iv.low:+.2f}, {iv.high:+.2f}] ({iv.method})"),
             ("verdict", _verdict_badge(result.verdict),
              f"±{result.bands['stable_within']:g} % stable, > +"
              f"{result.bands['suppressed_above']:g} % suppressed"),
             ("SI clean", _num(result.si_clean), f"method {result.method}"),
             ("SI under noise", _num(float(np.mean(result.si_noised))),
              f"mean of {len(result.seeds)} seeds")]
    rows = "".join(f"<tr><td>{seed}</td><td>{_num(float(si))}</td><td>{_num(float(r), '+.2f')} %"
                   f"</td></tr>" for seed, si, r in zip(result.seeds, result.si_noised,
                                                        result.response_per_seed))
    html = (_stats(stats)
            + f'<p class="tlspec-note">Gaussian noise sigma = {result.sigma:g} at '
              f"{esc(result.site)}, layers {result.layers[0]}..{result.layers[-1]}; the response "
              "is the ratio of means over seeds; the interval resamples prompts.</p>"
            + '<h3>Per seed</h3><table class="r-table"><tr><th>seed</th><th>SI under noise</th>'
              f"<th>response</th></tr>{rows}</table>")
    if result.per_layer_clean is not None and result.per_layer_noised is not None:
        html += "<h3>SI by layer</h3>" + line_svg(
            list(range(len(result.per_layer_clean))),
            {"clean": result.per_layer_clean, "under noise (mean of seeds)": result.per_layer_noised},
            xlabel="layer", ylabel="SI")
    html += _provenance(prov, result.settings)
    model = _label(prov.get("model"))
    return Section(f"Perturbation probe · {model}", html, [], subtitle=str(prov.get("model")))


@register_section("probe_sweep")
def _render_sweep(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    mean = np.asarray(result.si).mean(axis=-1)  # [regions, sigmas]
    head = "".join(f"<th>sigma {s:g}</th>" for s in result.sigmas)
    rows = "".join(
        f"<tr><td>{esc(r)}</td>" + "".join(
            f"<td>{_num(float(v))} <span class='tlspec-note'>"
            f"({_num(float(c), '+.1f')} %)</span></td>"
            for v, c in zip(mean[i], np.asarray(result.change_pct).mean(axis=-1)[i])) + "</tr>"
        for i, r in enumerate(result.regions))
    html = (_stats([("SI clean", _num(result.si_clean), f"method {result.method}"),
                    ("grid", f"{len(result.regions)} x {len(result.sigmas)} x "
                             f"{len(result.seeds)}", "regions x sigmas x seeds")])
            + '<h3>SI under noise (mean of seeds; change from clean)</h3>'
            + f'<table class="r-table"><tr><th>region</th>{head}</tr>{rows}</table>'
            + line_svg(result.sigmas, dict(zip(result.regions, mean)), ylabel="SI")
            + _provenance(prov, result.settings))
    return Section(f"Probe sweep · {_label(prov.get('model'))}", html, [],
                   subtitle=str(prov.get("model")))


@register_section("noise_sensitivity")
def _render_sensitivity(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    curve = np.asarray(result.ppl).mean(axis=-1)  # [sigmas, seeds]
    series = {f"seed {s}": curve[:, k] for k, s in enumerate(result.seeds)}
    fits = "".join(
        f"<tr><td>{seed}</td><td>{_num(f.slope, '.4g')}</td><td>{_num(f.r2, '.2f')}</td>"
        f"<td>{_num(f.pvalue, '.2g')}</td><td>{_num(lf.slope, '.4g')}</td>"
        f"<td>{_num(lf.r2, '.2f')}</td></tr>"
        for seed, f, lf in zip(result.seeds, result.fits, result.log_fits))
    warn = "".join(f'<p class="tlspec-note">warning: {esc(w)}</p>' for w in result.warnings)
    html = (_stats([("PPL slope", _num(result.slope, ".4g"), "mean over seeds"),
                    ("log-PPL slope", _num(result.log_slope, ".4g"), "mean over seeds"),
                    ("noise", f"{esc(result.site)}", f"layers {result.layers[0]}.."
                                                      f"{result.layers[-1]}")])
            + "<h3>Perplexity against sigma (mean over texts)</h3>"
            + line_svg(result.sigmas, series, ylabel="perplexity")
            + '<table class="r-table"><tr><th>seed</th><th>PPL slope</th><th>r²</th><th>p</th>'
              f"<th>log-PPL slope</th><th>r²</th></tr>{fits}</table>" + warn
            + _provenance(prov, result.settings))
    return Section(f"Noise sensitivity · {_label(prov.get('model'))}", html, [],
                   subtitle=str(prov.get("model")))


@register_section("sensitivity_comparison")
def _render_comparison(result: Any, ctx: ReportContext) -> Section:
    a, b = (_label(m) for m in result.models)
    per_seed = ", ".join(f"{r:,.3g}x" for r in result.per_seed_ratios)
    html = (_stats([("ratio of means", f"{result.ratio_of_means:,.3g}x", f"{b} / {a}"),
                    ("median of ratios", f"{result.median_of_ratios:,.3g}x", "over seeds"),
                    ("mean of ratios", f"{result.mean_of_ratios:,.3g}x", f"per seed {per_seed}"),
                    ("p", _num(result.pvalue, ".2g"), "exact permutation test over seeds")])
            + '<p class="tlspec-note">PPL-slope ratio aggregated over seeds as in the paper\'s '
              "Appendix B; with three seeds per model the permutation test cannot reach p < 0.1."
              "</p>")
    return Section(f"Sensitivity comparison · {b} vs {a}", html, [])
