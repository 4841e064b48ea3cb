"""Report section for the claims audit (``tl-spec audit ... --json audit.json``, then
``tl-spec report audit.json``): verdict counts, one table per paper table / claim / file, flags.

Registered on import (``tl_spec.viz`` imports this module).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> "claims_audit" in SECTION_RENDERERS
True
"""

from __future__ import annotations

from typing import Any

import tl_spec.audit  # noqa: F401  (defines, and so registers, the claims_audit result kind)
from tl_spec.viz.html import esc
from tl_spec.viz.sections import ReportContext, Section, _provenance, _sig, _stats, cite, register_section

__all__: list[str] = []

_COLOR = {"reproduced": "#1a7f37", "differs": "#b3261e", "no artifact": "#7a7a7a"}


def _cell(c: dict[str, Any]) -> str:
    verdict = c["verdict"]
    diff = "" if c["diff"] is None else f" ({_sig(c['diff'])})"
    return (f'<tr class="{"r-hl" if verdict == "differs" else ""}"><td>{esc(c["item"])}</td>'
            f'<td>{esc(c["published_text"] or "–")}</td><td>{_sig(c["artifact"])}</td>'
            f'<td style="color:{_COLOR.get(verdict, "inherit")}"><b>{esc(verdict)}</b>{diff}</td>'
            f'<td>{esc(c["artifact_text"])}{"<br><i>" + esc(c["cause"]) + "</i>" if c["cause"] else ""}'
            "</td></tr>")


@register_section("claims_audit")
def _render_claims_audit(result: Any, ctx: ReportContext) -> Section:
    head = result.headline()
    stats = [("files", str(head["files"]), f"{head['auditable']} auditable"),
             ("reproduced", str(head["reproduced"]), "within the published rounding"),
             ("differs", str(head["differs"]), "published vs artifacts"),
             ("no artifact", str(head["no artifact"]), "nothing stored to check"),
             ("flags", str(head["flags"]), "problems of the material")]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in result.checks:
        groups.setdefault(c["source"], []).append(c)
    parts = []
    for source, cs in groups.items():
        rows = "".join(_cell(c) for c in cs)
        parts.append(f"<h3>{esc(source)}</h3><table class=\"r-table\"><tr><th>item</th>"
                     "<th>published</th><th>artifacts</th><th>verdict (diff)</th>"
                     f"<th>how / likely cause</th></tr>{rows}</table>")
    flags = "".join(f"<li><b>{esc(f['kind'])}</b> · {esc(f['file'])}: {esc(f['message'])}</li>"
                    for f in result.flags)
    not_paper = [f for f in result.files if f["status"] != "audited"]
    files = "".join(f"<li>{esc(f['name'])}: {esc(f['status'])}</li>" for f in not_paper)
    html = (_stats(stats)
            + f'<p class="tlspec-note">Published numbers from the tables of {cite("delia2026")}; '
              "artifacts recomputed from the reproduction package where it stores matrices, "
              "curves or configs, else read as stored.</p>"
            + "".join(parts) + f"<h3>Flags</h3><ul>{flags}</ul>"
            + (f"<h3>Files not audited</h3><ul>{files}</ul>" if files else "")
            + _provenance(result.provenance or {}, result.settings))
    return Section(f"Claims audit · {head['files']} files", html, [])
