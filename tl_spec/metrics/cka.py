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
    "HSIC_CHUNK_BYTES",
    "block_hsic",
    "cka_from_hsic",
    "centered_cross",
    "linear_cka",
    "minibatch_hsic",
    "output_factors",
    "unbiased_hsic_gram",
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


#: Transient memory the minibatch HSIC may use per chunk of prompts (bytes), beyond one
#: prompt's worth (a single prompt always fits, however long).
HSIC_CHUNK_BYTES = 256 * 2**20


def unbiased_hsic_gram(
    k: Float[np.ndarray, "... n n"], l: Float[np.ndarray, "... n n"]
) -> Float[np.ndarray, "..."]:
    """Unbiased HSIC (Song et al., 2012) of two ``n x n`` kernel matrices, ``n >= 4``, directly.

    ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with ``K~``, ``L~``
    the kernels with their diagonals set to zero.

    >>> x = np.random.default_rng(0).normal(size=(30, 3))
    >>> round(float(unbiased_hsic_gram(x @ x.T, x @ x.T)), 6) > 0
    True
    """
    k = np.array(k, dtype=np.float64)
    l_ = np.array(l, dtype=np.float64)
    n = k.shape[-1]
    idx = np.arange(n)
    k[..., idx, idx] = 0.0
    l_[..., idx, idx] = 0.0
    tr = np.einsum("...ij,...ij->...", k, l_)
    ks, ls = k.sum((-1, -2)), l_.sum((-1, -2))
    kl = np.einsum("...i,...i->...", k.sum(-1), l_.sum(-1))
    return (tr + ks * ls / ((n - 1) * (n - 2)) - 2.0 * kl / (n - 2)) / (n * (n - 3))


def _hsic_terms(x: torch.Tensor, gram: bool) -> dict[str, torch.Tensor]:
    """Per prompt and head, what unbiased linear HSIC needs of features ``x`` [b, p, h, d].

    ``gram``: the kernel with zero diagonal ``kt`` [b, h, p, p]; otherwise the features and the
    kernel's diagonal ``k`` [b, h, p]. Always ``r = K~ 1`` [b, h, p] and ``s = 1'K~1`` [b, h].
    """
    if gram:
        kt = torch.einsum("bphd,bqhd->bhpq", x, x)
        kt.diagonal(dim1=-2, dim2=-1).zero_()
        r = kt.sum(-1)
        return {"kt": kt, "r": r, "s": r.sum(-1)}
    k = torch.einsum("bphd,bphd->bhp", x, x)
    r = torch.einsum("bphd,bhd->bhp", x, x.sum(1)) - k
    return {"x": x, "k": k, "r": r, "s": r.sum(-1)}


def _hsic_pair(tx: dict[str, torch.Tensor], ty: dict[str, torch.Tensor],
               n: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC [b, hx, hy] of every head pair from two models' :func:`_hsic_terms`."""
    if "kt" in tx:
        tr = torch.einsum("bipq,bjpq->bij", tx["kt"], ty["kt"])
    else:
        cross = torch.einsum("bpid,bpje->bijde", tx["x"], ty["x"])
        tr = cross.square().sum((-1, -2)) - torch.einsum("bip,bjp->bij", tx["k"], ty["k"])
    n = n.to(tr.dtype)[:, None, None]
    ss = tx["s"][:, :, None] * ty["s"][:, None, :]
    rr = torch.einsum("bip,bjp->bij", tx["r"], ty["r"])
    return (tr + ss / ((n - 1) * (n - 2)) - 2.0 * rr / (n - 2)) / (n * (n - 3))


def minibatch_hsic(
    feats: list[Float[torch.Tensor, "batch pos heads d"]],
    n_tokens: Float[torch.Tensor, "batch"],
    pairs: list[tuple[int, int]],
    *,
    chunk_bytes: int = HSIC_CHUNK_BYTES,
) -> dict[tuple[int, int], Float[torch.Tensor, "batch heads heads"]]:
    """Per prompt, the unbiased linear HSIC between every head of model ``a`` and of model ``b``.

    ``feats[m]`` holds model ``m``'s per-head features with padded positions set to zero (zero
    rows change none of the estimator's sums); ``n_tokens`` the real tokens per prompt (a prompt
    with fewer than 4 gives NaN). Each prompt is one minibatch of minibatch CKA (Nguyen, Raghu &
    Kornblith, 2021). Per chunk of prompts the kernels are ``pos x pos`` per head when ``pos <=
    sqrt(heads) d`` (cheaper), otherwise the head-pair cross-covariances ``[heads d]^2`` are
    formed; prompts go in chunks of at most ``chunk_bytes`` of either (at least one prompt), so
    the transient memory is at most ``max(chunk_bytes, 8 models heads pos^2, 8 (heads d)^2)``
    bytes, whatever the number of prompts.

    >>> x = torch.randn(2, 9, 3, 4, dtype=torch.float64)
    >>> h = minibatch_hsic([x, x], torch.tensor([9, 9]), [(0, 1)])[(0, 1)]
    >>> h.shape, bool((torch.diagonal(h, dim1=1, dim2=2) > 0).all())
    (torch.Size([2, 3, 3]), True)
    """
    b, p, h, d = feats[0].shape
    gram = p * p <= h * d * d
    models = sorted({m for pair in pairs for m in pair})
    per_prompt = 8 * (len(models) * h * p * p if gram else h * h * d * d)
    step = max(1, chunk_bytes // max(per_prompt, 1))
    out: dict[tuple[int, int], list[torch.Tensor]] = {pair: [] for pair in pairs}
    for start in range(0, b, step):
        rows = slice(start, start + step)
        terms = {m: _hsic_terms(feats[m][rows], gram) for m in models}
        n = n_tokens[rows].to(feats[0].device)
        for pair in pairs:
            val = _hsic_pair(terms[pair[0]], terms[pair[1]], n)
            out[pair].append(torch.where((n >= 4)[:, None, None], val, torch.nan))
    return {pair: torch.cat(v) for pair, v in out.items()}
