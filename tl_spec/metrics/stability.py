"""Head stability across models from pooled similarity statistics (pure maths, no model).

Prompts are grouped into ``G`` blocks; per block the experiment adds up what a similarity needs
(per-prompt pattern correlations and their counts, cross-covariance sums for exact CKA, or the
per-prompt unbiased HSIC values of minibatch CKA). A
similarity over any multiset of blocks (the data, or a bootstrap resample) is then a weighted
sum: :class:`PooledStats` turns block weights into head x head similarity matrices and
:func:`summarize` turns those into stability profiles with matching.

>>> sim = {(0, 1): np.eye(2)[None]}
>>> summarize(sim, {0: np.eye(2)[None], 1: np.eye(2)[None]}, n_models=2)["stability"].tolist()
[1.0]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Float

from tl_spec.metrics.cka import block_hsic, centered_cross, cka_from_hsic
from tl_spec.metrics.matching import best_match, match_heads

__all__ = ["PooledStats", "distinctness", "summarize"]

Pair = tuple[int, int]


@dataclass
class PooledStats:
    """Per-block sums behind pairwise head similarities (``kind``: pattern, cka or hsic).

    ``pattern``: ``sums[pair]`` / ``counts[pair]`` ``[blocks, layers, heads, heads]`` hold the sum
    and number of defined per-prompt correlations (``pair == (a, a)`` is within model ``a``).
    ``cka``: ``cross[pair]`` ``[blocks, layers, D, D]`` sums of ``X_a^T X_b`` over tokens,
    ``totals[a]`` ``[blocks, layers, D]`` sums of ``X_a``, ``n`` ``[blocks]`` token counts; each
    model's ``D`` columns are ``heads`` equal blocks (one per head; 1 for the residual stream).
    ``hsic`` (minibatch CKA, Nguyen et al. 2021): ``hsic[pair]`` ``[blocks, layers, heads, heads]``
    sums of per-prompt unbiased HSIC values (``(a, a)`` for every model: its diagonal normalises)
    and ``n`` ``[blocks]`` the number of prompts; CKA over weighted blocks is
    ``sum HSIC_ab / sqrt(sum HSIC_aa sum HSIC_bb)`` (the means' counts cancel).

    >>> s = PooledStats("pattern", 1, {(0, 1): np.ones((2, 1, 1, 1))}, {(0, 1): np.ones((2, 1, 1, 1))})
    >>> s.similarity((0, 1), np.array([1.0, 3.0])).tolist()
    [[[1.0]]]
    """

    kind: str
    heads: int
    sums: dict[Pair, np.ndarray] = field(default_factory=dict)
    counts: dict[Pair, np.ndarray] = field(default_factory=dict)
    cross: dict[Pair, np.ndarray] = field(default_factory=dict)
    totals: dict[int, np.ndarray] = field(default_factory=dict)
    hsic: dict[Pair, np.ndarray] = field(default_factory=dict)
    n: np.ndarray | None = None

    def similarity(
        self, pair: Pair, weights: Float[np.ndarray, "blocks"]
    ) -> Float[np.ndarray, "layers heads heads"]:
        """Head x head similarity of ``pair`` over blocks weighted by ``weights`` (resample counts)."""
        return self.similarities([pair], weights)[pair]

    def similarities(
        self, pairs: list[Pair], weights: Float[np.ndarray, "blocks"]
    ) -> dict[Pair, Float[np.ndarray, "layers heads heads"]]:
        """Similarities of several pairs at once: each model's totals and self-HSIC computed once,
        blocks of weight 0 skipped (a bootstrap resample leaves out about a third of them)."""
        w = np.asarray(weights, dtype=np.float64)
        keep = np.flatnonzero(w)
        wk = w[keep]

        def pooled(x: np.ndarray) -> np.ndarray:
            return np.tensordot(wk, x[keep], axes=1)

        if self.kind == "pattern":
            out = {}
            for pair in pairs:
                total, count = pooled(self.sums[pair]), pooled(self.counts[pair])
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[pair] = np.where(count > 0, total / count, np.nan)
            return out
        models = sorted({m for pair in pairs for m in pair})
        if self.kind == "hsic":
            self_hsic = {m: np.diagonal(pooled(self.hsic[(m, m)]), axis1=-2, axis2=-1)
                         for m in models}
            return {(a, b): cka_from_hsic(pooled(self.hsic[(a, b)]), self_hsic[a], self_hsic[b])
                    for a, b in pairs}
        assert self.n is not None
        n = float(wk @ self.n[keep])
        totals = {m: pooled(self.totals[m]) for m in models}

        def hsic(a: int, b: int) -> np.ndarray:
            cross = centered_cross(pooled(self.cross[(a, b)]), totals[a], totals[b], n)
            return block_hsic(cross, self.heads, self.heads)

        diag = {m: np.diagonal(hsic(m, m), axis1=-2, axis2=-1) for m in models}
        return {(a, b): cka_from_hsic(hsic(a, b), diag[a], diag[b]) for a, b in pairs}


def distinctness(self_sim: Float[np.ndarray, "layers heads heads"]) -> Float[np.ndarray, "layers"]:
    """``1 -`` mean off-diagonal within-model similarity per layer (the SI family's form).

    >>> distinctness(np.array([[[1.0, 0.2], [0.2, 1.0]]])).tolist()
    [0.8]
    """
    heads = self_sim.shape[-1]
    off = ~np.eye(heads, dtype=bool)
    return 1.0 - _nanmean(self_sim[..., off], axis=-1)


def _nanmean(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def summarize(
    sim: dict[Pair, Float[np.ndarray, "layers heads heads"]],
    self_sim: dict[int, Float[np.ndarray, "layers heads heads"]],
    *,
    n_models: int,
    null: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Stability profiles from pairwise similarities; models ``0 .. n_models-1`` are compared.

    Per pair and layer the heads are matched one-to-one (``match_heads``). Returns per layer
    ``stability`` (mean matched similarity over heads and model pairs), ``best_match`` (mean
    best-partner similarity), ``distinctness`` (mean over models), ``null`` (matched similarity
    of each model against each ``null`` model; NaN without), ``margin`` (stability - null); per
    model and head ``per_head_stability`` / ``per_head_best`` (means over the other models);
    ``matching[p]`` per compared pair ``p`` (in ``pairs`` order) ``[layers, heads]``.

    >>> s = summarize({(0, 1): np.eye(2)[::-1][None]}, {}, n_models=2)
    >>> s["matching"].tolist(), s["per_head_stability"].tolist()
    ([[[1, 0]]], [[[1.0, 1.0]], [[1.0, 1.0]]])
    """
    pairs = [(a, b) for a in range(n_models) for b in range(a + 1, n_models)]
    layers, heads = sim[pairs[0]].shape[:2]
    matched = np.full((n_models, n_models, layers, heads), np.nan)
    best = np.full((n_models, n_models, layers, heads), np.nan)
    matching = np.zeros((len(pairs), layers, heads), dtype=np.int64)
    for p, (a, b) in enumerate(pairs):
        s = sim[(a, b)]
        for layer in range(layers):
            perm = match_heads(s[layer])
            matching[p, layer] = perm
            matched[a, b, layer] = s[layer, np.arange(heads), perm]
            matched[b, a, layer, perm] = matched[a, b, layer]
        best[a, b] = best_match(s)
        best[b, a] = best_match(np.swapaxes(s, -1, -2))
    per_head = _nanmean(matched, axis=1)
    per_best = _nanmean(best, axis=1)
    pair_means = np.stack([_nanmean(matched[a, b], axis=-1) for a, b in pairs])
    out = {
        "stability": _nanmean(pair_means, axis=0),
        "best_match": _nanmean(_nanmean(np.stack([best[a, b] for a, b in pairs] +
                                                 [best[b, a] for a, b in pairs]), axis=-1), axis=0),
        "per_head_stability": per_head,
        "per_head_best": per_best,
        "matching": matching,
        "distinctness": (_nanmean(np.stack([distinctness(self_sim[a]) for a in range(n_models)]), 0)
                         if self_sim else np.full(layers, np.nan)),
    }
    null_levels = []
    for r in null or []:
        for a in range(n_models):
            s = sim[(a, r)]
            null_levels.append([_nanmean(s[layer, np.arange(heads), match_heads(s[layer])], -1)
                                for layer in range(layers)])
    out["null"] = _nanmean(np.array(null_levels), 0) if null_levels else np.full(layers, np.nan)
    out["margin"] = out["stability"] - out["null"]
    return out
