"""Linear CKA (Kornblith et al., 2019), directly and from streamed cross-covariances.

Linear CKA between representations ``X`` [n, p] and ``Y`` [n, q] of the same ``n`` examples,
columns centred: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``. It is invariant to orthogonal
transforms and isotropic scaling of either side, and depends only on the centred Gram
matrices ``X X^T`` and ``Y Y^T``.

Over many tokens the tensors here never hold ``X``: batches add ``X^T Y``, ``sum X``,
``sum Y`` and ``n`` into running sums, and :func:`centered_cross` centres the total. A head's
contribution to the residual stream is ``z_h W_O[h]`` (``d_model`` wide); since
``W_O[h] W_O[h]^T = R_h R_h^T`` for the small ``R_h`` of :func:`output_factors`, ``z_h R_h``
(``d_head`` wide) has the same Gram matrix, hence the same CKA with anything.

>>> x = np.random.default_rng(0).normal(size=(50, 4))
>>> round(linear_cka(x, 3.0 * x @ np.linalg.qr(np.ones((4, 4)) + np.eye(4))[0]), 12)
1.0
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

__all__ = [
    "block_hsic",
    "cka_from_hsic",
    "centered_cross",
    "linear_cka",
    "output_factors",
]


def linear_cka(x: Float[np.ndarray, "n p"], y: Float[np.ndarray, "n q"]) -> float:
    """Linear CKA of two representations of the same ``n`` examples, by the published formula.

    ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred ``X_c``,
    ``Y_c``, in float64. NaN when either side is constant.

    >>> a = np.arange(12.0).reshape(6, 2) ** 2
    >>> linear_cka(a, a)
    1.0
    """
    xc = np.asarray(x, dtype=np.float64)
    yc = np.asarray(y, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    denom = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    if denom == 0.0:
        return float("nan")
    return float(np.linalg.norm(yc.T @ xc) ** 2 / denom)


def centered_cross(
    sum_xy: Float[np.ndarray, "... p q"],
    sum_x: Float[np.ndarray, "... p"],
    sum_y: Float[np.ndarray, "... q"],
    n: float | Float[np.ndarray, "..."],
) -> Float[np.ndarray, "... p q"]:
    """``X_c^T Y_c`` from streamed sums: ``sum_xy - sum_x sum_y^T / n``.

    >>> x = np.array([[1.0], [2.0], [4.0]])
    >>> round(centered_cross(x.T @ x, x.sum(0), x.sum(0), 3).item(), 10)
    4.6666666667
    """
    n = np.asarray(n, dtype=np.float64)[..., None, None]
    return sum_xy - sum_x[..., :, None] * sum_y[..., None, :] / n


def block_hsic(
    cross: Float[np.ndarray, "... p q"], heads_x: int, heads_y: int
) -> Float[np.ndarray, "... heads_x heads_y"]:
    """Squared Frobenius norm of every (head, head) block of a centred cross-covariance.

    ``cross`` is ``X_c^T Y_c`` for ``X`` made of ``heads_x`` equal-width column blocks (one per
    head) and ``Y`` of ``heads_y``; entry ``[i, j]`` is ``||X_i^T Y_j||_F^2``, the (unnormalised)
    linear HSIC between head ``i`` and head ``j``.

    >>> block_hsic(np.eye(4), 2, 2)
    array([[2., 0.],
           [0., 2.]])
    """
    *lead, p, q = cross.shape
    blocks = cross.reshape(*lead, heads_x, p // heads_x, heads_y, q // heads_y)
    return np.einsum("...iajb,...iajb->...ij", blocks, blocks)


def cka_from_hsic(
    hsic_xy: Float[np.ndarray, "... hx hy"],
    hsic_xx: Float[np.ndarray, "... hx"],
    hsic_yy: Float[np.ndarray, "... hy"],
) -> Float[np.ndarray, "... hx hy"]:
    """Normalise HSIC values to CKA: ``hsic_xy / sqrt(hsic_xx hsic_yy)``; NaN for a constant side.

    >>> cka_from_hsic(np.array([[4.0]]), np.array([2.0]), np.array([8.0]))
    array([[1.]])
    """
    denom = np.sqrt(hsic_xx[..., :, None] * hsic_yy[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = hsic_xy / denom
    return np.where(denom > 0, np.clip(out, 0.0, 1.0), np.nan)


def output_factors(
    w_o: Float[torch.Tensor, "n_heads d_head d_model"],
) -> Float[torch.Tensor, "n_heads d_head d_head"]:
    """Per head, ``R`` with ``R R^T = W_O W_O^T`` (``U S`` of the SVD ``W_O = U S V^T``).

    ``z @ R`` has the Gram matrix of the head's residual-stream output ``z @ W_O``, so CKA can be
    computed in ``d_head`` dimensions instead of ``d_model``.

    >>> w = torch.randn(2, 3, 8, dtype=torch.float64)
    >>> r = output_factors(w)
    >>> bool(torch.allclose(r @ r.transpose(-1, -2), w @ w.transpose(-1, -2)))
    True
    """
    u, s, _ = torch.linalg.svd(w_o, full_matrices=False)
    return u * s[..., None, :]
