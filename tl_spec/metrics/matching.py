"""Matching heads across models: heads are unordered within a layer, so compare after matching.

Given a head x head similarity matrix between two models' layers, :func:`match_heads` finds the
one-to-one assignment maximising the total similarity (``scipy.optimize.linear_sum_assignment``);
:func:`best_match` takes each head's best partner without the one-to-one constraint.

>>> sim = np.array([[0.1, 0.9], [0.8, 0.2]])
>>> match_heads(sim).tolist(), matched_similarity(sim).tolist()
([1, 0], [0.9, 0.8])
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment

__all__ = ["best_match", "match_heads", "matched_similarity"]


def match_heads(sim: Float[np.ndarray, "n_heads n_heads"]) -> Int[np.ndarray, "n_heads"]:
    """``perm`` with head ``i`` of the first model matched to head ``perm[i]`` of the second.

    Undefined similarities (NaN, e.g. a zero-variance head) count as the worst possible match.

    >>> match_heads(np.eye(3)[[2, 0, 1]]).tolist()
    [2, 0, 1]
    """
    sim = np.asarray(sim, dtype=np.float64)
    finite = sim[np.isfinite(sim)]
    floor = (finite.min() if finite.size else 0.0) - 1.0
    rows, cols = linear_sum_assignment(np.where(np.isfinite(sim), sim, floor), maximize=True)
    perm = np.empty(sim.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def matched_similarity(sim: Float[np.ndarray, "n_heads n_heads"]) -> Float[np.ndarray, "n_heads"]:
    """Each head's similarity to its partner under the optimal one-to-one matching.

    >>> matched_similarity(np.array([[0.5, 0.4], [0.45, 0.0]])).tolist()
    [0.4, 0.45]
    """
    sim = np.asarray(sim, dtype=np.float64)
    return sim[np.arange(sim.shape[0]), match_heads(sim)]


def best_match(sim: Float[np.ndarray, "... n_heads n_heads"]) -> Float[np.ndarray, "... n_heads"]:
    """Each head's highest similarity to any head of the other model (NaN ignored).

    >>> best_match(np.array([[0.5, 0.4], [0.45, 0.0]])).tolist()
    [0.5, 0.45]
    """
    sim = np.asarray(sim, dtype=np.float64)
    filled = np.where(np.isfinite(sim), sim, -np.inf)
    out = filled.max(axis=-1)
    return np.where(np.isfinite(out), out, np.nan)
