"""One Pearson correlation and one zero-variance rule, for numpy arrays and torch tensors.

Every correlation tl_spec reports (heads of one layer, heads of two models, heads' entropy
profiles across layers) is computed by :func:`pearson_from_moments` from the moments of the two
sets of variables over the same observations: the cross sums ``sum x_i y_j``, the sums, the sums
of squares and the number of observations. A variable whose standard deviation over the
observations is below :data:`ZERO_VARIANCE_STD` has no defined correlation: its rows and columns
are NaN (the callers exclude and count them). :func:`corrcoef_rows` is ``np.corrcoef`` through
the same kernel, silent and NaN for flat rows.

>>> import numpy as np
>>> x = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.5], [5.0, 5.0, 5.0]])
>>> corrcoef_rows(x).round(3).tolist()
[[1.0, 0.998, nan], [0.998, 1.0, nan], [nan, nan, nan]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from jaxtyping import Bool, Float

if TYPE_CHECKING:
    import torch

__all__ = ["ZERO_VARIANCE_STD", "corrcoef_rows", "pearson_from_moments", "zero_variance"]

#: A variable whose (population) standard deviation over the observations is below this is
#: treated as zero-variance: its correlations are undefined (NaN), excluded and counted by callers.
ZERO_VARIANCE_STD = 1e-6

T = TypeVar("T", "np.ndarray", "torch.Tensor")


# The two element-wise steps numpy and torch spell differently (tensors have methods for both;
# telling them apart by method keeps this module free of a torch import).
def _sqrt(x: T) -> T:
    return x.sqrt() if hasattr(x, "sqrt") else np.sqrt(x)


def _nan_where(bad: Any, x: T) -> T:
    return x.masked_fill(bad, float("nan")) if hasattr(x, "masked_fill") else np.where(bad, np.nan, x)


def zero_variance(
    centred_ss: Float[T, "*batch n_vars"], n: Float[T, "*batch 1"] | float
) -> Bool[T, "*batch n_vars"]:
    """The zero-variance rule: ``sqrt(centred_ss / n) < ZERO_VARIANCE_STD``.

    ``centred_ss`` is the centred sum of squares ``sum (x - mean)^2`` of each variable over its
    ``n`` observations (``n`` broadcastable against it); compared in the square-root domain
    exactly as ``sqrt(centred_ss) < ZERO_VARIANCE_STD * sqrt(n)``.

    >>> zero_variance(np.array([0.0, 1e-14, 1.0]), np.array([4.0])).tolist()
    [True, True, False]
    """
    return _sqrt(centred_ss) < ZERO_VARIANCE_STD * _sqrt(n)


def pearson_from_moments(
    cross: Float[T, "*batch n_a n_b"],
    sum_a: Float[T, "*batch n_a"],
    sum_b: Float[T, "*batch n_b"],
    sq_a: Float[T, "*batch n_a"],
    sq_b: Float[T, "*batch n_b"],
    n: Float[T, "*batch 1"],
) -> Float[T, "*batch n_a n_b"]:
    """Pearson correlation of every variable ``a_i`` with every ``b_j`` from their moments.

    ``cov = cross - sum_a sum_b / n`` and ``ss = sq - sum^2 / n`` (clamped at 0);
    ``corr = cov / sqrt(ss_a ss_b)``, clipped to [-1, 1]. Variables flagged by
    :func:`zero_variance` give NaN rows / columns (the diagonal included when ``a is b``).
    Works on numpy arrays and torch tensors alike (all arguments of one kind); computed in the
    inputs' dtype, silently (no warnings for flat variables).

    Args:
        cross: ``sum_k a_i[k] b_j[k]`` over the observations, ``[..., n_a, n_b]``.
        sum_a, sum_b: ``sum_k a_i[k]`` and ``sum_k b_j[k]``.
        sq_a, sq_b: ``sum_k a_i[k]^2`` and ``sum_k b_j[k]^2``.
        n: the number of observations, ``[..., 1]`` (broadcast against the sums).

    Returns:
        The correlations ``[..., n_a, n_b]``, NaN where either variable has zero variance.

    >>> a = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    >>> c = pearson_from_moments(a @ a.T, a.sum(1), a.sum(1), (a * a).sum(1), (a * a).sum(1),
    ...                          np.array([3.0]))
    >>> bool(np.allclose(c, np.corrcoef(a)))
    True
    """
    cov = cross - sum_a[..., :, None] * sum_b[..., None, :] / n[..., None]
    ss_a = (sq_a - sum_a * sum_a / n).clip(0, None)
    ss_b = (sq_b - sum_b * sum_b / n).clip(0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (cov / (_sqrt(ss_a)[..., :, None] * _sqrt(ss_b)[..., None, :])).clip(-1.0, 1.0)
    bad = zero_variance(ss_a, n)[..., :, None] | zero_variance(ss_b, n)[..., None, :]
    return _nan_where(bad, corr)


def corrcoef_rows(x: Float[np.ndarray, "*batch n_rows n_obs"]) -> Float[np.ndarray, "*batch n_rows n_rows"]:
    """Pearson correlation between rows, like ``np.corrcoef`` but silent and batched; rows with
    zero variance (:func:`zero_variance`) give NaN.

    Rows are centred first (for precision: the moments of centred rows lose nothing to
    cancellation), then correlated by :func:`pearson_from_moments`.

    >>> float(corrcoef_rows(np.array([[1.0, 2, 3], [2, 4, 6.5]]))[0, 1].round(3))
    0.998
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    cross = xc @ np.swapaxes(xc, -1, -2)
    sums = xc.sum(axis=-1)
    sq = np.diagonal(cross, axis1=-2, axis2=-1)
    n = np.full((*x.shape[:-2], 1), float(x.shape[-1]))
    return pearson_from_moments(cross, sums, sums, sq, sq, n)
