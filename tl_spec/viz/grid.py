"""A layers x heads grid of any per-head score, with a CircuitsVis drill-down per head.

Cells are coloured by the score (diverging scale centred at 0 for signed scores, sequential
otherwise), labelled ``L{layer}H{head}`` and show the exact value on hover; NaN is shown as
missing. Clicking a cell shows that head's attention pattern on the chosen prompt
(``AttentionPattern``) and its whole layer (``AttentionHeads``); for twins, base and tuned side
by side with their difference. Works inline in Jupyter and saved as an offline page.

>>> import numpy as np
>>> grid = head_grid(np.array([[0.1, -0.4], [np.nan, 0.3]]), title="toy")
>>> grid.shape, grid.scale.diverging, "L1H0 = missing" in grid.html()
((2, 2), True, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from jaxtyping import Float

from tl_spec.colors import ColorScale, oklch_to_hex, text_color
from tl_spec.errors import TLSpecError
from tl_spec.experiments.delta import DeltaResult
from tl_spec.experiments.si import SIResult
from tl_spec.fileio import atomic_write_text
from tl_spec.models import load_model, model_id
from tl_spec.options.si import SIOptions
from tl_spec.prompts import STANDARD_10
from tl_spec.records import Result
from tl_spec.viz.html import data_script, esc, notebook_runtime, page, runtime_tags
from tl_spec.viz.patterns import MAX_TOKENS, PatternSet, capture_patterns, check_decimals

__all__ = ["HeadGrid", "Scores", "exact_value", "format_value", "head_grid", "resolve_scores"]

# A score per head: a [layers, heads] array, an SIResult (per_head), a DeltaResult
# (per_head_delta), or any result with a per-head heat map (Result.heat()).
Scores = Union[Float[np.ndarray, "n_layers n_heads"], Sequence[Sequence[float]], Result]

PATTERN_COLORS = {"pattern": oklch_to_hex(0.42, 0.11, 250.0),
                  "negative": oklch_to_hex(0.45, 0.14, 258.0),
                  "positive": oklch_to_hex(0.45, 0.15, 28.0)}


def format_value(value: float) -> str:
    """Compact text for a cell (the exact value is in the hover text).

    >>> format_value(0.41234), format_value(-12.345), format_value(float("nan"))
    ('0.41', '-12.3', '–')
    """
    if not math.isfinite(value):
        return "–"
    a = abs(value)
    return f"{value:.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.2f}"


def exact_value(value: float) -> str:
    """A cell's value for its hover text and the drill-down header: 4 significant digits.

    >>> exact_value(0.7041309750771352), exact_value(-0.5), exact_value(1234567.0), exact_value(float("nan"))
    ('0.7041', '-0.5', '1.235e+06', 'missing')
    """
    return f"{value:.4g}" if math.isfinite(value) else "missing"


def resolve_scores(scores: Scores) -> tuple[Float[np.ndarray, "n_layers n_heads"], dict[str, Any]]:
    """``[L, H]`` scores from an array, an ``SIResult`` (per_head), a ``DeltaResult``
    (per_head_delta) or any other result with a per-head heat map (:meth:`Result.heat`).

    Returns the array and defaults taken from the result (title, meaning, twins, diverging).

    >>> resolve_scores([[0.5, 1.0]])[0].tolist()
    [[0.5, 1.0]]
    """
    meta: dict[str, Any] = {}
    if isinstance(scores, DeltaResult):
        arr = scores.per_head_delta
        meta = {"title": f"Δ per-head score (tuned − base), {scores.method}", "twins": True,
                "diverging": True,
                "subtitle": "per head: " + scores.base.settings.get("per_head_meaning", "score"),
                "prepend_bos": scores.base.settings.get("prepend_bos"),
                "models": (scores.base.provenance.get("model"), scores.tuned.provenance.get("model"))}
    elif isinstance(scores, SIResult):
        arr = scores.per_head
        meta = {"title": f"Per-head score, {scores.method}", "twins": False,
                "subtitle": scores.settings.get("per_head_meaning", ""),
                "prepend_bos": scores.settings.get("prepend_bos"),
                "models": (scores.provenance.get("model"),)}
    elif isinstance(scores, Result):
        heat = scores.heat()
        if heat is None:
            raise TLSpecError(f"a {type(scores).__name__} has no per-head scores to draw; pass a "
                              "[layers, heads] array")
        caption, arr, diverging = heat
        meta = {"title": caption, "twins": False, "diverging": diverging}
    else:
        arr = scores
    try:
        out = np.array(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise TLSpecError(f"scores must be a [layers, heads] array of numbers, an SIResult or a "
                          f"DeltaResult; got {type(scores).__name__}") from None
    if out.ndim != 2 or 0 in out.shape:
        raise TLSpecError(f"scores must be a [layers, heads] array, got shape {out.shape}; pass "
                          "e.g. si.per_head or delta.per_head_delta")
    out[~np.isfinite(out)] = np.nan
    return out, meta


def _model_label(model: Any, fallback: str) -> str:
    try:
        text = model_id(model)
    except Exception:  # noqa: BLE001 (a look-alike without cfg: keep the fallback)
        return fallback
    return (Path(text).name or text) if os.sep in text else text


@dataclass
class HeadGrid:
    """A rendered head grid: scores, colour scale, drill-down patterns (or why there are none)."""

    scores: Float[np.ndarray, "n_layers n_heads"]
    scale: ColorScale
    title: str
    subtitle: str = ""
    prompts: list[dict[str, PatternSet]] = field(default_factory=list)
    reason: str = ""
    twins: bool = False
    grid_id: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.scores.shape[0]), int(self.scores.shape[1])

    @property
    def pattern_sets(self) -> list[PatternSet]:
        """Every pattern set the drill-down uses (each prompt; base and tuned for twins)."""
        return [ps for entry in self.prompts for ps in entry.values()]

    @property
    def initial(self) -> tuple[int, int]:
        """The head selected on load: the largest |score| (first in order on ties)."""
        a = np.where(np.isnan(self.scores), -np.inf, np.abs(self.scores))
        idx = int(np.argmax(a))
        return idx // self.shape[1], idx % self.shape[1]

    def value(self, label: str) -> float:
        """The score of ``"L{layer}H{head}"``.

        >>> head_grid([[1.0, 2.0]]).value("L0H1")
        2.0
        """
        try:
            layer, head = (int(x) for x in label.upper().lstrip("L").split("H"))
            return float(self.scores[layer, head])
        except (ValueError, IndexError):
            raise TLSpecError(f"{label!r} is no head of this {self.shape[0]}x{self.shape[1]} "
                              "grid; write it as 'L3H7'") from None

    def _cells(self) -> str:
        n_layers, n_heads = self.shape
        small = n_heads <= 16
        cw, ch = ("46px", "28px") if small else ("22px", "20px") if n_heads <= 32 else ("13px", "13px")
        out = [f'<div class="tlspec-matrix" role="grid" aria-label="{esc(self.title)}" '
               f'style="--cw:{cw};--ch:{ch};grid-template-columns:auto repeat({n_heads},{cw})">',
               '<div class="tlspec-colhead"></div>']
        step = 1 if n_heads <= 16 else 2 if n_heads <= 32 else 4
        out += [f'<div class="tlspec-colhead">{f"H{h}" if h % step == 0 else ""}</div>'
                for h in range(n_heads)]
        for layer in range(n_layers):
            out.append(f'<div class="tlspec-rowhead">L{layer}</div>')
            for head in range(n_heads):
                v = float(self.scores[layer, head])
                name = f"L{layer}H{head}"
                color = self.scale.color(v)
                exact = "missing" if color is None else exact_value(v)
                text = format_value(v) if small else ""
                style = "" if color is None else f' style="background:{color};color:{text_color(color)}"'
                cls = "tlspec-cell" + (" tlspec-missing" if color is None else "")
                out.append(f'<button type="button" class="{cls}" data-l="{layer}" data-h="{head}" '
                           f'data-text="{esc("score " + exact)}" title="{name} = {exact}" '
                           f'aria-label="{name} = {exact}" aria-pressed="false"{style}>{text}</button>')
        out.append("</div>")
        return "".join(out)

    def _legend(self) -> str:
        ticks = "".join(f'<span class="tlspec-legend-tick">{esc(format_value(t))}</span>'
                        for t in self.scale.ticks(5))
        kind = "diverging, centred at 0" if self.scale.diverging else "sequential"
        return (f'<div class="tlspec-legend"><span class="tlspec-legend-scale" title="{kind}">'
                f'<span class="tlspec-legend-bar" style="background:{self.scale.css_gradient()}">'
                f'</span>{ticks}</span><span><span class="tlspec-swatch tlspec-missing"></span>'
                "missing (NaN)</span></div>")

    def _drill(self) -> str:
        head = ('<div class="tlspec-drill-head"><h4 class="tlspec-drill-title"></h4>'
                '<span class="tlspec-drill-value"></span></div>')
        if not self.prompts:
            why = self.reason or "no model was given, so no attention patterns were captured"
            return (f'<div class="tlspec-drill" data-state="no-patterns">{head}'
                    f'<p class="tlspec-note">Grid only: {esc(why)}.</p></div>')
        entries = [e["base"] for e in self.prompts]
        if len(entries) > 1:
            opts = "".join(f'<option value="{i}">{esc(_short(ps.prompt))}</option>'
                           for i, ps in enumerate(entries))
            prompt = f'<label>Prompt <select>{opts}</select></label>'
        else:
            prompt = f'Prompt: <span title="{esc(entries[0].prompt)}">“{esc(_short(entries[0].prompt))}”</span>'
        seg = ""
        if self.twins:
            seg = ('<p class="tlspec-layer-bar">show <span class="tlspec-seg" role="group" '
                   'aria-label="layer view">' + "".join(
                       f'<button type="button" data-mode="{m}">{t}</button>'
                       for m, t in (("base", "base"), ("tuned", "tuned"), ("diff", "tuned − base")))
                   + "</span></p>")
        models = " vs ".join(esc(ps.label) for ps in self.prompts[0].values())
        note = f'<p class="tlspec-note">{esc(self.reason)}.</p>' if self.reason else ""
        return (f'<div class="tlspec-drill" data-state="loading">{head}'
                f'<p class="tlspec-prompt">{prompt} · {models}</p>{note}'
                '<div class="tlspec-views"><p class="tlspec-note">Loading patterns…</p></div>'
                '<details class="tlspec-layer"><summary class="tlspec-layer-title">Whole layer'
                f'</summary>{seg}<div class="tlspec-layer-view"></div></details>'
                '<details class="tlspec-tokens"><summary>Tokens (<span class="tlspec-tokcount">'
                '</span>)</summary><ol class="tlspec-toklist"></ol></details></div>')

    def html(self, *, include_runtime: bool = True, include_patterns: bool = True) -> str:
        """The grid as an HTML fragment (with the offline runtime unless a page provides it; the
        CircuitsVis bundle only when there are patterns to draw)."""
        data = {"initial": list(self.initial), "twins": self.twins, "colors": PATTERN_COLORS,
                "prompts": [{k: ps.key for k, ps in e.items()} for e in self.prompts],
                "model_label": self.prompts[0]["base"].label if self.prompts else ""}
        gid = f' id="{esc(self.grid_id)}"' if self.grid_id else ""
        parts = [f'<div class="tlspec tlspec-grid"{gid}>', data_script(data, "tlspec-grid-data"),
                 '<div class="tlspec-grid-main">',
                 f'<p class="tlspec-grid-title">{esc(self.title)}</p>']
        if self.subtitle:
            parts.append(f'<p class="tlspec-grid-sub">{esc(self.subtitle)}</p>')
        parts += [self._legend(), f'<div class="tlspec-scroll">{self._cells()}</div>',
                  '<div class="tlspec-hover" aria-live="polite">Hover a cell for its exact value; '
                  "click it for that head's attention pattern.</div></div>", self._drill()]
        if include_patterns:
            parts += [data_script(ps.to_json(), "tlspec-patterns", key=ps.key)
                      for ps in _unique(self.pattern_sets)]
        parts.append("</div>")
        body = "".join(parts)
        return runtime_tags(bundle=bool(self.prompts)) + "\n" + body if include_runtime else body

    def _repr_html_(self) -> str:
        """The notebook output: the CircuitsVis bundle only in the kernel's first grid output that
        draws patterns; later outputs wait for it (:func:`tl_spec.viz.html.notebook_runtime`)."""
        runtime = notebook_runtime(needs_bundle=bool(self.prompts))
        return runtime + "\n" + self.html(include_runtime=False)

    def to_page(self) -> str:
        """A complete offline HTML document holding this grid."""
        return page(self.title, f'<main style="padding:24px;max-width:1400px;margin:auto">'
                                f'{self.html(include_runtime=False)}</main>',
                    bundle=bool(self.prompts))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_page` to ``path`` atomically; returns the path."""
        target = Path(path)
        if target.is_dir():
            raise TLSpecError(f"{target} is a directory; give a file name such as grid.html")
        return atomic_write_text(target, self.to_page())


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _unique(sets: Sequence[PatternSet]) -> list[PatternSet]:
    seen: dict[str, PatternSet] = {}
    for ps in sets:
        seen.setdefault(ps.key, ps)
    return list(seen.values())


def _as_models(refs: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(load_model(m) if isinstance(m, (str, os.PathLike)) else m for m in refs)


def _check_model_shape(models: Sequence[Any], shape: tuple[int, int]) -> None:
    for m in models:
        cfg = getattr(m, "cfg", None)
        got = (int(getattr(cfg, "n_layers", -1)), int(getattr(cfg, "n_heads", -1)))
        if got != shape:
            raise TLSpecError(f"the scores are {shape[0]} layers x {shape[1]} heads but the model "
                              f"has {got[0]} x {got[1]}; pass the model the scores were measured on")


def head_grid(
    scores: Scores,
    *,
    model: Any = None,
    prompt: str | Sequence[str] | None = None,
    patterns: PatternSet | Sequence[Any] | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    diverging: bool | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    decimals: int = 3,
    max_length: int = SIOptions.max_length,
    prepend_bos: bool | None = None,
    grid_id: str = "",
) -> HeadGrid:
    """A layers x heads grid of ``scores`` with drill-down patterns when a model is given.

    ``scores``: a ``[L, H]`` array, an ``SIResult`` (``per_head``) or a ``DeltaResult``
    (``per_head_delta``). ``model``: one model (or checkpoint path), or ``(base, tuned)`` for
    twins; it is run once per prompt (default: the first Standard-10 prompt). ``patterns``:
    precomputed :class:`PatternSet` (or ``(base, tuned)`` pairs), instead of a model.

    >>> g = head_grid(si, model=model)          # doctest: +SKIP
    >>> g                                       # in Jupyter: the interactive grid  # doctest: +SKIP
    >>> g.save("grid.html")                     # doctest: +SKIP
    """
    arr, meta = resolve_scores(scores)
    check_decimals(decimals)
    if model is not None and patterns is not None:
        raise TLSpecError("give either model= (patterns are captured) or patterns=, not both")
    if prompt is not None and model is None:
        raise TLSpecError("prompt= needs model= (the model is run on the prompt to get patterns)")
    prompts = _prompt_list(prompt) if model is not None else []
    refs = (tuple(model) if isinstance(model, (tuple, list)) else (model,)) if model is not None else ()
    if model is not None and not 1 <= len(refs) <= 2:
        raise TLSpecError(f"model must be one model or a (base, tuned) pair, got {len(refs)}")
    if meta.get("twins") and model is not None and len(refs) != 2:
        raise TLSpecError("a DeltaResult's drill-down compares twins: pass model=(base, tuned)")
    if model is not None and (not isinstance(max_length, int) or not 2 <= max_length <= MAX_TOKENS):
        raise TLSpecError(f"max_length for a drill-down is 2..{MAX_TOKENS} tokens, got "
                          f"{max_length!r}")
    div = diverging if diverging is not None else meta.get("diverging")
    scale = ColorScale.for_values(arr, diverging=div, vmin=vmin, vmax=vmax)
    grid = HeadGrid(arr, scale, title or meta.get("title", "Score per head"),
                    subtitle if subtitle is not None else meta.get("subtitle", ""),
                    grid_id=grid_id)
    if patterns is not None:
        grid.prompts = _pattern_entries(patterns, arr.shape)
    elif model is not None:
        models = _as_models(refs)
        _check_model_shape(models, arr.shape)
        bos = prepend_bos if prepend_bos is not None else meta.get("prepend_bos")
        for p in prompts:
            sets = [capture_patterns(m, p, label=_model_label(m, role), decimals=decimals,
                                     max_length=max_length, prepend_bos=bos)
                    for m, role in zip(models, ("base", "tuned"))]
            grid.prompts.append(dict(zip(("base", "tuned"), sets)))
    grid.twins = bool(grid.prompts) and "tuned" in grid.prompts[0]
    if grid.twins and grid.prompts[0]["base"].tokens != grid.prompts[0]["tuned"].tokens:
        grid.reason = "the two models tokenize the prompt differently, so no difference is shown"
    return grid


def _prompt_list(prompt: str | Sequence[str] | None) -> list[str]:
    if prompt is None:
        return [STANDARD_10[0]]
    items = [prompt] if isinstance(prompt, str) else list(prompt)
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise TLSpecError(f"prompt must be a non-empty string or a list of them, got {prompt!r}")
    return items


def _pattern_entries(patterns: Any, shape: tuple[int, ...]) -> list[dict[str, PatternSet]]:
    items = [patterns] if isinstance(patterns, PatternSet) else list(patterns)
    if items and all(isinstance(x, PatternSet) for x in items) and len(items) == 2 \
            and not isinstance(patterns, list):
        items = [tuple(items)]  # a (base, tuned) tuple
    entries = []
    for item in items:
        pair = (item,) if isinstance(item, PatternSet) else tuple(item)
        if not 1 <= len(pair) <= 2 or not all(isinstance(p, PatternSet) for p in pair):
            raise TLSpecError("patterns= takes PatternSet objects, or (base, tuned) pairs of them")
        for ps in pair:
            if ps.shape[:2] != tuple(shape):
                raise TLSpecError(f"patterns are {ps.shape[0]} layers x {ps.shape[1]} heads but "
                                  f"the scores are {shape[0]} x {shape[1]}")
        entries.append(dict(zip(("base", "tuned"), pair)))
    return entries
