"""Report section for the deconstruct study (the attention variants of Xue, Moosavi & Aletras 2025,
arXiv:2510.11602): loss change per variant and placement, kept-layer SI.

Registered on import (``tl_spec.viz`` imports this module).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> "deconstruct" in SECTION_RENDERERS
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
    _label,
    _num,
    _provenance,
    _sig,
    _stats,
    cite,
    register_section,
)

__all__: list[str] = []


@register_section("deconstruct")
def _render_deconstruct(result: Any, ctx: ReportContext) -> Section:
    rows = result.rows
    bound = max([abs(v) for r in rows for v in (r["interval"].low, r["interval"].high)
                 if math.isfinite(v)] or [1.0]) or 1.0
    worst = max(rows, key=lambda r: r["delta_loss"]) if rows else None
    stats = [("clean loss", _num(result.clean_loss, ".4f"),
              f"nats/token; perplexity {_sig(result.clean_ppl)}"),
             ("texts", str(result.settings.get("n_texts", "")), "paired bootstrap over texts"),
             ("largest cost", _num(worst["delta_loss"], "+.3f") if worst else "–",
              f"nats/token: {worst['variant']} · {worst['placement']}" if worst else "")]
    body = []
    for r in rows:
        ci = r["interval"]
        significant = ci.low > 0 or ci.high < 0
        body.append(
            f'<tr class="{"r-hl" if significant else ""}"><td>{esc(r["variant"])}</td>'
            f'<td>{esc(r["placement"])}</td><td>{_num(r["delta_loss"], "+.4f")}</td>'
            f'<td>[{_num(ci.low, "+.4f")}, {_num(ci.high, "+.4f")}]</td>'
            f'<td>{_forest(r["delta_loss"], ci.low, ci.high, bound, significant)}</td>'
            f'<td>{_num(r["ppl_ratio"], ".3f")}×</td><td>{_num(r["si_kept"], ".4f")}</td>'
            f'<td>{_num(r["delta_si_kept"], "+.4f")}</td></tr>')
    table = ('<table class="r-table"><tr><th>variant</th><th>placement</th><th>Δ loss (nats/token)</th>'
             f'<th>{rows[0]["interval"].level:.0%} CI</th>' if rows else '<table class="r-table"><tr>')
    table += (f'<th><span class="r-forest r-axis"><span style="left:0">−{bound:.2f}</span>'
              '<span style="left:50%;transform:translateX(-50%)">0</span>'
              f'<span style="right:0">+{bound:.2f}</span></span></th><th>perplexity ratio</th>'
              f"<th>SI kept layers</th><th>Δ SI kept</th></tr>{''.join(body)}</table>"
              '<p class="tlspec-note">Δ loss in nats per predicted token against the unmodified '
              "model; highlighted rows exclude 0. “SI kept” is the pattern SI of the layers that "
              "keep standard attention. Variants as in " + cite("xue2025") + ".</p>")
    html = _stats(stats) + table + _provenance(result.provenance or {}, result.settings)
    return Section(f"Deconstructing attention · {_label(result.model)}", html, [])
