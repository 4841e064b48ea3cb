"""Report sections for head stability, head importance and the head-stability study (the claims of
Bali et al. 2026, arXiv:2602.16740).

Registered on import (``tl_spec.viz`` imports this module). Stability: per-layer table with
intervals, the random-init null and distinctness, a line chart, and a head grid of per-head
stability whose drill-down shows the first model's patterns (heads are unordered across models,
so a side-by-side at the same index would mislead; the matching table says who is whose twin).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> sorted(k for k in SECTION_RENDERERS if "stab" in k or "importance" in k)
['head_importance', 'head_stability', 'stability_study']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_spec.viz.html import esc
from tl_spec.viz.charts import line_chart
from tl_spec.viz.sections import (
    ReportContext,
    Section,
    _bar,
    _drill_grid,
    _label,
    _num,
    _provenance,
    _shape_reason,
    _stats,
    cite,
    register_section,
)

__all__: list[str] = []


@register_section("head_stability")
def _render_stability(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    first = result.models[0] if result.models else None
    model, reason = ctx.resolve(ctx.model, first)
    per_head = np.nanmean(result.per_head_stability, axis=0)
    reason = reason or (_shape_reason([model], per_head.shape) if model is not None else "")
    sets = [ctx.patterns(model, result)] if model is not None and not reason else None
    grid = _drill_grid({"grid_id": ctx.next_id(), "title": "Per-head stability",
                        "subtitle": "mean matched similarity over the other models; patterns: "
                                    f"{_label(first)}"}, per_head, sets, reason)
    iv = result.intervals
    above = sum(result.above_null)
    stats = [("mean stability", _num(float(np.nanmean(result.stability)), ".3f"),
              f"measure {result.measure}"),
             ("models", str(len(result.models)), f"{len(result.null_models)} random-init nulls"),
             ("layers above chance", f"{above} / {len(result.stability)}",
              "margin interval above 0"),
             ("resid_post CKA", _num(float(np.nanmean(result.resid_cka)), ".3f")
              if result.resid_cka is not None else "–", "mean over layers")]
    rows = []
    for layer, v in enumerate(result.stability):
        ci = iv["stability"][layer]
        resid = "–" if result.resid_cka is None else _num(float(result.resid_cka[layer]), ".3f")
        rows.append(f'<tr class="{"" if result.above_null[layer] else "r-hl"}"><td>L{layer}</td>'
                    f"<td>{_num(float(v), '.3f')}</td><td>{_bar(float(v), 0.0, 1.0)}</td>"
                    f"<td>[{_num(ci.low, '.3f')}, {_num(ci.high, '.3f')}]</td>"
                    f"<td>{_num(float(result.null[layer]), '.3f')}</td>"
                    f"<td>{'yes' if result.above_null[layer] else 'no'}</td>"
                    f"<td>{_num(float(result.distinctness[layer]), '.3f')}</td><td>{resid}</td></tr>")
    level = iv["stability"][0].level if iv.get("stability") else 0.95
    table = ('<h3>Stability by layer</h3><table class="r-table"><tr><th>layer</th><th>stability'
             f"</th><th></th><th>{level:.0%} CI</th><th>null</th><th>above chance</th>"
             f"<th>distinctness</th><th>resid CKA</th></tr>{''.join(rows)}</table>")
    series = {"stability": result.stability, "random-init null": result.null,
              "distinctness": result.distinctness}
    if result.resid_cka is not None:
        series["resid_post CKA"] = result.resid_cka
    chart = line_chart(list(range(len(result.stability))),
                       {k: np.asarray(v, dtype=float).tolist() for k, v in series.items()},
                       xlabel="layer", ylabel=f"similarity ({result.measure})", integer_x=True)
    match = ""
    if len(result.matching):
        a, b = result.pairs[0]
        cells = "".join(
            f"<tr><td>L{layer}</td><td>" + ", ".join(
                f"H{h}→H{int(j)} ({_num(float(result.similarity[0, layer, h, j]), '.2f')})"
                for h, j in enumerate(perm)) + "</td></tr>"
            for layer, perm in enumerate(result.matching[0]))
        match = (f"<h3>Matching: {esc(_label(result.models[a]))} → {esc(_label(result.models[b]))}"
                 f'</h3><table class="r-table">{cells}</table>')
    html = (_stats(stats) + table + chart + "<h3>Heads</h3>"
            + grid.html(include_runtime=False, include_patterns=False) + match
            + _provenance(prov, result.settings))
    return Section(f"Head stability ({result.measure}) · {len(result.models)} models", html, [grid],
                   subtitle=", ".join(_label(m) for m in result.models))


@register_section("head_importance")
def _render_importance(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    scores = result.mean_ablation if result.mean_ablation is not None else result.zero_ablation
    model, reason = ctx.resolve(ctx.model, result.model)
    reason = reason or (_shape_reason([model], scores.shape) if model is not None else "")
    sets = [ctx.patterns(model, result)] if model is not None and not reason else None
    grid = _drill_grid({"grid_id": ctx.next_id(), "title": "Loss increase when the head is ablated",
                        "subtitle": "loss increase in nats/token"}, scores, sets, reason)
    stats = [("clean loss", _num(result.clean_loss, ".4f"),
              f"nats/token over {result.n_tokens} predicted tokens"),
             ("most important", _num(float(np.nanmax(scores)), "+.4f"),
              "nats/token more loss without L{}H{}".format(
                  *np.unravel_index(int(np.nanargmax(scores)), scores.shape)))]
    html = (_stats(stats) + grid.html(include_runtime=False, include_patterns=False)
            + _provenance(prov, result.settings))
    return Section(f"Head importance · {_label(result.model)}", html, [grid])


@register_section("stability_study")
def _render_study(result: Any, ctx: ReportContext) -> Section:
    verdicts = {True: ("holds", "#1a7f37"), False: ("does not hold", "#b2182b"),
                None: ("not testable", "#6e7781")}
    rows = []
    for c in result.claims:
        ci = c["interval"]
        text, colour = verdicts[c["holds"]]
        rows.append(f"<tr><td>{c['id']}</td><td>{esc(c['claim'])}</td><td>{esc(c['statistic'])}"
                    f"</td><td>{_num(c['effect'], '+.4f')}</td><td>[{_num(ci.low, '+.4f')}, "
                    f"{_num(ci.high, '+.4f')}]</td><td style=\"color:{colour};font-weight:600\">"
                    f"{text}</td></tr>")
    table = ('<table class="r-table"><tr><th>#</th><th>claim (Bali et al. 2026)</th><th>statistic '
             "(positive supports)</th><th>effect</th><th>interval</th><th>here</th></tr>"
             f"{''.join(rows)}</table>")
    curves = {f"{g['name']}": np.asarray(g["stability"], dtype=float) for g in result.groups}
    depth = max(len(v) for v in curves.values())
    chart = line_chart(list(range(depth)), {k: np.pad(v, (0, depth - len(v)),
                                                      constant_values=np.nan).tolist()
                                            for k, v in curves.items()},
                       xlabel="layer", ylabel=f"stability ({result.measure})", integer_x=True)
    note = ('<p class="tlspec-note">The five claims of '
            f"{cite('bali2026')} about head stability across refits, tested on these "
            "models.</p>")
    html = (note + table + "<h3>Stability by layer, per group</h3>" + chart
            + _provenance(result.provenance or {}, result.settings))
    return Section(f"Head-stability claims (Bali et al. 2026) · measure {result.measure}", html, [])
