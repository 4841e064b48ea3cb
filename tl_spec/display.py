"""Plain-text and HTML renderings of result headlines: what a result shows in Jupyter.

Pure functions (values in, text out) shared by every result kind: number formatting, the one-line
``repr``, a compact HTML table of headline numbers, and a static layers x heads heat table coloured
in Python (no script, no CircuitsVis: the interactive drill-down is :func:`tl_spec.viz.head_grid`).

>>> fmt(0.47104), fmt(-3.2149), fmt(12345.678), fmt(None)
('0.471', '-3.21', '1.23e+04', '–')
>>> "<table" in heat_table([[0.1, 0.9]], caption="per-head SI")
True
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.colors import ColorScale, text_color

__all__ = ["fmt", "headline_table", "heat_table", "one_line", "result_html", "short_name"]

#: Heat tables with more cells than this show per-layer summaries instead (keeps outputs small).
MAX_HEAT_CELLS = 4096
_CSS = ("font-family:system-ui,sans-serif;font-size:12px;border-collapse:collapse;"
        "margin:4px 0")


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; intervals as ``[low, high]``; None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return f"{v:.{digits}g}"
    if hasattr(value, "low") and hasattr(value, "high"):
        return f"[{fmt(value.low, digits)}, {fmt(value.high, digits)}]"
    if isinstance(value, (list, tuple)) and len(value) <= 6:
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def short_name(model: Any) -> str:
    """A model's readable name: the last part of a local path, a hub name as it is.

    >>> short_name("/root/.cache/tl_spec/zoo/default/base-gqa"), short_name("meta-llama/Llama-2-7b")
    ('base-gqa', 'meta-llama/Llama-2-7b')
    """
    text = str(model or "?")
    looks_like_path = (text.startswith(("/", ".", "~")) or text.count("/") > 1
                       or (os.sep != "/" and os.sep in text))
    return os.path.basename(text.rstrip("/\\")) or text if looks_like_path else text


def one_line(cls: str, tags: Sequence[str], headline: Mapping[str, Any], shape: str | None,
             *, limit: int = 390) -> str:
    """``Cls(tag, ..., name=value, ..., shape)``, shortened to fit ``limit`` characters.

    >>> one_line("SIResult", ["pattern", "base-gqa"], {"SI": 0.4712}, "4x4 heads")
    'SIResult(pattern, base-gqa, SI=0.471, 4x4 heads)'
    """
    parts = [str(t) for t in tags if t] + [f"{k}={fmt(v)}" for k, v in headline.items()]
    if shape:
        parts.append(shape)
    text = f"{cls}({', '.join(parts)})"
    while len(text) > limit and len(parts) > 1:
        parts = [p for p in parts if p != "..."][:-1] + ["..."]
        text = f"{cls}({', '.join(parts)})"
    return text[:limit]


def headline_table(title: str, rows: Mapping[str, Any]) -> str:
    """A two-column HTML table (name, value) of headline numbers, values escaped."""
    body = "".join(
        f"<tr><th style='text-align:left;padding:1px 8px 1px 0'>{html.escape(str(k))}</th>"
        f"<td style='padding:1px 0'>{html.escape(fmt(v, 4))}</td></tr>"
        for k, v in rows.items()
    )
    return (f"<table style='{_CSS}'><caption style='text-align:left;font-weight:600;white-space:nowrap'>"
            f"{html.escape(title)}</caption>{body}</table>")


def heat_table(values: Float[np.ndarray, "n_layers n_heads"] | Sequence[Sequence[float]], *,
               caption: str, diverging: bool | None = None) -> str:
    """A static layers x heads table, each cell coloured by its value (NaN grey).

    Small grids print the values; large ones (more than :data:`MAX_HEAT_CELLS` cells) are
    summarised per layer (mean, min, max over heads) so the output stays small.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        return ""
    n_layers, n_heads = arr.shape
    scale = ColorScale.for_values(arr, diverging=diverging)
    cap = (f"<caption style='text-align:left;font-weight:600;white-space:nowrap'>{html.escape(caption)}"
           f"<span style='font-weight:400'> (layers x heads)</span></caption>")
    if arr.size > MAX_HEAT_CELLS:
        with np.errstate(all="ignore"):
            summary = {"mean": np.nanmean(arr, 1), "min": np.nanmin(arr, 1), "max": np.nanmax(arr, 1)}
        head = "<tr><th>layer</th>" + "".join(f"<th>{k}</th>" for k in summary) + "</tr>"
        rows = "".join(f"<tr><th>L{i}</th>" + "".join(_cell(scale, float(v[i]), str_value=True)
                                                      for v in summary.values()) + "</tr>"
                       for i in range(n_layers))
        return f"<table style='{_CSS}'>{cap}{head}{rows}</table>"
    show = arr.size <= 256
    head = "<tr><th></th>" + "".join(f"<th style='font-weight:400'>H{h}</th>"
                                     for h in range(n_heads)) + "</tr>"
    rows = "".join(
        f"<tr><th style='font-weight:400;padding-right:4px'>L{i}</th>"
        + "".join(_cell(scale, float(arr[i, h]), str_value=show, title=f"L{i}H{h}")
                  for h in range(n_heads)) + "</tr>"
        for i in range(n_layers)
    )
    return f"<table style='{_CSS}'>{cap}{head}{rows}</table>"


def _cell(scale: ColorScale, value: float, *, str_value: bool, title: str = "") -> str:
    color = scale.color(value)
    bg = color or "#e7e9ec"
    fg = text_color(bg)
    text = "" if not str_value else (f"{value:.2f}" if math.isfinite(value) and abs(value) < 100
                                     else fmt(value, 3))
    tip = f" title='{title} {fmt(value, 4)}'" if title and not str_value else ""
    return (f"<td style='background:{bg};color:{fg};padding:1px 4px;min-width:14px;"
            f"text-align:right'{tip}>{text}</td>")


def result_html(title: str, headline: Mapping[str, Any],
                heat: tuple[str, np.ndarray, bool | None] | None) -> str:
    """The ``_repr_html_`` of a result: headline table, then the heat table if there is one."""
    parts = [headline_table(title, headline)]
    if heat is not None:
        caption, values, diverging = heat
        parts.append(heat_table(values, caption=caption, diverging=diverging))
    return "<div class='tl-spec-result'>" + "".join(parts) + "</div>"
