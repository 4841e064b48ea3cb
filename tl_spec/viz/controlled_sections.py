"""Report section for the controlled alignment study: ΔSI of SFT / DPO twins per attention type,
the differences between types with paired intervals, and the verdict, per condition.

Registered on import (``tl_spec.viz`` imports this module).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> "controlled_alignment" in SECTION_RENDERERS
True
"""

from __future__ import annotations

import math
from typing import Any

from tl_spec.viz.html import esc
from tl_spec.viz.sections import (
    ReportContext,
    Section,
    _forest,
    _num,
    _provenance,
    _stats,
    cite,
    register_section,
)

__all__: list[str] = []


def _bound(items: list[dict[str, Any]], key: str) -> float:
    vals = [abs(v) for r in items for v in (r[key], r["interval"].low, r["interval"].high)
            if v is not None and math.isfinite(v)]
    return max(vals or [1.0]) or 1.0


def _resolved(iv: Any) -> bool:
    return bool(iv.low > 0 or iv.high < 0)


@register_section("controlled_alignment")
def _render_controlled(result: Any, ctx: ReportContext) -> Section:
    rows, diffs = result.rows, result.differences
    conditions = list(dict.fromkeys((r["route"], r["method"], r["length"]) for r in rows))
    fams = ", ".join(f"{f['name']} ({f['attention']}"
                     + (f", window {min(w for w in f['windows'] if w)})" if any(f["windows"])
                        else ")") for f in result.families)
    stats = [("families", str(len(result.families)), fams),
             ("seeds", str(len(result.families[0]["seeds"]) if result.families else 0),
              "fixed effects: per-seed ΔSI and their mean"),
             ("prompts", str(result.settings.get("n_prompts", "")),
              "one prompt resample drives every model")]
    html = [_stats(stats), f'<p class="tlspec-note"><b>Verdict.</b> {esc(result.verdict)}</p>']
    means = [r for r in rows if r["seed"] is None]
    m_bound, d_bound = _bound(means, "delta_pct"), _bound(diffs, "diff_pp")
    for route, method, length in conditions:
        html.append(f"<h3>{esc(route)} route · {esc(method)} SI · {length} tokens</h3>")
        body = []
        for r in means:
            if (r["route"], r["method"], r["length"]) != (route, method, length):
                continue
            seeds = [x["delta_pct"] for x in rows if x["seed"] is not None and
                     (x["route"], x["method"], x["length"], x["family"], x["stage"])
                     == (route, method, length, r["family"], r["stage"])]
            iv = r["interval"]
            body.append(
                f'<tr class="{"r-hl" if _resolved(iv) else ""}"><td>{esc(r["family"])}</td>'
                f'<td>{esc(r["stage"].upper())}</td><td>{_num(r["si_base"], ".4f")}</td>'
                f'<td>{_num(r["delta_pct"], "+.2f")}</td>'
                f'<td>[{_num(iv.low, "+.2f")}, {_num(iv.high, "+.2f")}]</td>'
                f'<td>{_forest(r["delta_pct"], iv.low, iv.high, m_bound, _resolved(iv))}</td>'
                f'<td>{esc(", ".join(f"{v:+.2f}" for v in seeds))}</td>'
                f'<td>{"yes" if r["window_binds"] else "no"}</td></tr>')
        html.append('<table class="r-table"><tr><th>family</th><th>twin</th><th>SI base</th>'
                    "<th>mean ΔSI %</th><th>CI</th><th></th><th>per seed</th>"
                    f"<th>window binds</th></tr>{''.join(body)}</table>")
        body = []
        for d in diffs:
            if (d["route"], d["method"], d["length"]) != (route, method, length):
                continue
            iv = d["interval"]
            body.append(
                f'<tr class="{"r-hl" if _resolved(iv) else ""}"><td>{esc(d["label"])}</td>'
                f'<td>{esc(d["stage"].upper())}</td><td>{_num(d["diff_pp"], "+.2f")}</td>'
                f'<td>[{_num(iv.low, "+.2f")}, {_num(iv.high, "+.2f")}]</td>'
                f'<td>{_forest(d["diff_pp"], iv.low, iv.high, d_bound, _resolved(iv))}</td>'
                f'<td>{"yes" if d["seeds_separate"] else "no"}</td></tr>')
        if body:
            html.append('<table class="r-table"><tr><th>difference of mean ΔSI</th><th>twin</th>'
                        "<th>pp</th><th>CI</th><th></th><th>seeds separate</th></tr>"
                        f"{''.join(body)}</table>")
    html.append('<p class="tlspec-note">ΔSI = (SI twin − SI base) / SI base × 100 (Eq. 2 of '
                + cite("delia2026") + "), base → each seed's twin; highlighted rows exclude 0. "
                "Intervals are BCa bootstraps over prompts with one seed, so the same resamples "
                "drive every model. Each family has one base model: a family difference "
                "includes that base's pretraining seed.</p>")
    for v in result.verdicts:
        html.append(f'<p class="tlspec-note">{esc(v)}</p>')
    html.append(_provenance(result.provenance or {}, result.settings))
    return Section("Controlled alignment: ΔSI of twins per attention type", "".join(html), [])
