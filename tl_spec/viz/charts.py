"""Small line charts for the HTML report, drawn by matplotlib and inlined as SVG.

Matplotlib picks the ticks (round numbers inside the data range, not the extremes), every chart
has both axis labels (with units where the quantity has one) and a legend, text stays text
(``svg.fonttype: none``: selectable, searchable, small) and the output is deterministic: no
date, ids salted by the chart's content, so the same data give the same bytes.

>>> svg = line_chart([0, 1, 2], {"seed 42": [1.0, 1.5, 2.5]}, xlabel="layer", ylabel="SI")
>>> svg.startswith('<figure class="r-chart"'), ">layer</text>" in svg, ">SI</text>" in svg
(True, True, True)
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tl_spec.colors import OKABE_ITO
from tl_spec.viz.figures import _STYLE, _figure
from tl_spec.viz.html import content_key, esc

__all__ = ["inline_svg", "line_chart"]

# Text as <text> elements in the page's font, not paths; no per-file style rule leaking into the page.
_SVG_STYLE = {**_STYLE, "svg.fonttype": "none",
              "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"]}


def inline_svg(fig: Any, label: str) -> str:
    """A matplotlib figure as SVG text to inline in a page, labelled for screen readers.

    Saved without date or creator (reproducible bytes); the XML prolog, the metadata and the
    stylesheet (a page-wide ``*`` rule) are removed. Call it inside the ``rc_context`` that drew
    the figure, so its ``svg.hashsalt`` applies.

    Args:
        fig: the matplotlib figure.
        label: the ``aria-label`` of the ``<svg>`` (escaped here).

    Returns:
        The ``<svg ...>...</svg>`` text.

    >>> import matplotlib.pyplot as plt
    >>> inline_svg(plt.figure(), "empty").startswith('<svg role="img" aria-label="empty"')
    True
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, facecolor="white")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]                                   # no XML prolog or doctype
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"<style[^>]*>.*?</style>", "", svg, flags=re.S)   # a page-wide `*` rule
    return svg.replace("<svg ", f'<svg role="img" aria-label="{esc(label)}" ', 1)


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    integer_x: bool = False,
    width: float = 6.4,
    height: float = 2.7,
) -> str:
    """One line per series (markers at the data, gaps at NaN) as ``<figure class="r-chart">``.

    Args:
        x: the x values shared by every series.
        series: ``{legend label: y values}``, each as long as ``x``.
        xlabel: the x-axis label (with its unit, if any).
        ylabel: the y-axis label (with its unit, if any).
        integer_x: integer x ticks only (layers).
        width: width in inches (the SVG scales down to fit the page).
        height: height in inches.

    Returns:
        The SVG inside a ``<figure>`` whose ``data-xlabel``/``data-ylabel`` name the axes.
    """
    import matplotlib

    xs = np.asarray(x, dtype=float)
    ys = {str(k): np.asarray(v, dtype=float) for k, v in series.items()}
    salt = content_key(xs.tolist(), {k: v.tolist() for k, v in ys.items()}, xlabel, ylabel)
    with matplotlib.rc_context({**_SVG_STYLE, "svg.hashsalt": salt}):
        fig, ax = _figure(width, height)
        for i, (name, v) in enumerate(ys.items()):
            ax.plot(xs, v, marker="o", markersize=3.2, linewidth=1.5,
                    color=OKABE_ITO[i % len(OKABE_ITO)], label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if integer_x:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.margins(x=0.03, y=0.08)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        svg = inline_svg(fig, f"{ylabel} against {xlabel}")
    return (f'<figure class="r-chart" data-xlabel="{esc(xlabel)}" data-ylabel="{esc(ylabel)}" '
            f'data-series="{len(ys)}">{svg.strip()}</figure>')
