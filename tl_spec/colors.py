"""Colour scales for head grids and figures, interpolated in OKLab so equal steps look equal.

``DIVERGING`` (blue - near white - red, equal lightness at both ends) is for signed scores and
is centred at 0; ``SEQUENTIAL`` (cream - teal - navy, lightness falling linearly) for the rest.
Colours are computed here, in Python, so pages are deterministic and need no script to colour.

>>> scale = ColorScale.for_values([-2.0, 1.0])
>>> scale.diverging, scale.vmin, scale.vmax, scale.color(0.0)
(True, -2.0, 2.0, '#f6f5f1')
>>> ColorScale.for_values([0.2, 0.6]).color(float("nan")) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from tl_spec.errors import TLSpecError

__all__ = [
    "DIVERGING",
    "MISSING",
    "OKABE_ITO",
    "SEQUENTIAL",
    "ColorScale",
    "hex_to_rgb",
    "oklch_to_hex",
    "ramp",
    "text_color",
]

# Anchors in OKLCH (lightness, chroma, hue in degrees).
DIVERGING: tuple[tuple[float, float, float], ...] = (
    (0.45, 0.140, 258.0), (0.70, 0.090, 245.0), (0.97, 0.005, 90.0),
    (0.70, 0.110, 40.0), (0.45, 0.150, 28.0),
)
SEQUENTIAL: tuple[tuple[float, float, float], ...] = (
    (0.97, 0.030, 95.0), (0.82, 0.085, 160.0), (0.64, 0.095, 200.0),
    (0.47, 0.090, 245.0), (0.30, 0.075, 275.0),
)
MISSING = "#e7e9ec"  # NaN cells: neutral grey, also hatched by the stylesheet
# Okabe & Ito (2008): a categorical palette readable with every common colour-vision deficiency.
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                              "#F0E442", "#000000")


def _oklch_to_oklab(c: tuple[float, float, float]) -> np.ndarray:
    lightness, chroma, hue = c
    h = math.radians(hue)
    return np.array([lightness, chroma * math.cos(h), chroma * math.sin(h)])


def _oklab_to_srgb(lab: np.ndarray) -> tuple[float, float, float]:
    L, a, b = lab
    l_ = (L + 0.3963377774 * a + 0.2158037573 * b) ** 3
    m_ = (L - 0.1055613458 * a - 0.0638541728 * b) ** 3
    s_ = (L - 0.0894841775 * a - 1.2914855480 * b) ** 3
    lin = (4.0767416621 * l_ - 3.3077115913 * m_ + 0.2309699292 * s_,
           -1.2684380046 * l_ + 2.6097574011 * m_ - 0.3413193965 * s_,
           -0.0041960863 * l_ - 0.7034186147 * m_ + 1.7076147010 * s_)

    def gamma(x: float) -> float:
        x = min(max(x, 0.0), 1.0)
        return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055

    r, g, bb = (gamma(x) for x in lin)
    return r, g, bb


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(min(max(x, 0.0), 1.0) * 255):02x}" for x in rgb)


def oklch_to_hex(lightness: float, chroma: float, hue: float) -> str:
    """An OKLCH colour as ``#rrggbb`` (clipped to sRGB).

    >>> oklch_to_hex(1.0, 0.0, 0.0)
    '#ffffff'
    """
    return _hex(_oklab_to_srgb(_oklch_to_oklab((lightness, chroma, hue))))


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    """``#rrggbb`` -> (r, g, b) in [0, 1].

    >>> hex_to_rgb("#ff8000")
    (1.0, 0.5019607843137255, 0.0)
    """
    c = color.lstrip("#")
    return int(c[0:2], 16) / 255, int(c[2:4], 16) / 255, int(c[4:6], 16) / 255


@cache
def ramp(anchors: tuple[tuple[float, float, float], ...], n: int = 257) -> tuple[str, ...]:
    """``n`` colours evenly spaced along the anchors, interpolated in OKLab.

    >>> len(ramp(SEQUENTIAL, 5)), ramp(SEQUENTIAL, 5)[0] == oklch_to_hex(*SEQUENTIAL[0])
    (5, True)
    """
    labs = [_oklch_to_oklab(a) for a in anchors]
    out = []
    for t in np.linspace(0.0, 1.0, n):
        pos = t * (len(labs) - 1)
        i = min(int(pos), len(labs) - 2)
        f = pos - i
        out.append(_hex(_oklab_to_srgb(labs[i] * (1 - f) + labs[i + 1] * f)))
    return tuple(out)


def _luminance(color: str) -> float:
    def lin(x: float) -> float:
        return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(x) for x in hex_to_rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color(background: str) -> str:
    """Dark or white text, whichever has the higher WCAG contrast on ``background``.

    >>> text_color("#ffffff"), text_color("#101030")
    ('#1f2328', '#ffffff')
    """
    lum = _luminance(background)
    dark = (lum + 0.05) / (_luminance("#1f2328") + 0.05)
    light = 1.05 / (lum + 0.05)
    return "#1f2328" if dark >= light else "#ffffff"


@dataclass(frozen=True)
class ColorScale:
    """A value -> colour map: diverging (centred at 0, symmetric limits) or sequential."""

    vmin: float
    vmax: float
    diverging: bool

    @classmethod
    def for_values(
        cls,
        values: object,
        *,
        diverging: bool | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> ColorScale:
        """Limits from the finite values; diverging when asked or when they have both signs."""
        arr = np.asarray(values, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        if diverging is None:
            diverging = lo < 0.0 < hi
        if diverging:
            m = max(abs(lo), abs(hi)) if vmin is None and vmax is None else max(
                abs(vmin if vmin is not None else 0.0), abs(vmax if vmax is not None else 0.0))
            m = m if m > 0 else 1.0
            return cls(-m, m, True)
        lo = lo if vmin is None else float(vmin)
        hi = hi if vmax is None else float(vmax)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            raise TLSpecError(f"colour limits must be finite with vmin <= vmax, got {lo}, {hi}")
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        return cls(lo, hi, False)

    @property
    def colors(self) -> tuple[str, ...]:
        return ramp(DIVERGING if self.diverging else SEQUENTIAL)

    def position(self, value: float) -> float:
        """Where ``value`` falls on the scale, 0..1 (clipped; the middle when the scale has no
        width in floating point, e.g. limits near 1e300)."""
        span = self.vmax - self.vmin
        if not span > 0:
            return 0.5
        return min(max((value - self.vmin) / span, 0.0), 1.0)

    def color(self, value: float) -> str | None:
        """``#rrggbb`` for ``value``; ``None`` for NaN (shown as missing)."""
        if value is None or not math.isfinite(value):
            return None
        cols = self.colors
        return cols[round(self.position(value) * (len(cols) - 1))]

    def css_gradient(self, stops: int = 11) -> str:
        """A CSS ``linear-gradient`` drawing the scale left to right (for the legend)."""
        cols = self.colors
        picks = [cols[round(i * (len(cols) - 1) / (stops - 1))] for i in range(stops)]
        return "linear-gradient(to right, " + ", ".join(picks) + ")"

    def ticks(self, n: int = 5) -> list[float]:
        """``n`` evenly spaced legend values (0 in the middle for a diverging scale)."""
        return [float(x) for x in np.linspace(self.vmin, self.vmax, n)]
