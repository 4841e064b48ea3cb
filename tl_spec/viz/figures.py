"""Static figures for papers (matplotlib, Agg backend, no global state): each returns the Figure
and the data drawn, so tests check numbers rather than pixels; :func:`save` writes PNG and SVG.

- :func:`delta_si_figure`: ΔSI by model with intervals (paper Fig. 1), from ``DeltaResult`` s;
- :func:`perplexity_slope_figure`: slopes on a log scale (Fig. 2), ``name -> value(s)``;
- :func:`probe_response_figure`: response % with the ±5 % null band and the +20 % line (Fig. 4);
- :func:`si_by_layer_figure`: SI per layer of ``SIResult`` s;
- :func:`stability_figure`: stability per layer with a null band.

>>> fig, data = probe_response_figure({"A": 2.0, "B": [25.0, 31.0]})
>>> data.series["B"]["mean"], data.notes["verdict"]
([28.0], {'A': 'stable (healthy)', 'B': 'suppressed (pathological)'})
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.colors import OKABE_ITO, oklch_to_hex

__all__ = [
    "FigureData",
    "delta_si_figure",
    "perplexity_slope_figure",
    "probe_response_figure",
    "save",
    "si_by_layer_figure",
    "stability_figure",
]

NEG, POS = oklch_to_hex(0.45, 0.14, 258.0), oklch_to_hex(0.45, 0.15, 28.0)
INK, MUTED, BAND = "#1f2328", "#59636e", "#e9ecef"
_STYLE = {
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 9.0,
    "axes.titlesize": 10.0, "axes.titleweight": "bold", "axes.titlelocation": "left",
    "axes.labelsize": 9.0, "axes.labelcolor": INK, "axes.edgecolor": "#8c959f",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "axes.axisbelow": True, "grid.color": "#e4e8ec", "grid.linewidth": 0.6,
    "xtick.color": MUTED, "ytick.color": MUTED, "legend.frameon": False,
    "svg.hashsalt": "tl_spec", "svg.fonttype": "path",
}


@dataclass
class FigureData:
    """What a figure draws: per series ``{"x": [...], "y": [...], ...}``, bands, axis labels."""

    kind: str
    xlabel: str
    ylabel: str
    series: dict[str, dict[str, list[Any]]]
    bands: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    return fig, ax


def _styled(fn: Any) -> Any:
    """Run a figure builder inside the house style (rcParams restored afterwards)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _values(mapping: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise TLSpecError(f"{what} must be a non-empty mapping name -> value(s)")
    out = {}
    for name, v in mapping.items():
        arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
        if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
            raise TLSpecError(f"{what}[{name!r}] must be finite number(s), got {v!r}")
        out[str(name)] = arr
    return out


def _model_name(d: Any) -> str:
    ref = str((d.provenance.get("tuned") or {}).get("model", "model"))
    return Path(ref).name or ref


@_styled
def delta_si_figure(
    deltas: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    title: str = "ΔSI by model",
) -> tuple[Any, FigureData]:
    """ΔSI (%) per model with its interval; filled bars where the interval excludes 0.

    >>> fig, data = delta_si_figure([d1, d2], names=["LLaMA-3.1", "Mistral"])  # doctest: +SKIP
    """
    from tl_spec.experiments.delta import DeltaResult

    items = list(deltas)
    if not items or not all(isinstance(d, DeltaResult) for d in items):
        raise TLSpecError("deltas must be a non-empty list of DeltaResult (tl_spec.delta_si)")
    labels = list(names) if names is not None else [_model_name(d) for d in items]
    if len(labels) != len(items):
        raise TLSpecError(f"{len(labels)} names for {len(items)} results")
    est = [float(d.delta_pct) for d in items]
    low = [float(d.interval.low) for d in items]
    high = [float(d.interval.high) for d in items]
    fig, ax = _figure(max(3.2, 0.9 * len(items) + 1.6), 3.4)
    x = np.arange(len(items))
    for i, (e, lo, hi) in enumerate(zip(est, low, high)):
        color = NEG if e < 0 else POS
        sig = lo > 0 or hi < 0
        ax.bar(i, e, width=0.6, color=color if sig else "white", edgecolor=color, linewidth=1.2,
               alpha=0.9 if sig else 1.0)
        ax.errorbar(i, e, yerr=[[e - lo], [hi - e]], color=INK, capsize=3, linewidth=1)
        ax.annotate(f"{e:+.1f}%", (i, hi if e >= 0 else lo), xytext=(0, 4 if e >= 0 else -4),
                    textcoords="offset points", ha="center", va="bottom" if e >= 0 else "top",
                    fontsize=8, color=INK)
    ax.axhline(0, color=INK, linewidth=0.8)
    crowded = len(items) > 4
    ax.set_xticks(x, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("ΔSI (%)")
    level = items[0].interval.level
    ax.set_title(title)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor=MUTED, edgecolor=MUTED, label=f"{level:.0%} CI excludes 0"),
                       Patch(facecolor="white", edgecolor=MUTED, label="CI includes 0")],
              fontsize=7.5, loc="best")
    lim = max(abs(v) for v in (*low, *high, 1.0))
    ax.set_ylim(-1.25 * lim if min(low) < 0 else -0.1 * lim,
                1.25 * lim if max(high) > 0 else 0.1 * lim)
    series = {n: {"x": [n], "y": [e], "low": [lo], "high": [hi], "pvalue": [float(d.pvalue)]}
              for n, e, lo, hi, d in zip(labels, est, low, high, items)}
    return fig, FigureData("delta_si", "model", "ΔSI (%)", series, notes={"level": level})


@_styled
def perplexity_slope_figure(
    slopes: Mapping[str, float | Sequence[float]],
    *,
    ylabel: str = "perplexity slope",
    title: str = "Perplexity slope by model",
) -> tuple[Any, FigureData]:
    """Slopes on a log scale: each value (e.g. per seed) as a point, the mean as a bar mark.

    >>> fig, data = perplexity_slope_figure({"LLaMA-2": [16.7, 157.0, 46.4], "Mistral": 4.5e5})
    >>> [round(v) for v in data.series["LLaMA-2"]["mean"]]
    [73]
    """
    vals = _values(slopes, "slopes")
    bad = {n: v.tolist() for n, v in vals.items() if (v <= 0).any()}
    if bad:
        raise TLSpecError(f"a log scale needs positive slopes; non-positive: {bad}")
    fig, ax = _figure(max(3.2, 0.9 * len(vals) + 1.6), 3.4)
    series = {}
    for i, (name, v) in enumerate(vals.items()):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
        ax.scatter(i + jitter, v, s=22, color=color, edgecolor="white", linewidth=0.6, zorder=3)
        mean = float(v.mean())
        ax.hlines(mean, i - 0.28, i + 0.28, color=INK, linewidth=1.6, zorder=4,
                  label="mean" if i == 0 else None)
        ax.annotate(f"{mean:,.0f}" if mean >= 100 else f"{mean:.3g}", (i + 0.3, mean),
                    va="center", fontsize=8, color=INK)
        series[name] = {"x": [name] * len(v), "y": v.tolist(), "mean": [mean]}
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), list(vals), rotation=30 if len(vals) > 4 else 0,
                  ha="right" if len(vals) > 4 else "center")
    ax.set_xlim(-0.6, len(vals) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel(f"{ylabel} (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=7.5, loc="best")
    return fig, FigureData("perplexity_slope", "model", ylabel, series, notes={"yscale": "log"})


def _verdict(mean: float, band: float, threshold: float) -> str:
    from tl_spec.experiments.probe import verdict

    return verdict(mean, stable=band, suppressed=threshold)


@_styled
def probe_response_figure(
    responses: Mapping[str, float | Sequence[float]],
    *,
    band: float = 5.0,
    threshold: float = 20.0,
    title: str = "Probe response",
) -> tuple[Any, FigureData]:
    """Response (%) per model as horizontal bars, with the ±``band`` null band and ``threshold``.

    Verdicts are the paper's Table 2 reading (:func:`tl_spec.experiments.probe.verdict`).
    """
    vals = _values(responses, "responses")
    if not (0 <= band < threshold):
        raise TLSpecError(f"need 0 <= band < threshold, got band={band}, threshold={threshold}")
    n = len(vals)
    fig, ax = _figure(6.0, max(1.8, 0.42 * n + 1.1))
    ax.axvspan(-band, band, color=BAND, zorder=0, label=f"±{band:g} %: stable (healthy)")
    ax.axvline(threshold, color=POS, linestyle="--", linewidth=1, label=f"> +{threshold:g} %: suppressed (pathological)")
    series, verdict = {}, {}
    for i, (name, v) in enumerate(vals.items()):
        y = n - 1 - i
        mean = float(v.mean())
        verdict[name] = _verdict(mean, band, threshold)
        color = POS if mean >= threshold else NEG if mean <= -band else MUTED
        ax.barh(y, mean, height=0.55, color=color, alpha=0.85, zorder=2)
        if len(v) > 1:
            ax.scatter(v, np.full(len(v), y), s=12, marker="|", color=INK, zorder=3,
                       label="values" if "values" not in ax.get_legend_handles_labels()[1] else None)
        end = max(mean, float(v.max())) if mean >= 0 else min(mean, float(v.min()))
        ax.annotate(f"{mean:+.1f}%", (end, y), xytext=(5 if mean >= 0 else -5, 0),
                    textcoords="offset points", va="center", ha="left" if mean >= 0 else "right",
                    fontsize=8, color=INK)
        series[name] = {"x": [name] * len(v), "y": v.tolist(), "mean": [mean]}
    ax.axvline(0, color=INK, linewidth=0.8)
    ax.set_yticks(range(n), list(vals)[::-1])
    ax.grid(axis="y", visible=False)
    lo = min(min(float(v.min()) for v in vals.values()), -band) - 5
    hi = max(max(float(v.max()) for v in vals.values()), threshold) + 8
    ax.set_xlim(lo, hi)
    ax.set_xlabel("response (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7.5)
    return fig, FigureData("probe_response", "model", "response (%)", series,
                           bands={"stable": [-band, band], "suppressed": [threshold, math.inf]},
                           notes={"verdict": verdict})


@_styled
def si_by_layer_figure(
    results: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    relative_depth: bool | None = None,
    title: str = "SI by layer",
) -> tuple[Any, FigureData]:
    """SI per layer, one line per ``SIResult``; x is relative depth when the depths differ.

    >>> fig, data = si_by_layer_figure([si_a, si_b], names=["base", "tuned"])  # doctest: +SKIP
    """
    from tl_spec.experiments.si import SIResult

    items = list(results)
    if not items or not all(isinstance(r, SIResult) and r.per_layer is not None for r in items):
        raise TLSpecError("results must be SIResult objects with per-layer SI (method 'pattern' "
                          "or 'normalized_entropy'; entropy_profile has one number per model)")
    labels = list(names) if names is not None else [
        Path(str(r.provenance.get("model", f"model {i}"))).name for i, r in enumerate(items)]
    if len(labels) != len(items):
        raise TLSpecError(f"{len(labels)} names for {len(items)} results")
    depths = {r.n_layers for r in items}
    rel = len(depths) > 1 if relative_depth is None else relative_depth
    fig, ax = _figure(6.0, 3.4)
    series = {}
    for i, (name, r) in enumerate(zip(labels, items)):
        y = r.per_layer.astype(float)
        x = np.arange(len(y)) / max(len(y) - 1, 1) if rel else np.arange(len(y))
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.6, color=OKABE_ITO[i % 8],
                label=f"{name} (SI {r.value:.3f})")
        series[name] = {"x": x.tolist(), "y": [None if not np.isfinite(v) else float(v) for v in y]}
    ax.set_xlabel("relative depth" if rel else "layer")
    ax.set_ylabel("SI")
    ax.set_title(f"{title} ({items[0].method})")
    if not rel:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return fig, FigureData("si_by_layer", ax.get_xlabel(), "SI", series,
                           notes={"relative_depth": rel})


@_styled
def stability_figure(
    stability: Mapping[str, Float[np.ndarray, "n_layers"] | Sequence[float]],
    *,
    null_band: tuple[Any, Any] | None = None,
    ylabel: str = "stability",
    title: str = "Stability by layer",
) -> tuple[Any, FigureData]:
    """Stability per layer, one line per name, over the null band (``(low, high)``, scalars or
    per-layer arrays), e.g. the 2.5/97.5 % quantiles of a permutation null.

    >>> fig, data = stability_figure({"base": [0.9, 0.8]}, null_band=(0.1, 0.3))
    >>> data.bands
    {'null_low': [0.1, 0.1], 'null_high': [0.3, 0.3]}
    """
    vals = _values(stability, "stability")
    n = max(len(v) for v in vals.values())
    fig, ax = _figure(6.0, 3.4)
    bands: dict[str, list[float]] = {}
    if null_band is not None:
        try:
            lo = np.broadcast_to(np.asarray(null_band[0], dtype=float), (n,))
            hi = np.broadcast_to(np.asarray(null_band[1], dtype=float), (n,))
        except (ValueError, TypeError, IndexError):
            raise TLSpecError(f"null_band must be (low, high), scalars or {n} values each") from None
        if (hi < lo).any() or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise TLSpecError("null_band needs finite values with low <= high")
        ax.fill_between(np.arange(n), lo, hi, color=BAND, linewidth=0, label="null band", zorder=0)
        bands = {"null_low": lo.tolist(), "null_high": hi.tolist()}
    series = {}
    for i, (name, v) in enumerate(vals.items()):
        ax.plot(np.arange(len(v)), v, marker="o", markersize=3.5, linewidth=1.6,
                color=OKABE_ITO[i % 8], label=name)
        series[name] = {"x": list(range(len(v))), "y": v.tolist()}
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return fig, FigureData("stability", "layer", ylabel, series, bands=bands)


def save(
    fig: Any, path_without_ext: str | os.PathLike[str], *, dpi: int = 200
) -> tuple[Path, Path]:
    """Write ``fig`` as ``PATH.png`` (``dpi``) and ``PATH.svg`` (deterministic), atomically.

    >>> fig, _ = stability_figure({"a": [1.0, 2.0]})
    >>> import tempfile; png, svg = save(fig, tempfile.mkdtemp() + "/fig")
    >>> png.suffix, svg.suffix, png.stat().st_size > 0
    ('.png', '.svg', True)
    """
    import matplotlib

    from tl_spec.fileio import atomic_write_bytes, atomic_write_text

    base = Path(path_without_ext)
    if base.suffix.lower() in (".png", ".svg"):
        base = base.with_suffix("")
    if not hasattr(fig, "savefig"):
        raise TLSpecError(f"save() takes a matplotlib Figure, got {type(fig).__name__}")
    base.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(_STYLE):
        png, svg = io.BytesIO(), io.StringIO()
        fig.savefig(png, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None}, facecolor="white")
    return (atomic_write_bytes(base.with_suffix(".png"), png.getvalue()),
            atomic_write_text(base.with_suffix(".svg"), svg.getvalue()))
