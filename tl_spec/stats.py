"""Statistics for specialization measurements: a thin layer over ``scipy.stats``.

The sampling unit is the prompt: a deterministic forward pass repeated under
three seeds is one observation, not three. Intervals therefore resample prompt *indices*, so
paired quantities (base and tuned model on the same prompt) stay paired; seeds are aggregated
only where something random happens (noise), and :func:`check_seeds` says when they did not act.

>>> import numpy as np
>>> x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
>>> ci = paired_bootstrap(lambda idx: x[idx].mean(-1), len(x), n_resamples=1000)
>>> ci.contains(3.5)
True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import scipy.stats
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.options.si import StatsOptions

__all__ = [
    "Interval",
    "LinearFit",
    "PermutationResult",
    "check_seeds",
    "holm",
    "interval_records",
    "linear_fit",
    "mean_of_ratios",
    "median_of_ratios",
    "paired_bootstrap",
    "paired_permutation_test",
    "ratio_of_means",
    "seed_aggregates",
    "seeds_identical",
]

Alternative = Literal["two-sided", "less", "greater"]
_ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class Interval:
    """A confidence interval; ``fallback_reason`` says why BCa was not used (None if it was).

    >>> Interval(0.1, 0.3, 0.95, "BCa", None, 10_000).contains(0.2)
    True
    """

    low: float
    high: float
    level: float
    method: str
    fallback_reason: str | None
    n_resamples: int

    def contains(self, x: float) -> bool:
        """Whether ``low <= x <= high``.

        >>> Interval(0.0, 0.0, 0.95, "percentile", "degenerate", 100).contains(0.0)
        True
        """
        return bool(self.low <= x <= self.high)

    @property
    def width(self) -> float:
        """``high - low``.

        >>> Interval(1.0, 3.5, 0.95, "BCa", None, 1000).width
        2.5
        """
        return float(self.high - self.low)


def interval_records(records: list[dict]) -> list[dict]:
    """Result rows read back from JSON: each row's ``"interval"`` dict becomes an :class:`Interval`
    (the decoder of every result whose rows carry one).

    >>> interval_records([{"x": 1, "interval": {"low": 0.0, "high": 1.0, "level": 0.95,
    ...     "method": "BCa", "fallback_reason": None, "n_resamples": 10}}])[0]["interval"].width
    1.0
    """
    return [{**r, "interval": Interval(**r["interval"])} for r in records]


@dataclass(frozen=True)
class PermutationResult:
    """Observed statistic, p-value, resamples used, and whether the test enumerated all 2**n swaps.

    >>> PermutationResult(0.0, 1.0, 1024, True).pvalue
    1.0
    """

    statistic: float
    pvalue: float
    n_resamples: int
    exact: bool


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line ``y = slope * x + intercept`` with its fit quality.

    >>> LinearFit(2.0, 1.0, 1.0, 0.0, 0.0).slope
    2.0
    """

    slope: float
    intercept: float
    r2: float
    pvalue: float
    stderr: float


def _check_resampling(n_resamples: int, seed: int, batch: int | None) -> None:
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise TLSpecError(f"batch={batch!r} must be a positive integer or None (all at once).")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise TLSpecError(
            f"n_resamples must be an integer, got {n_resamples!r} ({type(n_resamples).__name__}); "
            "pass e.g. n_resamples=10_000."
        )
    if n_resamples < 100:
        raise TLSpecError(
            f"n_resamples={n_resamples} is too few: percentiles of fewer than 100 resamples are "
            "noise; use at least 100 (10_000 is the default)."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TLSpecError(
            f"seed must be a non-negative integer, got {seed!r}; a fixed integer makes the "
            "resampling reproducible, e.g. seed=0."
        )


def _check_units(n_units: int) -> None:
    if isinstance(n_units, bool) or not isinstance(n_units, (int, np.integer)) or n_units < 2:
        raise TLSpecError(
            f"n_units={n_units!r}: a bootstrap over prompts needs at least 2 prompts "
            "(the prompt is the sampling unit); measure on more prompts."
        )


def _check_vector(values, name: str, *, min_len: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < min_len:
        raise TLSpecError(
            f"{name} must be a 1-D sequence of at least {min_len} values, got shape {arr.shape}; "
            "pass one value per seed (or per point)."
        )
    if not np.all(np.isfinite(arr)):
        raise TLSpecError(f"{name} contains NaN or inf ({arr.tolist()}); remove or fix those runs.")
    return arr


def _check_seed_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = _check_vector(a, "a", min_len=1)
    b = _check_vector(b, "b", min_len=1)
    if a.shape != b.shape:
        raise TLSpecError(
            f"a and b have different lengths ({a.shape[0]} vs {b.shape[0]}): seed aggregates pair "
            "the i-th seed of one with the i-th seed of the other; pass the same seeds for both."
        )
    if a.shape[0] < 2:
        raise TLSpecError(
            f"got {a.shape[0]} seed: aggregating over seeds needs at least 2 seeds per side; "
            "run more seeds or report the single value as it is."
        )
    if np.any(a == 0):
        raise TLSpecError(
            f"a contains zeros ({a.tolist()}): the ratios are b / a, so a is the denominator; "
            "swap the arguments or drop runs with a zero measurement."
        )
    return a, b


def paired_bootstrap(
    statistic: Callable[[Int[np.ndarray, "... m"]], Float[np.ndarray, "..."]],
    n_units: int,
    *,
    confidence: float = StatsOptions.confidence,
    n_resamples: int = StatsOptions.n_resamples,
    seed: int = StatsOptions.seed,
    batch: int | None = None,
) -> Interval:
    """BCa bootstrap interval over units (prompts); percentile where BCa is undefined.

    ``statistic(idx)`` gets resampled unit indices, an int array ``[..., m]`` (``m`` is ``n_units``
    for resamples and ``n_units - 1`` for BCa's jackknife), and returns one value per row,
    shape ``[...]``. Index every per-prompt array with the same ``idx`` so paired data stay
    paired. ``batch`` (resamples per call) bounds memory and does not change the result.

    >>> b = np.array([1.0, 2.0, 3.0, 4.0]); t = b + 0.5
    >>> paired_bootstrap(lambda idx: (t[idx] - b[idx]).mean(-1), 4).low
    0.5
    """
    _check_units(n_units)
    if not (isinstance(confidence, (float, int)) and 0.0 < confidence < 1.0):
        raise TLSpecError(
            f"confidence={confidence!r} must lie strictly between 0 and 1; "
            "e.g. 0.95 for a 95% interval."
        )
    _check_resampling(n_resamples, seed, batch)

    probe = np.asarray(statistic(np.tile(np.arange(n_units), (2, 1))))
    if probe.shape != (2,):
        raise TLSpecError(
            f"statistic returned shape {probe.shape} for indices of shape (2, {n_units}); it "
            "must reduce only the last axis (x[idx].mean(-1), not x[idx].mean()): shape (2,)."
        )
    theta = float(probe[0])

    def stat(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(sample, axis, -1).astype(np.intp)
        return np.asarray(statistic(idx), dtype=np.float64)

    data = (np.arange(n_units),)
    common = dict(vectorized=True, confidence_level=confidence, batch=batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = scipy.stats.bootstrap(
            data, stat, method="BCa", n_resamples=n_resamples, random_state=seed, **common
        )
    ci = res.confidence_interval
    complaints = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if np.isfinite(ci.low) and np.isfinite(ci.high) and not complaints:
        return Interval(float(ci.low), float(ci.high), confidence, "BCa", None, n_resamples)

    reason = "BCa undefined (" + ("; ".join(complaints) or "NaN bounds") + "); percentile interval"
    dist = res.bootstrap_distribution
    if np.any(np.isnan(dist)):
        raise TLSpecError(
            f"statistic returned NaN on {int(np.isnan(dist).sum())} of {dist.size} resamples; "
            "no interval exists. Make it defined on every resample (guard constant groups)."
        )
    if np.all(dist == dist.flat[0]):
        reason += f"; all {dist.size} resamples gave the same value, so the interval is one point"
        return Interval(theta, theta, confidence, "percentile", reason, n_resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pct = scipy.stats.bootstrap(
            data, stat, method="percentile", n_resamples=0, bootstrap_result=res, **common
        ).confidence_interval
    return Interval(float(pct.low), float(pct.high), confidence, "percentile", reason, n_resamples)


def paired_permutation_test(
    statistic: Callable[..., Float[np.ndarray, "..."]],
    base: Float[np.ndarray, "n_units *trailing"],
    tuned: Float[np.ndarray, "n_units *trailing"],
    *,
    n_resamples: int = StatsOptions.n_resamples,
    seed: int = StatsOptions.seed,
    alternative: Alternative = "two-sided",
    batch: int | None = None,
) -> PermutationResult:
    """Paired permutation test: under the null, base and tuned are exchangeable within each unit.

    ``statistic(b, t)`` gets ``b`` and ``t`` of shape ``[..., n_units, *trailing]`` (a leading
    resample axis, possibly absent, then the units with base and tuned swapped in some of them)
    and returns shape ``[...]``. Exact (all 2**n_units swaps) when ``2**n_units <= n_resamples``.

    >>> b = np.arange(8.0); t = b + 1.0
    >>> r = paired_permutation_test(lambda b, t: (t - b).mean(-1), b, t)
    >>> r.exact, r.pvalue
    (True, 0.0078125)
    """
    base = np.asarray(base, dtype=np.float64)
    tuned = np.asarray(tuned, dtype=np.float64)
    if base.shape != tuned.shape or base.ndim < 1:
        raise TLSpecError(
            f"base {base.shape} and tuned {tuned.shape} must have the same shape [n_units, ...]: "
            "row i of both must be the same unit (prompt); align them before testing."
        )
    _check_units(base.shape[0])
    _check_resampling(n_resamples, seed, batch)
    if alternative not in _ALTERNATIVES:
        raise TLSpecError(f"alternative={alternative!r} must be one of {_ALTERNATIVES}.")

    n = base.shape[0]
    pool = np.concatenate([base, tuned])

    def stat(ib: np.ndarray, it: np.ndarray, axis: int = -1) -> np.ndarray:
        ib = np.moveaxis(ib, axis, -1).astype(np.intp)
        it = np.moveaxis(it, axis, -1).astype(np.intp)
        return np.asarray(statistic(pool[ib], pool[it]), dtype=np.float64)

    res = scipy.stats.permutation_test(
        (np.arange(n), np.arange(n) + n),
        stat,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        batch=batch,
        random_state=seed,
    )
    exact = 2**n <= n_resamples
    used = int(np.asarray(res.null_distribution).size)
    return PermutationResult(float(res.statistic), float(res.pvalue), used, exact)


def holm(pvalues: Float[np.ndarray, "..."]) -> Float[np.ndarray, "..."]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), same shape as input.

    ``scipy.stats.false_discovery_control`` offers only BH/BY (FDR), so this is the formula.

    >>> holm([0.01, 0.04, 0.03, 0.005])
    array([0.03, 0.06, 0.06, 0.02])
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0 or np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise TLSpecError(
            f"pvalues must be a non-empty array of numbers in [0, 1] without NaN, got "
            f"{p.tolist()}; drop undefined tests before adjusting."
        )
    flat = p.ravel()
    m = flat.size
    order = np.argsort(flat, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * flat[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out.reshape(p.shape)


def ratio_of_means(a: Float[np.ndarray, "n_seeds"], b: Float[np.ndarray, "n_seeds"]) -> float:
    """``mean(b) / mean(a)`` over paired seeds (second over first; the paper's reported aggregate).

    >>> ratio_of_means([1.0, 3.0], [10.0, 50.0])
    15.0
    """
    a, b = _check_seed_pair(a, b)
    if a.mean() == 0:
        raise TLSpecError(f"mean(a) is 0 ({a.tolist()}): the ratio of means divides by it.")
    return float(b.mean() / a.mean())


def median_of_ratios(a: Float[np.ndarray, "n_seeds"], b: Float[np.ndarray, "n_seeds"]) -> float:
    """Median over seeds of ``b_i / a_i``.

    >>> median_of_ratios([1.0, 2.0, 4.0], [1.0, 6.0, 40.0])
    3.0
    """
    a, b = _check_seed_pair(a, b)
    return float(np.median(b / a))


def mean_of_ratios(a: Float[np.ndarray, "n_seeds"], b: Float[np.ndarray, "n_seeds"]) -> float:
    """Mean over seeds of ``b_i / a_i`` (sensitive to one outlying seed).

    >>> mean_of_ratios([1.0, 2.0], [2.0, 8.0])
    3.0
    """
    a, b = _check_seed_pair(a, b)
    return float(np.mean(b / a))


def seed_aggregates(a: Float[np.ndarray, "n_seeds"], b: Float[np.ndarray, "n_seeds"]) -> dict:
    """All three aggregates of ``b / a`` and the per-seed ratios (a list, JSON-ready).

    >>> seed_aggregates([1.0, 2.0], [2.0, 8.0])["per_seed_ratios"]
    [2.0, 4.0]
    """
    a, b = _check_seed_pair(a, b)
    return {
        "ratio_of_means": ratio_of_means(a, b),
        "median_of_ratios": median_of_ratios(a, b),
        "mean_of_ratios": mean_of_ratios(a, b),
        "per_seed_ratios": [float(r) for r in b / a],
    }


def seeds_identical(values: Float[np.ndarray, "n_seeds"], *, rtol: float = 0.0) -> bool:
    """Whether every seed's value equals the first (within ``rtol`` of it; exact by default).

    >>> seeds_identical([0.7478181523757763] * 3), seeds_identical([0.74, 0.75])
    (True, False)
    """
    v = _check_vector(values, "values", min_len=2)
    if not (isinstance(rtol, (float, int)) and rtol >= 0):
        raise TLSpecError(f"rtol={rtol!r} must be a non-negative number (0 means bit-identical).")
    return bool(np.all(np.abs(v - v[0]) <= rtol * abs(v[0])))


def check_seeds(
    values: Float[np.ndarray, "n_seeds"], *, name: str = "measurement", rtol: float = 0.0
) -> str | None:
    """Warn (``TLSpecWarning``) and return the text when all seeds gave identical values; else None.

    >>> check_seeds([0.5, 0.6, 0.7]) is None
    True
    """
    if not seeds_identical(values, rtol=rtol):
        return None
    n = len(values)
    text = (
        f"the seeds do not act on this {name}: {n} seeds gave identical values, "
        f"which is one observation, not {n}"
    )
    warnings.warn(text, TLSpecWarning, stacklevel=2)
    return text


def linear_fit(x: Float[np.ndarray, "n_points"], y: Float[np.ndarray, "n_points"]) -> LinearFit:
    """Ordinary least squares via ``scipy.stats.linregress`` (e.g. PPL or log-PPL against sigma).

    >>> f = linear_fit([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    >>> round(f.slope, 12), round(f.intercept, 12), round(f.r2, 12)
    (2.0, 1.0, 1.0)
    """
    x = _check_vector(x, "x", min_len=3)
    y = _check_vector(y, "y", min_len=3)
    if x.shape != y.shape:
        raise TLSpecError(
            f"x and y have different lengths ({x.shape[0]} vs {y.shape[0]}); pass one y per x."
        )
    if np.all(x == x[0]):
        raise TLSpecError(f"all x are equal ({x[0]}): a slope needs two distinct x values.")
    r = scipy.stats.linregress(x, y)
    r2 = float(r.rvalue) ** 2 if math.isfinite(r.rvalue) else math.nan
    return LinearFit(float(r.slope), float(r.intercept), r2, float(r.pvalue), float(r.stderr))
