"""Static figures for papers (matplotlib, Agg backend, no global state): each returns the Figure
and the data drawn, so tests check numbers rather than pixels; :func:`save` writes PNG and SVG.

Every figure takes the result objects it draws: one result, a list of them, or a
``{label: result}`` mapping (labels default to the model names), and the plain numbers it always
took (``{label: value(s)}``); :func:`drawable` is the one place that normalisation happens.

- :func:`delta_si_figure`: ΔSI by model with intervals (Fig. 1 of D'Elia, "Alignment Robustness
  Depends More on Training than Architecture", 2026), from ``DeltaResult`` s;
- :func:`perplexity_slope_figure`: slopes on a log scale (its Fig. 2), from ``SensitivityResult`` s
  (the per-seed PPL slopes, in PPL per unit σ) or ``name -> value(s)``;
- :func:`probe_response_figure`: response % with the ±5 % null band and the +20 % line (its Fig. 4),
  from ``ProbeResult`` s (per-seed responses), ``SweepResult`` s (change per region and sigma) or
  ``name -> value(s)``;
- :func:`si_by_layer_figure`: SI per layer of ``SIResult`` s (a ``DeltaResult`` gives its base and
  tuned), or ``name -> per-layer values``;
- :func:`stability_figure`: stability per layer (``StabilityResult`` s or ``name -> values``) with
  a null band.

>>> fig, data = probe_response_figure({"A": 2.0, "B": [25.0, 31.0]})
>>> data.series["B"]["mean"], data.notes["verdict"]
([28.0], {'A': 'stable (healthy)', 'B': 'suppressed (pathological)'})
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_spec.colors import OKABE_ITO, oklch_to_hex
from tl_spec.display import short_name
from tl_spec.errors import TLSpecError
from tl_spec.experiments.delta import DeltaResult
from tl_spec.experiments.probe import ProbeResult, SweepResult, verdict
from tl_spec.experiments.sensitivity import SensitivityComparison, SensitivityResult
from tl_spec.experiments.si import SIResult
from tl_spec.experiments.stability import StabilityResult
from tl_spec.fileio import atomic_write_bytes, atomic_write_text
from tl_spec.records import Result

__all__ = [
    "FigureData",
    "delta_si_figure",
    "drawable",
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
    import matplotlib  # matplotlib is optional and slow to import: only when a figure is drawn
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


# ---------------------------------------------------------------- what a figure is given

def _model_name(d: DeltaResult) -> str:
    ref = str((d.provenance.get("tuned") or {}).get("model", "model"))
    return Path(ref).name or ref


def _result_label(result: Result, index: int) -> str:
    """The default label of a result drawn without one: its model (the tuned one for ΔSI)."""
    if isinstance(result, DeltaResult):
        return _model_name(result)
    if isinstance(result, StabilityResult):
        return result.measure
    if isinstance(result, SensitivityComparison):
        return " vs ".join(short_name(m) for m in result.models)
    names = result.model_names()
    return " / ".join(names) if names else f"{result.kind} {index}"


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct: a repeated label gets `` (2)``, `` (3)``, ..."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def drawable(
    data: Any,
    what: str,
    kinds: tuple[type, ...],
    *,
    names: Sequence[str] | None = None,
    plain: bool = True,
) -> dict[str, Any]:
    """``{label: item}`` from what a figure is given: one result, a sequence of results, or a
    ``{label: result or plain value(s)}`` mapping; the one normalisation every figure uses.

    Results must be instances of ``kinds``; a result drawn without a label is labelled by its
    model (:meth:`~tl_spec.records.Result.model_names`), repeated labels made distinct. Plain
    values (numbers, arrays) are accepted only under a label (in a mapping) and only if
    ``plain``; ``names`` relabels a list in order.

    Args:
        data: a result, a list / tuple of results, or a mapping label -> result or value(s).
        what: the argument's name, for error messages.
        kinds: the result classes this figure draws.
        names: labels for a list of results (same length), instead of the model names.
        plain: whether plain values are accepted in a mapping.

    Returns:
        ``{label: item}`` in the given order.

    >>> drawable({"a": [1.0, 2.0]}, "slopes", (SensitivityResult,))
    {'a': [1.0, 2.0]}
    """
    expected = " or ".join(k.__name__ for k in kinds)
    if isinstance(data, Result):
        pairs: list[tuple[str | None, Any]] = [(None, data)]
    elif isinstance(data, Mapping):
        if names is not None:
            raise TLSpecError(f"names= labels a list of results; {what} is a mapping, whose keys "
                              "already are the labels")
        pairs = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        pairs = [(None, v) for v in data]
    else:
        raise TLSpecError(f"{what} must be a {expected}, a list of them, or a mapping label -> "
                          f"result{' or value(s)' if plain else ''}; got {type(data).__name__}")
    if not pairs:
        raise TLSpecError(f"{what} is empty: nothing to draw")
    if names is not None:
        labels = [str(n) for n in names]
        if len(labels) != len(pairs):
            raise TLSpecError(f"{len(labels)} names for {len(pairs)} results")
        pairs = [(n, v) for n, (_, v) in zip(labels, pairs)]
    for label, item in pairs:
        if isinstance(item, Result) and not isinstance(item, kinds):
            raise TLSpecError(f"{what}: cannot draw a {type(item).__name__} here; give "
                              f"{expected} objects")
        if not isinstance(item, Result) and (label is None or not plain):
            hint = (" (plain values need a label: pass a mapping {label: values})" if plain
                    else "")
            raise TLSpecError(f"{what} must hold {expected} objects{hint}; got "
                              f"{type(item).__name__}")
    labels = _unique([label if label is not None else _result_label(item, i)
                      for i, (label, item) in enumerate(pairs)])
    return {label: item for label, (_, item) in zip(labels, pairs)}


def _numbers(label: str, value: Any, what: str) -> np.ndarray:
    """Finite number(s) as a 1-D float array (what every plain value must be)."""
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise TLSpecError(f"{what}[{label!r}] must be finite number(s), got {value!r}")
    return arr


def _expanded(
    items: Mapping[str, Any], what: str, convert: Callable[[str, Any], dict[str, Any] | None]
) -> dict[str, np.ndarray]:
    """``{label: finite values}``: each result through ``convert`` (which may give several
    labelled series, e.g. a sweep's regions), plain values as they are."""
    out: dict[str, np.ndarray] = {}
    for label, item in items.items():
        got = convert(label, item) if isinstance(item, Result) else None
        for name, value in (got if got is not None else {label: item}).items():
            out[name] = _numbers(name, value, what)
    return out


@_styled
def delta_si_figure(
    deltas: DeltaResult | Sequence[DeltaResult] | Mapping[str, DeltaResult],
    *,
    names: Sequence[str] | None = None,
    title: str = "ΔSI by model",
) -> tuple[Any, FigureData]:
    """ΔSI (%) per model with its interval; filled bars where the interval excludes 0.

    ``deltas``: one ``DeltaResult``, a list of them (labelled by the tuned model, or ``names``),
    or ``{label: DeltaResult}``.

    >>> fig, data = delta_si_figure([d1, d2], names=["LLaMA-3.1", "Mistral"])  # doctest: +SKIP
    >>> fig, data = delta_si_figure({"LLaMA-3.1": d1, "Mistral": d2})          # doctest: +SKIP
    """
    given = drawable(deltas, "deltas", (DeltaResult,), names=names, plain=False)
    labels, items = list(given), list(given.values())
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
    ax.set_xlabel("model")
    ax.set_ylabel("ΔSI (%)")
    level = items[0].interval.level
    ax.set_title(title)
    from matplotlib.patches import Patch

    # One legend entry per kind of bar actually drawn, with that bar's own colour and fill.
    kinds = dict.fromkeys((e < 0, lo > 0 or hi < 0) for e, lo, hi in zip(est, low, high))
    handles = [Patch(facecolor=(NEG if neg else POS) if sig else "white",
                     edgecolor=NEG if neg else POS, linewidth=1.2,
                     label=f"{'decrease' if neg else 'increase'}, {level:.0%} CI "
                           f"{'excludes' if sig else 'includes'} 0")
               for neg, sig in sorted(kinds, key=lambda k: (k[0], not k[1]))]
    ax.legend(handles=handles, fontsize=7.5, loc="best")
    lim = max(abs(v) for v in (*low, *high, 1.0))
    ax.set_ylim(-1.25 * lim if min(low) < 0 else -0.1 * lim,
                1.25 * lim if max(high) > 0 else 0.1 * lim)
    series = {n: {"x": [n], "y": [e], "low": [lo], "high": [hi], "pvalue": [float(d.pvalue)]}
              for n, e, lo, hi, d in zip(labels, est, low, high, items)}
    return fig, FigureData("delta_si", "model", "ΔSI (%)", series,
                           notes={"level": level, "legend": [h.get_label() for h in handles]})


def _slopes(label: str, result: Any) -> dict[str, Any]:
    """Per-seed PPL slopes of a sensitivity result (a comparison gives both of its models)."""
    if isinstance(result, SensitivityComparison):
        sub = drawable([result.a, result.b], "slopes", (SensitivityResult,))
        return {f"{label}: {name}": [f.slope for f in r.fits] for name, r in sub.items()}
    return {label: [f.slope for f in result.fits]}


@_styled
def perplexity_slope_figure(
    slopes: SensitivityResult | Sequence[SensitivityResult] | Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    ylabel: str = "PPL slope (PPL per unit σ)",
    title: str = "Perplexity slope by model",
) -> tuple[Any, FigureData]:
    """Slopes on a log scale: each value (e.g. per seed) as a point, the mean as a bar mark.

    ``slopes``: ``SensitivityResult`` s (one, a list, or ``{label: result}``: the per-seed PPL
    slopes, whose mean is the result's ``slope``; a ``SensitivityComparison`` gives both of its
    models), or plain ``{label: value(s)}``.

    >>> fig, data = perplexity_slope_figure({"LLaMA-2": [16.7, 157.0, 46.4], "Mistral": 4.5e5})
    >>> [round(v) for v in data.series["LLaMA-2"]["mean"]]
    [73]
    """
    given = drawable(slopes, "slopes", (SensitivityResult, SensitivityComparison), names=names)
    vals = _expanded(given, "slopes", _slopes)
    bad = {n: v.tolist() for n, v in vals.items() if (v <= 0).any()}
    if bad:
        raise TLSpecError(f"a log scale needs positive slopes; non-positive: {bad}")
    fig, ax = _figure(max(3.2, 0.9 * len(vals) + 1.6), 3.4)
    from_results = any(isinstance(item, Result) for item in given.values())
    marks = "per-seed slope" if from_results else "value"
    series = {}
    for i, (name, v) in enumerate(vals.items()):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
        ax.scatter(i + jitter, v, s=22, color=color, edgecolor="white", linewidth=0.6, zorder=3)
        mean = float(v.mean())
        ax.hlines(mean, i - 0.28, i + 0.28, color=INK, linewidth=1.6, zorder=4)
        ax.annotate(f"{mean:,.0f}" if mean >= 100 else f"{mean:.3g}", (i + 0.3, mean),
                    va="center", fontsize=8, color=INK)
        series[name] = {"x": [name] * len(v), "y": v.tolist(), "mean": [mean]}
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), list(vals), rotation=30 if len(vals) > 4 else 0,
                  ha="right" if len(vals) > 4 else "center")
    ax.set_xlim(-0.6, len(vals) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("model")
    ax.set_ylabel(f"{ylabel}, log scale")
    ax.set_title(title)
    from matplotlib.lines import Line2D

    # The marks' entry in a neutral colour: each model's marks have that model's colour.
    handles = [Line2D([], [], linestyle="", marker="o", markersize=4.5, color=MUTED,
                      markeredgecolor="white", label=marks),
               Line2D([], [], color=INK, linewidth=1.6, label="mean")]
    legend = [h.get_label() for h in handles]
    ax.legend(handles=handles, fontsize=7.5, loc="best")
    return fig, FigureData("perplexity_slope", "model", ylabel, series,
                           notes={"yscale": "log", "legend": legend})


def _responses(label: str, result: Any) -> dict[str, Any]:
    """Per-seed responses (%) of a probe; a sweep gives one series per region and nonzero sigma."""
    if isinstance(result, ProbeResult):
        return {label: result.response_per_seed}
    return {f"{label}: {region} σ={sigma:g}": result.change_pct[i, j]
            for i, region in enumerate(result.regions)
            for j, sigma in enumerate(result.sigmas) if sigma != 0}


def _result_bands(items: Mapping[str, Any]) -> tuple[float, float]:
    """The verdict bands recorded in the first probe result, else D'Elia (2026)'s ±5 % and +20 %."""
    for item in items.values():
        if isinstance(item, ProbeResult):
            return (float(item.bands.get("stable_within", 5.0)),
                    float(item.bands.get("suppressed_above", 20.0)))
    return 5.0, 20.0


@_styled
def probe_response_figure(
    responses: ProbeResult | SweepResult | Sequence[ProbeResult | SweepResult] | Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    band: float | None = None,
    threshold: float | None = None,
    title: str = "Probe response",
) -> tuple[Any, FigureData]:
    """Response (%) per model as horizontal bars, with the ±``band`` null band and ``threshold``.

    ``responses``: ``ProbeResult`` s (one, a list, or ``{label: result}``: the per-seed responses,
    whose mean is the result's ``response_pct``), ``SweepResult`` s (one bar per region and
    nonzero sigma: the per-seed SI change), or plain ``{label: value(s)}``. ``band`` and
    ``threshold`` default to the bands recorded in the first probe result (else 5 and 20).
    Verdicts are the Table 2 reading of D'Elia (2026) (:func:`tl_spec.experiments.probe.verdict`).

    Args:
        responses: the results or values to draw.
        names: labels for a list of results, instead of the model names.
        band: half-width of the stable band (%).
        threshold: response (%) above which a model reads as suppressed.
        title: the figure title.

    Returns:
        The figure and the data drawn (per series the values and their mean; verdicts in notes).

    >>> fig, data = probe_response_figure(probe_result)  # doctest: +SKIP
    """
    given = drawable(responses, "responses", (ProbeResult, SweepResult), names=names)
    vals = _expanded(given, "responses", _responses)
    default_band, default_threshold = _result_bands(given)
    band = default_band if band is None else band
    threshold = default_threshold if threshold is None else threshold
    if not (0 <= band < threshold):
        raise TLSpecError(f"need 0 <= band < threshold, got band={band}, threshold={threshold}")
    n = len(vals)
    fig, ax = _figure(6.0, max(1.8, 0.42 * n + 1.1))
    ax.axvspan(-band, band, color=BAND, zorder=0, label=f"±{band:g} %: stable (healthy)")
    ax.axvline(threshold, color=POS, linestyle="--", linewidth=1, label=f"> +{threshold:g} %: suppressed (pathological)")
    series, verdicts = {}, {}
    for i, (name, v) in enumerate(vals.items()):
        y = n - 1 - i
        mean = float(v.mean())
        verdicts[name] = verdict(mean, stable=band, suppressed=threshold)
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
    ax.set_ylabel("model")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7.5)
    return fig, FigureData("probe_response", "model", "response (%)", series,
                           bands={"stable": [-band, band], "suppressed": [threshold, math.inf]},
                           notes={"verdict": verdicts})


def _si_lines(label: str, item: Any) -> list[tuple[str, np.ndarray, SIResult | None]]:
    """``(label, per-layer SI, result or None)`` lines of one entry (ΔSI: base and tuned)."""
    if isinstance(item, DeltaResult):
        return [(f"{label}: base", item.base.per_layer, item.base),
                (f"{label}: tuned", item.tuned.per_layer, item.tuned)]
    if isinstance(item, SIResult):
        return [(label, item.per_layer, item)]
    try:
        arr = np.atleast_1d(np.asarray(item, dtype=np.float64))
    except (TypeError, ValueError):
        arr = np.empty((0, 0))
    if arr.ndim != 1 or arr.size == 0:
        raise TLSpecError(f"results[{label!r}] must be per-layer SI values, got {item!r}")
    return [(label, arr, None)]


@_styled
def si_by_layer_figure(
    results: SIResult | DeltaResult | Sequence[SIResult | DeltaResult] | Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    relative_depth: bool | None = None,
    title: str = "SI by layer",
) -> tuple[Any, FigureData]:
    """SI per layer, one line per ``SIResult``; x is relative depth when the depths differ.

    ``results``: ``SIResult`` s (one, a list, or ``{label: result}``; a ``DeltaResult`` draws its
    base and tuned), or plain ``{label: per-layer SI}``. Missing layers (NaN) are gaps.

    Args:
        results: the results or values to draw.
        names: labels for a list of results, instead of the model names.
        relative_depth: x as layer / (L - 1); default: only when the depths differ.
        title: the figure title (the SI method is appended when known).

    Returns:
        The figure and the data drawn (per line x and y, None for a missing layer).

    >>> fig, data = si_by_layer_figure([si_a, si_b], names=["base", "tuned"])  # doctest: +SKIP
    >>> fig, data = si_by_layer_figure({"base": [0.3, 0.5, 0.6]})
    >>> data.series["base"]["y"]
    [0.3, 0.5, 0.6]
    """
    given = drawable(results, "results", (SIResult, DeltaResult), names=names)
    lines = [line for label, item in given.items() for line in _si_lines(label, item)]
    if any(y is None for _, y, _ in lines):
        raise TLSpecError("results must be SIResult objects with per-layer SI (method 'pattern' "
                          "or 'normalized_entropy'; entropy_profile has one number per model)")
    depths = {len(y) for _, y, _ in lines}
    rel = len(depths) > 1 if relative_depth is None else relative_depth
    fig, ax = _figure(6.0, 3.4)
    series = {}
    for i, (name, per_layer, r) in enumerate(lines):
        y = np.asarray(per_layer, dtype=float)
        x = np.arange(len(y)) / max(len(y) - 1, 1) if rel else np.arange(len(y))
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.6, color=OKABE_ITO[i % 8],
                label=name if r is None else f"{name} (SI {r.value:.3f})")
        series[name] = {"x": x.tolist(), "y": [None if not np.isfinite(v) else float(v) for v in y]}
    methods = sorted({r.method for _, _, r in lines if r is not None})
    ax.set_xlabel("relative depth" if rel else "layer")
    ax.set_ylabel("SI")
    ax.set_title(f"{title} ({', '.join(methods)})" if methods else title)
    if not rel:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return fig, FigureData("si_by_layer", ax.get_xlabel(), "SI", series,
                           notes={"relative_depth": rel})


@_styled
def stability_figure(
    stability: StabilityResult | Sequence[StabilityResult] | Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    null_band: tuple[Any, Any] | None = None,
    ylabel: str = "stability",
    title: str = "Stability by layer",
) -> tuple[Any, FigureData]:
    """Stability per layer, one line per name, over the null band (``(low, high)``, scalars or
    per-layer arrays), e.g. the 2.5/97.5 % quantiles of a permutation null.

    ``stability``: ``StabilityResult`` s (one, a list labelled by measure, or ``{label: result}``:
    the per-layer ``stability``), or plain ``{label: per-layer values}``.

    Args:
        stability: the results or values to draw.
        names: labels for a list of results, instead of their measures.
        null_band: ``(low, high)``, scalars or one value per layer each.
        ylabel: the y-axis label.
        title: the figure title.

    Returns:
        The figure and the data drawn (per line x and y; the null band in ``bands``).

    >>> fig, data = stability_figure({"base": [0.9, 0.8]}, null_band=(0.1, 0.3))
    >>> data.bands
    {'null_low': [0.1, 0.1], 'null_high': [0.3, 0.3]}
    """
    given = drawable(stability, "stability", (StabilityResult,), names=names)
    vals = _expanded(given, "stability", lambda label, r: {label: r.stability})
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
