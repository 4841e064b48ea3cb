"""Report section and chart for the SI-versus-length profile (where sliding windows start to bind).

Registered on import (``tl_spec.viz`` imports this module). The chart is matplotlib SVG inlined
like :func:`tl_spec.viz.charts.line_chart` (text stays text, deterministic bytes): the model's
SI against the truncation length with its interval band, each layer's SI as a thin line where the
method has one, and a dashed vertical mark at each length where a layer's sliding window first
binds on the measured prompts (D'Elia 2026 measures at 128 tokens, where 4,096-token windows
never bind).

>>> from tl_spec.viz.sections import SECTION_RENDERERS
>>> "length_profile" in SECTION_RENDERERS
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_spec.colors import OKABE_ITO
from tl_spec.viz.charts import _SVG_STYLE, inline_svg
from tl_spec.viz.figures import _figure
from tl_spec.viz.html import content_key, esc
from tl_spec.viz.sections import (
    ReportContext,
    Section,
    _label,
    _num,
    _provenance,
    _stats,
    cite,
    register_section,
)

__all__ = ["binding_marks", "length_chart"]


def binding_marks(result: Any) -> dict[int, list[int]]:
    """``{length: [layers]}``: the lengths at which some layer's window first binds, and which.

    >>> from types import SimpleNamespace
    >>> binding_marks(SimpleNamespace(binding_from=[48, None, 48, 96]))
    {48: [0, 2], 96: [3]}
    """
    marks: dict[int, list[int]] = {}
    for layer, n in enumerate(result.binding_from):
        if n is not None:
            marks.setdefault(int(n), []).append(layer)
    return dict(sorted(marks.items()))


def _layers_text(layers: list[int]) -> str:
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return ("layer " if len(layers) == 1 else "layers ") + ",".join(str(x) for x in layers)


def length_chart(result: Any, *, width: float = 6.4, height: float = 2.9) -> str:
    """SI against truncation length with intervals and window-binding marks, as inline SVG.

    Args:
        result: a :class:`~tl_spec.experiments.length.LengthProfileResult`.
        width: width in inches (the SVG scales down to fit the page).
        height: height in inches.

    Returns:
        The SVG inside ``<figure class="r-chart">`` (``data-marks`` lists the marked lengths).

    >>> svg = length_chart(profile)  # doctest: +SKIP
    """
    import matplotlib

    xs = np.asarray(result.lengths, dtype=float)
    si = np.asarray(result.si, dtype=float)
    low = np.array([iv.low for iv in result.intervals], dtype=float)
    high = np.array([iv.high for iv in result.intervals], dtype=float)
    marks = binding_marks(result)
    level = result.intervals[0].level if result.intervals else 0.95
    salt = content_key(xs.tolist(), si.tolist(), low.tolist(), high.tolist(),
                       {str(k): v for k, v in marks.items()}, result.method)
    with matplotlib.rc_context({**_SVG_STYLE, "svg.hashsalt": salt}):
        fig, ax = _figure(width, height)
        if result.per_layer is not None:
            layers = np.asarray(result.per_layer, dtype=float).T
            few = len(layers) <= 8  # one legend entry per layer; past 8, one grey entry for all
            for layer, ys in enumerate(layers):
                colour = OKABE_ITO[(layer + 1) % len(OKABE_ITO)] if few else "#8c959f"
                label = f"layer {layer}" if few else ("each layer" if layer == 0 else None)
                ax.plot(xs, ys, linewidth=0.8, alpha=0.55, color=colour, label=label)
        ax.fill_between(xs, low, high, color=OKABE_ITO[0], alpha=0.18, linewidth=0,
                        label=f"{level:.0%} interval (prompts)")
        ax.plot(xs, si, marker="o", markersize=3.4, linewidth=1.8, color=OKABE_ITO[0],
                label="SI (model)")
        for n, layers in marks.items():
            windows = sorted({result.windows[x] for x in layers})
            ax.axvline(n, color="#6e7781", linestyle="--", linewidth=1.0,
                       label=f"window {','.join(map(str, windows))} binds ({_layers_text(layers)})")
        ax.set_xlabel("truncation length L (tokens)")
        ax.set_ylabel(f"SI ({result.method})")
        ax.margins(x=0.03, y=0.08)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        svg = inline_svg(fig, "SI against truncation length")
    listed = ",".join(str(n) for n in marks)
    return (f'<figure class="r-chart" data-xlabel="truncation length L (tokens)" '
            f'data-ylabel="SI ({esc(result.method)})" data-marks="{listed}">{svg.strip()}</figure>')


@register_section("length_profile")
def _render_length(result: Any, ctx: ReportContext) -> Section:
    prov = result.provenance or {}
    iv0, ivn = result.intervals[0], result.intervals[-1]
    first = result.first_binding
    windows = sorted({w for w in result.windows if w is not None})
    stats = [(f"SI at {result.lengths[0]} tokens", _num(float(result.si[0])),
              f"{iv0.level:.0%} CI [{iv0.low:.4f}, {iv0.high:.4f}]"),
             (f"SI at {result.lengths[-1]} tokens", _num(float(result.si[-1])),
              f"{ivn.level:.0%} CI [{ivn.low:.4f}, {ivn.high:.4f}]"),
             ("window binds from", "never" if first is None else f"{first} tokens",
              f"windows {windows}" if windows else "global attention in every layer")]
    rows = []
    for i, n in enumerate(result.lengths):
        iv = result.intervals[i]
        bound = [x for x in range(len(result.windows)) if result.n_beyond_window[i, x] > 0]
        rows.append(f"<tr><td>{n}</td><td>{_num(float(result.si[i]))}</td>"
                    f"<td>[{_num(iv.low)}, {_num(iv.high)}]</td><td>{result.n_truncated[i]}</td>"
                    f"<td>{esc(_layers_text(bound)) if bound else '–'}</td></tr>")
    note = (esc("Each prompt is truncated to min(its length, L) tokens; a layer with window w "
                "binds once a prompt has more than w tokens (query q sees key k iff "
                "0 ≤ q − k < w). Below the first mark no window can have shaped the SI, so a "
                "difference from a global-attention model there is not a window effect; ")
            + cite("delia2026", "Table 4")
            + esc(" compares at 128 tokens, below its models' 4,096-token windows."))
    html = (_stats(stats)
            + f'<p class="tlspec-note">{note}</p>'
            + length_chart(result)
            + '<table class="r-table"><tr><th>L (tokens)</th><th>SI</th><th>interval</th>'
              "<th>prompts cut</th><th>window binds in</th></tr>" + "".join(rows) + "</table>"
            + _provenance(prov, result.settings))
    return Section(f"SI versus prompt length · {_label(prov.get('model'))}", html, [],
                   subtitle=str(prov.get("model")))
