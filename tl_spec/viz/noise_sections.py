"""Report sections for the noise results: probe verdicts, sweep tables, sensitivity curves.

Registered on import (``tl_spec.viz`` imports this module). Curves are matplotlib SVG inlined by
:func:`tl_spec.viz.charts.line_chart`: no script, no network, deterministic output. Slopes carry
their units (PPL per unit σ; log-PPL slopes in nats/token per unit σ) and the paper whose tables
they follow is cited (D'Elia 2026: Table 2 for the probe, Table 5 and Appendix B for slopes).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> {"perturbation_probe", "noise_sensitivity"} <= set(SECTION_RENDERERS)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_spec.viz.charts import line_chart
from tl_spec.viz.html import esc
from tl_spec.viz.sections import (
    ReportContext,
    Section,
    _label,
    _num,
    _provenance,
    _sig,
    _stats,
    cite,
    register_section,
)

__all__: list[str] = []

_VERDICT_COLOUR = {"suppressed (pathological)": "#b2182b", "stable (healthy)": "#1a7f37",
                   "optimized (noise-sensitive)": "#2166ac", "indeterminate": "#6e7781"}
PPL_SLOPE_UNIT = "PPL per unit σ"
LOG_SLOPE_UNIT = "nats/token per unit σ"


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
              "is the ratio of means over seeds; the interval resamples prompts; verdict bands "
              f"as in {cite('delia2026', 'Table 2')}.</p>"
            + '<h3>Per seed</h3><table class="r-table"><tr><th>seed</th><th>SI under noise</th>'
              f"<th>response</th></tr>{rows}</table>")
    if result.per_layer_clean is not None and result.per_layer_noised is not None:
        html += "<h3>SI by layer</h3>" + line_chart(
            list(range(len(result.per_layer_clean))),
            {"clean": result.per_layer_clean, "under noise (mean of seeds)": result.per_layer_noised},
            xlabel="layer", ylabel="SI", integer_x=True)
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
            + line_chart(result.sigmas, dict(zip(result.regions, mean)),
                         xlabel="noise σ (std of the Gaussian added)", ylabel="SI (mean of seeds)")
            + _provenance(prov, result.settings))
    return Section(f"Probe sweep · {_label(prov.get('model'))}", html, [],
                   subtitle=str(prov.get("model")))


@register_section("noise_sensitivity")
def _render_sensitivity(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    curve = np.asarray(result.ppl).mean(axis=-1)  # [sigmas, seeds]
    series = {f"seed {s}": curve[:, k] for k, s in enumerate(result.seeds)}
    fits = "".join(
        f"<tr><td>{seed}</td><td>{_sig(f.slope)}</td><td>{_num(f.r2, '.2f')}</td>"
        f"<td>{_num(f.pvalue, '.2g')}</td><td>{_sig(lf.slope)}</td>"
        f"<td>{_num(lf.r2, '.2f')}</td></tr>"
        for seed, f, lf in zip(result.seeds, result.fits, result.log_fits))
    warn = "".join(f'<p class="tlspec-note">warning: {esc(w)}</p>' for w in result.warnings)
    html = (_stats([("PPL slope", _sig(result.slope), f"{PPL_SLOPE_UNIT}, mean over seeds"),
                    ("log-PPL slope", _sig(result.log_slope),
                     f"{LOG_SLOPE_UNIT}, mean over seeds"),
                    ("noise", f"{esc(result.site)}", f"layers {result.layers[0]}.."
                                                      f"{result.layers[-1]}")])
            + "<h3>Perplexity against σ (mean over texts)</h3>"
            + line_chart(result.sigmas, series, xlabel="noise σ (std of the Gaussian added)",
                         ylabel="perplexity (PPL)")
            + '<table class="r-table"><tr><th>seed</th><th>PPL slope (PPL per unit σ)</th><th>r²'
              "</th><th>p</th><th>log-PPL slope (nats/token per unit σ)</th><th>r²</th></tr>"
              f"{fits}</table>"
            + '<p class="tlspec-note">Slopes of least-squares lines through perplexity (and its '
              "log, the mean loss in nats per token) against σ, one per seed, as in "
              f"{cite('delia2026', 'Table 5')}.</p>" + warn
            + _provenance(prov, result.settings))
    return Section(f"Noise sensitivity · {_label(prov.get('model'))}", html, [],
                   subtitle=str(prov.get("model")))


@register_section("sensitivity_comparison")
def _render_comparison(result: Any, ctx: ReportContext) -> Section:
    a, b = (_label(m) for m in result.models)
    per_seed = ", ".join(f"{r:,.3g}×" for r in result.per_seed_ratios)
    html = (_stats([("ratio of means", f"{result.ratio_of_means:,.3g}×", f"PPL slope {b} / {a}"),
                    ("median of ratios", f"{result.median_of_ratios:,.3g}×", "over seeds"),
                    ("mean of ratios", f"{result.mean_of_ratios:,.3g}×", f"per seed {per_seed}"),
                    ("p", _num(result.pvalue, ".2g"), "exact permutation test over seeds")])
            + '<p class="tlspec-note">Ratios of PPL slopes (PPL per unit σ) aggregated over seeds '
              f"as in {cite('delia2026', 'Appendix B')}; with three seeds per model the "
              "permutation test cannot reach p < 0.1.</p>")
    return Section(f"Sensitivity comparison · {b} vs {a}", html, [])
