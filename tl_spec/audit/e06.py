"""E06 family (noise sensitivity, Table 5, Appendix B): PPL-vs-sigma slopes recomputed from curves.

Every stored ``ppl_curve`` (``[{sigma, mean, std}]``) is refitted with ``scipy.stats.linregress``
and compared with the stored ``ppl_slope`` (slope and r^2); curves that a line fits badly
(r^2 < 0.5) are flagged, and the stored ratios are recomputed from the refitted slopes.

>>> doc = {"seed": 1, "models": {"m": {"name": "toy", "ppl_curve": [
...     {"sigma": 0.0, "mean": 1.0}, {"sigma": 0.1, "mean": 2.0}, {"sigma": 0.2, "mean": 3.0}],
...     "ppl_slope": {"slope": 10.0, "r_squared": 1.0}}}}
>>> [(c.key, round(c.fit.slope, 6), c.stored_slope) for c in curve_fits(doc)]
[('m', 10.0, 10.0)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_spec.audit.common import Check, Flag, PaperFile, SlopeFit, check, dicts, num, ppl_slope
from tl_spec.errors import TLSpecError

__all__ = ["POOR_FIT_R2", "CurveFit", "audit_e06", "curve_fits", "find_fit"]

POOR_FIT_R2 = 0.5  # a straight line explains less than half the variance of the curve
SLOPE_RTOL = 1e-6  # stored vs refitted slope, relative


@dataclass
class CurveFit:
    """One stored PPL curve: the refitted line and what the file stored."""

    key: str  # the model key in the file (``llama2_7b``) or the intervention level (E22)
    model: str | None
    seed: int | None
    fit: SlopeFit
    stored_slope: float | None
    stored_r2: float | None


def curve_fits(doc: Any) -> list[CurveFit]:
    """Refit every ``ppl_curve`` of a parsed file (entries that cannot be fitted are skipped).

    >>> curve_fits({"models": {}})
    []
    """
    seed = doc.get("seed") if isinstance(doc, dict) and isinstance(doc.get("seed"), int) else None
    out = []
    for path, node in dicts(doc):
        curve = node.get("ppl_curve")
        if not isinstance(curve, list):
            continue
        pts = [(num(p.get("sigma")), num(p.get("mean"))) for p in curve if isinstance(p, dict)]
        pts = [(s, m) for s, m in pts if s is not None and m is not None]
        try:
            fit = ppl_slope([s for s, _ in pts], [m for _, m in pts])
        except TLSpecError:
            continue
        stored = node.get("ppl_slope")
        stored_slope = num(stored.get("slope")) if isinstance(stored, dict) else num(stored)
        stored_r2 = num(stored.get("r_squared")) if isinstance(stored, dict) else None
        key = path.rsplit("/", 1)[-1] or "curve"
        name = node.get("name") if isinstance(node.get("name"), str) else None
        out.append(CurveFit(key, name, seed, fit, stored_slope, stored_r2))
    return out


def find_fit(files: list[PaperFile], prefix: str, key: str) -> tuple[CurveFit, str] | None:
    """The refitted curve ``key`` of the first file whose name starts with ``prefix``.

    >>> find_fit([], "E06b", "llama2_7b") is None
    True
    """
    for f in files:
        if f.name.startswith(prefix) and f.problem is None:
            for c in curve_fits(f.doc):
                if c.key == key:
                    return c, f.name
    return None


def audit_e06(files: list[PaperFile]) -> tuple[list[Check], list[Flag]]:
    """Checks (stored slope vs refit, stored ratio vs refit ratio) and flags (poor fits) of the
    E06 / E22 files among ``files``.

    >>> audit_e06([])
    ([], [])
    """
    checks: list[Check] = []
    flags: list[Flag] = []
    for f in files:
        if f.problem is not None or f.family not in ("e06", "e21"):
            continue
        fits = curve_fits(f.doc)
        for c in fits:
            if c.stored_slope is not None:
                checks.append(check(
                    f.name, f"{c.key}: PPL slope (stored)", c.stored_slope,
                    f"{c.stored_slope:,.2f}", c.fit.slope,
                    f"linregress on the stored curve: {c.fit.slope:,.2f} (r^2 = {c.fit.r_squared:.3f})",
                    tol=SLOPE_RTOL * max(1.0, abs(c.stored_slope)),
                    cause="stored slope is not the least-squares slope of the stored curve",
                    files=[f.name]))
            if c.fit.r_squared < POOR_FIT_R2:
                flags.append(Flag("poor_fit", f.name, (
                    f"{c.key} (seed {c.seed}): PPL vs sigma is far from a line, r^2 = "
                    f"{c.fit.r_squared:.3f}; its slope ({c.fit.slope:,.2f}) is a poor summary")))
        by_key = {c.key: c for c in fits}
        for _, node in dicts(f.doc):
            for name, (num_key, den_key) in (("ppl_ratio", ("mistral_7b", "llama2_7b")),):
                stored = num(node.get(name))
                if stored is None:
                    continue
                if "llama3_8b" in by_key:
                    num_key = "llama3_8b"
                a, b = by_key.get(num_key), by_key.get(den_key)
                if a and b:
                    ratio = a.fit.slope / b.fit.slope
                    checks.append(check(
                        f.name, f"{num_key}/{den_key} PPL-slope ratio (stored)", stored,
                        f"{stored:,.1f}x", ratio, f"{ratio:,.1f}x from the refitted slopes "
                        f"(one seed: {a.seed})", tol=1e-6 * stored,
                        files=[f.name]))
    return checks, flags
