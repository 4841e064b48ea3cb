"""Interactive and static views of per-head scores: head grids, offline reports, paper figures.

Every view is generic over "a score per head" (a ``[layers, heads]`` array, an ``SIResult``, a
``DeltaResult`` or any result with a per-head heat map) and every page works with no network
(CircuitsVis comes from the installed wheel: once per page, once per notebook kernel with the first
grid that draws patterns, never for a grid without them; see :mod:`tl_spec.viz.html`). Paper figures take the result objects they draw
(one, a list, or ``{label: result}``) or plain numbers; matplotlib is imported only when a
figure is drawn.

>>> import tl_spec.viz as viz
>>> grid = viz.head_grid([[0.2, 0.5], [0.4, float("nan")]])
>>> grid.shape
(2, 2)
>>> viz.head_grid(si, model=model)                       # in Jupyter: click a head  # doctest: +SKIP
>>> viz.write_report(["si.json", "delta.json"], "out")   # out/report.html           # doctest: +SKIP
>>> fig, data = viz.perplexity_slope_figure({"MHA": sens_mha, "GQA": sens_gqa})     # doctest: +SKIP
"""

from __future__ import annotations

from tl_spec.viz.figures import (
    FigureData,
    delta_si_figure,
    perplexity_slope_figure,
    probe_response_figure,
    save,
    si_by_layer_figure,
    stability_figure,
)
from tl_spec.viz.grid import HeadGrid, head_grid
from tl_spec.viz.html import reset_notebook_bundle
from tl_spec.viz.patterns import PatternSet, capture_patterns
from tl_spec.viz.report import render_report, write_report
from tl_spec.viz import noise_sections  # noqa: F401  (registers the noise result sections)
from tl_spec.viz import stability_sections  # noqa: F401  (stability, importance, study)
from tl_spec.viz import variant_sections  # noqa: F401  (deconstruct)
from tl_spec.viz import length_sections  # noqa: F401  (SI versus prompt length)
from tl_spec.viz import audit_sections  # noqa: F401  (claims audit)
from tl_spec.viz import controlled_sections  # noqa: F401  (controlled alignment study)
from tl_spec.viz.sections import Section, register_section

__all__ = [
    "FigureData",
    "HeadGrid",
    "PatternSet",
    "Section",
    "capture_patterns",
    "delta_si_figure",
    "head_grid",
    "perplexity_slope_figure",
    "probe_response_figure",
    "register_section",
    "render_report",
    "reset_notebook_bundle",
    "save",
    "si_by_layer_figure",
    "stability_figure",
    "write_report",
]
