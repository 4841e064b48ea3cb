"""Report sections: a registry of renderers keyed by result ``kind``, and the built-in ones.

A renderer turns one result into a :class:`Section` (title + HTML), usually with a head grid.
New result kinds (probe verdicts, sensitivity curves, stability profiles) add a renderer with
:func:`register_section`; a kind without one gets a generic section (provenance and fields).

>>> @register_section("my_kind")
... def _render(result, ctx):
...     return Section("My result", "<p>…</p>")
>>> "my_kind" in SECTION_RENDERERS
True
>>> del SECTION_RENDERERS["my_kind"]
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.models import load_model, model_id
from tl_spec.prompts import STANDARD_10
from tl_spec.viz.grid import HeadGrid, head_grid
from tl_spec.viz.html import esc
from tl_spec.viz.patterns import PatternSet, capture_patterns

__all__ = ["PAPERS", "SECTION_RENDERERS", "ReportContext", "Section", "cite", "references_html",
           "register_section", "render_section"]

#: The papers whose tables, appendices and claims the report refers to: key -> (in-text, full).
PAPERS: dict[str, tuple[str, str]] = {
    "delia2026": ("D'Elia (2026)", "D'Elia (2026). “Alignment Robustness Depends More on Training "
                                   "than Architecture.”"),
    "xue2025": ("Xue, Moosavi & Aletras (2025)",
                "Huiyin Xue, Nafise Sadat Moosavi and Nikolaos Aletras (2025). “Deconstructing "
                "Attention: Investigating Design Principles for Effective Language Modeling.” "
                "arXiv:2510.11602."),
    "bali2026": ("Bali et al. (2026)",
                 "Karan Bali, Jack Stanley, Praneet Suresh and Danilo Bzdok (2026). “Quantifying "
                 "LLM Attention-Head Stability: Implications for Circuit Universality.” "
                 "arXiv:2602.16740."),
}


def cite(key: str, where: str = "") -> str:
    """An in-text citation linking to the report's reference list, e.g. "Table 2 of D'Elia (2026)".

    >>> cite("delia2026", "Appendix B")
    '<a class="r-cite" href="#ref-delia2026">Appendix B of D&#x27;Elia (2026)</a>'
    """
    short = PAPERS[key][0]
    return f'<a class="r-cite" href="#ref-{key}">{esc(f"{where} of {short}" if where else short)}</a>'


def references_html(html: str) -> str:
    """The reference list of the papers :func:`cite` d in ``html`` (empty if none), in order."""
    keys = list(dict.fromkeys(re.findall(r'href="#ref-([\w-]+)"', html)))
    if not keys:
        return ""
    items = "".join(f'<li id="ref-{k}">{esc(PAPERS[k][1])}</li>' for k in keys if k in PAPERS)
    return f'<section class="r-refs"><h2>References</h2><ol>{items}</ol></section>'


@dataclass
class Section:
    """One block of the report: a title, its HTML, and the grids whose patterns the page embeds."""

    title: str
    html: str
    grids: list[HeadGrid] = field(default_factory=list)
    subtitle: str = ""


SectionRenderer = Callable[[Any, "ReportContext"], Section]
SECTION_RENDERERS: dict[str, SectionRenderer] = {}


def register_section(kind: str) -> Callable[[SectionRenderer], SectionRenderer]:
    """Decorator: ``renderer(result, ctx) -> Section`` for results of ``kind``."""
    def wrap(fn: SectionRenderer) -> SectionRenderer:
        SECTION_RENDERERS[kind] = fn
        return fn

    return wrap


def render_section(result: Any, ctx: ReportContext) -> Section:
    """Render ``result`` with the renderer of its kind (or the generic one)."""
    kind = getattr(result, "kind", "result")
    section = SECTION_RENDERERS.get(kind, _generic)(result, ctx)
    # any result measured on a reproduction route (SIOptions.route) says so, whatever its kind
    settings = getattr(result, "settings", None) or {}
    note = _route_note(settings if "route" in settings else settings.get("si_options"))
    if note and "r-route" not in section.html:
        section.html = note + section.html
    return section


def _label(model_ref: Any) -> str:
    text = str(model_ref)
    return Path(text).name or text if os.sep in text else text


@dataclass
class ReportContext:
    """What renderers share: the models to run (loaded once), the prompt, pattern capture (cached)."""

    model: Any = None
    tuned_model: Any = None
    prompt: str | None = None
    decimals: int = 3
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _patterns: dict[tuple[int, str, int, Any], PatternSet] = field(default_factory=dict, repr=False)
    n_grids: int = 0

    def next_id(self, prefix: str = "grid") -> str:
        self.n_grids += 1
        return f"{prefix}-{self.n_grids}"

    def the_prompt(self) -> str:
        return self.prompt if self.prompt is not None else STANDARD_10[0]

    def resolve(self, given: Any, recorded: Any, flag: str = "--model") -> tuple[Any, str]:
        """A model to run (or ``None``) and, if none, why: given > recorded local directory."""
        ref = given if given is not None else recorded
        if ref is None:
            return None, f"the result records no model; pass {flag} PATH to add attention patterns"
        if not isinstance(ref, (str, os.PathLike)):
            return ref, ""
        if given is None and not Path(ref).is_dir():
            return None, (f"the model recorded in the result ({ref}) is not a local directory "
                          f"here; pass {flag} PATH to add attention patterns")
        key = str(Path(ref).resolve())
        if key not in self._models:
            try:
                self._models[key] = load_model(ref)
            except TLSpecError as err:
                if given is not None:
                    raise
                warnings.warn(f"could not load {ref} for the drill-down: {err}", TLSpecWarning,
                              stacklevel=2)
                self._models[key] = err
        got = self._models[key]
        return (None, f"loading {ref} failed: {got}") if isinstance(got, Exception) else (got, "")

    def patterns(self, model: Any, result: Any) -> PatternSet:
        """Patterns of ``model`` on the report's prompt, captured once per model and settings."""
        settings = getattr(result, "settings", {}) or {}
        bos = settings.get("prepend_bos")
        max_len = int(settings.get("max_length", 128) or 128)
        key = (id(model), self.the_prompt(), max_len, bos)
        if key not in self._patterns:
            self._patterns[key] = capture_patterns(
                model, self.the_prompt(), label=_label(model_id(model)), decimals=self.decimals,
                max_length=min(max_len, 1024), prepend_bos=bos)
        return self._patterns[key]


def _shape_reason(models: list[Any], shape: tuple[int, ...]) -> str:
    for m in models:
        got = (int(m.cfg.n_layers), int(m.cfg.n_heads))
        if got != tuple(shape):
            return (f"the model has {got[0]} layers x {got[1]} heads but the result "
                    f"{shape[0]} x {shape[1]}; pass the model the result was measured on")
    return ""


# ---------------------------------------------------------------- small HTML helpers

def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return '<span class="tlspec-na">–</span>'
    return format(float(x), fmt)


def _sig(x: Any, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, in plain notation with thousands separators
    between 0.001 and 1e9 (slopes span orders of magnitude; ``1.553e+04`` reads badly).

    >>> _sig(15527.3), _sig(10.3127), _sig(0.00123456), _sig(2.5e10), _sig(None)
    ('15,530', '10.31', '0.001235', '2.500e+10', '<span class="tlspec-na">–</span>')
    """
    if x is None or not math.isfinite(float(x)):
        return '<span class="tlspec-na">–</span>'
    v = float(f"{float(x):.{digits}g}")
    if v == 0:
        return "0"
    if not 1e-3 <= abs(v) < 1e9:
        return f"{v:.{digits - 1}e}"
    return f"{v:,.{max(digits - 1 - math.floor(math.log10(abs(v))), 0)}f}"


def _plain(value: Any) -> str:
    """A provenance or settings value as text; floats with at most 6 significant digits."""
    if isinstance(value, float) and not isinstance(value, bool):
        return format(value, ".6g")
    return str(value)


def _stats(items: list[tuple[str, str, str]]) -> str:
    return '<div class="r-stats">' + "".join(
        f'<div class="r-stat"><div class="r-stat-k">{esc(k)}</div><div class="r-stat-v">{v}</div>'
        f'<div class="r-stat-n">{esc(n)}</div></div>' for k, v, n in items) + "</div>"


def _provenance(prov: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
    def rows(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if k == "argv":
                continue
            if isinstance(v, dict):
                out += rows(v, f"{prefix}{k}.")
            else:
                shown = ", ".join(map(_plain, v)) if isinstance(v, list) else _plain(v)
                out.append(f"<tr><th>{esc(prefix + k)}</th><td>{esc(shown)}</td></tr>")
        return out

    body = rows(prov) + (rows(settings, "settings.") if settings else [])
    return ('<details class="r-prov"><summary>Provenance and settings</summary>'
            f'<table class="r-kv">{"".join(body)}</table></details>')


def _bar(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value) or hi <= lo:
        return ""
    width = 100.0 * (value - lo) / (hi - lo)
    return f'<span class="r-bar"><span style="width:{max(min(width, 100), 0):.1f}%"></span></span>'


def _forest(est: float, low: float, high: float, m: float, changed: bool) -> str:
    def pos(x: float) -> float:
        return 50.0 + 50.0 * max(min(x / m, 1.0), -1.0)

    if not all(math.isfinite(v) for v in (est, low, high)):
        return ""
    cls = "r-forest r-changed" if changed else "r-forest"
    return (f'<span class="{cls}"><span class="r-zero"></span>'
            f'<span class="r-ci" style="left:{pos(low):.1f}%;'
            f'width:{max(pos(high) - pos(low), 0.4):.1f}%"></span>'
            f'<span class="r-dot" style="left:{pos(est):.1f}%"></span></span>')


def _drill_grid(grid_kwargs: dict[str, Any], scores: Any, sets: list[PatternSet] | None,
                reason: str) -> HeadGrid:
    if sets:
        return head_grid(scores, patterns=tuple(sets) if len(sets) == 2 else sets[0], **grid_kwargs)
    grid = head_grid(scores, **grid_kwargs)
    grid.reason = reason
    return grid


def _route_note(settings: dict[str, Any] | None) -> str:
    """A warning line for a result measured on a reproduction route (``SIOptions.route``)."""
    route = (settings or {}).get("route", "tl_spec")
    if route in (None, "tl_spec"):
        return ""
    what = (settings or {}).get("route_note", "")
    return (f'<p class="tlspec-note r-route"><b>Route {esc(str(route))}: reproduction of an '
            f"artifact of the paper's code</b>{' (' + esc(str(what)) + ')' if what else ''}. "
            "Not tl_spec's clean measurement: compare with route tl_spec to see how much of "
            "the number the route itself contributes.</p>")


def _route_title(settings: dict[str, Any] | None) -> str:
    route = (settings or {}).get("route", "tl_spec")
    return "" if route in (None, "tl_spec") else f", route {route}"


# ---------------------------------------------------------------- built-in renderers

@register_section("specialization_index")
def _render_si(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    model, reason = ctx.resolve(ctx.model, prov.get("model"))
    reason = reason or (_shape_reason([model], result.per_head.shape) if model is not None else "")
    sets = [ctx.patterns(model, result)] if model is not None and not reason else None
    grid = _drill_grid({"grid_id": ctx.next_id()}, result, sets, reason)
    pset = prov.get("prompts") or {}
    stats = [("SI", _num(result.value), f"method {result.method}"),
             ("prompts", str(len(result.tokens)), str(pset.get("name", "custom"))),
             ("layers × heads", f"{result.n_layers} × {result.n_heads}",
              str((prov.get("architecture") or {}).get("attention", ""))),
             ("undefined heads", str(result.undefined_heads), "zero-variance patterns excluded")]
    table = ""
    if result.per_layer is not None:
        pl = result.per_layer
        finite = pl[np.isfinite(pl)]
        lo, hi = (0.0, float(finite.max())) if finite.size else (0.0, 1.0)
        extra = result.within_group is not None
        head = ("<tr><th>layer</th><th>SI</th><th></th><th>min head</th><th>max head</th>"
                + ("<th>within KV group</th><th>between</th>" if extra else "") + "</tr>")
        rows = []
        for layer, v in enumerate(pl):
            row = result.per_head[layer]
            ok = np.isfinite(row)
            mn = f"{np.nanmin(row):.4f} (H{int(np.nanargmin(row))})" if ok.any() else "–"
            mx = f"{np.nanmax(row):.4f} (H{int(np.nanargmax(row))})" if ok.any() else "–"
            cells = (f"<td>L{layer}</td><td>{_num(float(v))}</td><td>{_bar(float(v), lo, hi)}</td>"
                     f"<td>{mn}</td><td>{mx}</td>")
            if extra:
                cells += (f"<td>{_num(float(np.nanmean(result.within_group[layer])))}</td>"
                          f"<td>{_num(float(np.nanmean(result.between_group[layer])))}</td>")
            rows.append(f"<tr>{cells}</tr>")
        table = (f'<h3>SI by layer</h3><table class="r-table">{head}{"".join(rows)}</table>')
    html = (_route_note(result.settings) + _stats(stats) + table + "<h3>Heads</h3>"
            + grid.html(include_runtime=False, include_patterns=False)
            + _provenance(prov, result.settings))
    return Section(f"SI ({result.method}{_route_title(result.settings)}) · "
                   f"{_label(prov.get('model', 'model'))}", html, [grid],
                   subtitle=str(prov.get("model", "")))


@register_section("delta_si")
def _render_delta(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    base_ref = (prov.get("base") or {}).get("model")
    tuned_ref = (prov.get("tuned") or {}).get("model")
    base, why_b = ctx.resolve(ctx.model, base_ref)
    tuned, why_t = ctx.resolve(ctx.tuned_model, tuned_ref, "--tuned-model")
    if base is None or tuned is None:
        reason = "the twin drill-down needs both models: " + "; ".join(
            f"{role}: {why}" for role, why in (("base", why_b), ("tuned", why_t)) if why)
    else:
        reason = _shape_reason([base, tuned], result.per_head_delta.shape)
    sets = [ctx.patterns(base, result.base), ctx.patterns(tuned, result.tuned)] \
        if not reason else None
    grid = _drill_grid({"grid_id": ctx.next_id(), "title": "Δ per-head score (tuned − base)",
                        "subtitle": f"per head: {result.base.settings.get('per_head_meaning', '')}"},
                       result, sets, reason)
    iv = result.interval
    stats = [("ΔSI", f"{result.delta_pct:+.2f} %",
              f"{iv.level:.0%} CI [{iv.low:+.2f}, {iv.high:+.2f}] ({iv.method})"),
             ("p", f"{result.pvalue:.3g}", "paired permutation test"),
             ("SI base", _num(result.base.value), _label(base_ref)),
             ("SI tuned", _num(result.tuned.value), _label(tuned_ref))]
    table = ""
    if result.per_layer_delta_pct is not None and result.layer_intervals is not None:
        ivs = result.layer_intervals
        m = max([abs(v) for i in ivs for v in (i.low, i.high) if math.isfinite(v)] or [1.0]) or 1.0
        lvl = ivs[0].level if ivs else iv.level
        rows = []
        for layer, (d, li) in enumerate(zip(result.per_layer_delta_pct, ivs)):
            changed = layer in result.changed_layers
            p = result.layer_pvalues_holm[layer] if result.layer_pvalues_holm is not None else None
            rows.append(
                f'<tr class="{"r-hl" if changed else ""}"><td>L{layer}</td>'
                f"<td>{_num(float(result.base.per_layer[layer]))}</td>"
                f"<td>{_num(float(result.tuned.per_layer[layer]))}</td>"
                f"<td>{_num(float(d), '+.2f')} %</td><td>[{_num(li.low, '+.2f')}, "
                f"{_num(li.high, '+.2f')}]</td><td>{_forest(float(d), li.low, li.high, m, changed)}"
                f"</td><td>{_num(p, '.3g')}</td><td>{'changed' if changed else ''}</td></tr>")
        table = ('<h3>ΔSI by layer</h3><table class="r-table"><tr><th>layer</th><th>SI base</th>'
                 f"<th>SI tuned</th><th>ΔSI</th><th>{lvl:.1%} simultaneous CI</th>"
                 f'<th><span class="r-forest r-axis"><span style="left:0">−{m:.1f} %</span>'
                 '<span style="left:50%;transform:translateX(-50%)">0</span>'
                 f'<span style="right:0">+{m:.1f} %</span></span></th>'
                 f"<th>p (Holm)</th><th></th></tr>{''.join(rows)}</table>"
                 '<p class="tlspec-note">Intervals are Bonferroni-simultaneous over layers; '
                 "“changed” marks layers whose Holm-adjusted p is below 1 − confidence. ΔSI is "
                 f"the relative change in % as in {cite('delia2026', 'Table 4')}.</p>")
    html = (_route_note(result.base.settings) + _stats(stats) + table + "<h3>Heads</h3>"
            + grid.html(include_runtime=False, include_patterns=False)
            + _provenance(prov, result.settings))
    return Section(f"ΔSI ({result.method}{_route_title(result.base.settings)}) · "
                   f"{_label(base_ref)} → {_label(tuned_ref)}", html, [grid],
                   subtitle=f"{base_ref} → {tuned_ref}")


def _generic(result: Any, ctx: ReportContext) -> Section:
    kind = getattr(result, "kind", type(result).__name__)
    grids = []
    html = (f'<p class="tlspec-note">No report renderer is registered for result kind '
            f"“{esc(kind)}” yet (tl_spec.viz.sections.register_section adds one).</p>")
    per_head = getattr(result, "per_head", None)
    if per_head is not None and np.ndim(per_head) == 2:
        grid = head_grid(per_head, title=f"{kind}: per head", grid_id=ctx.next_id())
        grid.reason = "no drill-down renderer for this result kind"
        grids.append(grid)
        html += grid.html(include_runtime=False, include_patterns=False)
    html += _provenance(getattr(result, "provenance", {}) or {}, getattr(result, "settings", None))
    return Section(f"{kind}", html, grids)

