"""Specialization Index maths on per-prompt statistics: no model, numpy in, numbers out.

Three definitions circulate in the material of D'Elia's "Alignment Robustness Depends More on
Training than Architecture" (its Eq. 1, its E11 notebooks, its ``src/metrics.py``); each is
computed here from the statistics the capture hooks reduce inside the forward pass:

- ``pattern``: 1 - mean of the upper-triangle Pearson correlations between a layer's heads.
- ``entropy_profile``: heads' normalized-entropy profiles across layers, correlated;
  one number per model (the route behind every published SI).
- ``normalized_entropy``: 1 - mean row entropy / ln(n), per layer.

>>> import numpy as np
>>> corr = np.ones((1, 1, 4, 4))           # [prompts, layers, heads, heads]: identical heads
>>> float(si_from_correlations(corr).per_layer[0])
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.metrics.pearson import corrcoef_rows

__all__ = [
    "CorrelationSummary",
    "corrcoef_rows",
    "gqa_group_split",
    "si_from_correlations",
    "si_from_entropy_profile",
    "si_from_entropy_profiles",
    "prompt_summary",
    "si_from_row_entropy",
    "si_value_from_prompts",
    "upper_mean",
]


def upper_mean(corr: Float[np.ndarray, "... n_heads n_heads"]) -> Float[np.ndarray, "..."]:
    """Mean of the strict upper triangle of the last two axes, ignoring NaN (NaN if none defined).

    >>> upper_mean(np.array([[1.0, 0.5], [0.5, 1.0]]))
    array(0.5)
    """
    n = corr.shape[-1]
    iu = np.triu_indices(n, k=1)
    vals = corr[..., iu[0], iu[1]]
    ok = ~np.isnan(vals)
    count = ok.sum(-1)
    total = np.where(ok, vals, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class CorrelationSummary:
    """SI of the ``pattern`` family from per-prompt head-by-head correlations.

    ``per_prompt_layer`` is SI per prompt and layer; ``head_correlation`` each head's mean
    correlation with the other heads of its layer (averaged over prompts; per prompt in
    ``per_prompt_head_correlation``); ``undefined_heads``
    counts (prompt, layer, head) triples whose pattern had zero variance.
    """

    per_prompt_layer: Float[np.ndarray, "n_prompts n_layers"]
    per_layer: Float[np.ndarray, "n_layers"]
    head_correlation: Float[np.ndarray, "n_layers n_heads"]
    undefined_heads: int
    per_prompt_head_correlation: Float[np.ndarray, "n_prompts n_layers n_heads"]


def _head_means(corr: np.ndarray, include: np.ndarray) -> np.ndarray:
    """Mean over the heads selected by ``include`` [H, H] (diagonal excluded), NaN-aware."""
    sel = include & ~np.eye(corr.shape[-1], dtype=bool)
    vals = np.where(sel & ~np.isnan(corr), corr, 0.0)
    count = (sel & ~np.isnan(corr)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, vals.sum(-1) / np.maximum(count, 1), np.nan)


def si_from_correlations(
    corr: Float[np.ndarray, "n_prompts n_layers n_heads n_heads"],
) -> CorrelationSummary:
    """SI per prompt and layer (1 - mean upper-triangle correlation), per layer, and per head.

    >>> c = np.array([[[[1.0, 0.2], [0.2, 1.0]]]])
    >>> float(si_from_correlations(c).per_layer[0])
    0.8
    """
    corr = np.asarray(corr, dtype=np.float64)
    per_prompt_layer = 1.0 - upper_mean(corr)
    n_heads = corr.shape[-1]
    diag = np.isnan(np.diagonal(corr, axis1=-2, axis2=-1))
    with np.errstate(invalid="ignore"), _quiet():
        per_layer = np.nanmean(per_prompt_layer, axis=0)
        per_prompt_heads = _head_means(corr, np.ones((n_heads, n_heads), bool))
        head_corr = np.nanmean(per_prompt_heads, axis=0)
    return CorrelationSummary(per_prompt_layer, per_layer, head_corr, int(diag.sum()),
                              per_prompt_heads)


def gqa_group_split(
    corr: Float[np.ndarray, "n_prompts n_layers n_heads n_heads"], n_kv_heads: int
) -> tuple[Float[np.ndarray, "n_layers n_heads"], Float[np.ndarray, "n_layers n_heads"]]:
    """Each head's mean correlation with heads of its own KV group and with the other groups.

    Query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)`` (TransformerLens and HF order).

    >>> c = np.ones((1, 1, 4, 4)); c[..., :2, 2:] = c[..., 2:, :2] = 0.0
    >>> [float(a[0, 0]) for a in gqa_group_split(c, 2)]
    [1.0, 0.0]
    """
    corr = np.asarray(corr, dtype=np.float64)
    n_heads = corr.shape[-1]
    group = np.arange(n_heads) // (n_heads // n_kv_heads)
    same = group[:, None] == group[None, :]
    with _quiet():
        within = np.nanmean(_head_means(corr, same), axis=0)
        between = np.nanmean(_head_means(corr, ~same), axis=0)
    return within, between


def si_from_entropy_profile(entropies: Float[np.ndarray, "n_layers n_heads"]) -> float:
    """Model-level SI from a [layers, heads] normalized-entropy matrix: 1 - nanmean(triu(corrcoef(E.T), 1)).

    This is the computation behind every SI stored in the paper's E11 result files.

    >>> E = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    >>> round(si_from_entropy_profile(E), 12)
    2.0
    """
    e = np.asarray(entropies, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] < 2:
        raise TLSpecError(
            f"entropy matrix must be [layers, heads] with at least 2 of each, got shape {e.shape}; "
            "pass the matrix stored as 'entropies' (layers first)."
        )
    return float(1.0 - upper_mean(corrcoef_rows(e.T)))


def si_from_entropy_profiles(
    entropies: Float[np.ndarray, "*batch n_layers n_heads"],
) -> Float[np.ndarray, "*batch"]:
    """:func:`si_from_entropy_profile` for a stack of matrices at once (used by resampling).

    >>> E = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    >>> si_from_entropy_profiles(np.stack([E, E])).round(12).tolist()
    [2.0, 2.0]
    """
    e = np.asarray(entropies, dtype=np.float64)
    return 1.0 - upper_mean(corrcoef_rows(np.swapaxes(e, -1, -2)))


def si_from_row_entropy(
    row_entropy: Float[np.ndarray, "n_prompts n_layers n_heads"],
    n_tokens: Float[np.ndarray, "n_prompts"],
) -> tuple[Float[np.ndarray, "n_prompts n_layers n_heads"], Float[np.ndarray, "n_prompts n_layers"]]:
    """``normalized_entropy`` SI: 1 - mean row entropy (nats) / ln(n), per head and per layer.

    >>> h = np.full((1, 1, 2), np.log(4.0) / 2)
    >>> si_from_row_entropy(h, np.array([4]))[1]
    array([[0.5]])
    """
    norm = np.log(np.asarray(n_tokens, dtype=np.float64))[:, None, None]
    per_head = 1.0 - np.asarray(row_entropy, dtype=np.float64) / norm
    return per_head, per_head.mean(axis=-1)


def prompt_summary(
    method: str,
    raw: dict[str, np.ndarray],
    n_tokens: np.ndarray | None = None,
) -> np.ndarray:
    """Per-prompt statistic each SI method averages: [P, L] SI (pattern, normalized_entropy) or
    [P, L, H] entropies (entropy_profile), from the capture hooks' raw statistics.

    >>> prompt_summary("pattern", {"correlation": np.ones((2, 1, 3, 3))}).tolist()
    [[0.0], [0.0]]
    """
    if method == "pattern":
        return 1.0 - upper_mean(raw["correlation"])
    if method == "entropy_profile":
        return np.asarray(raw["column_entropy"], dtype=np.float64)
    if n_tokens is None:
        raise ValueError("normalized_entropy needs the number of tokens of each prompt")
    return si_from_row_entropy(raw["row_entropy"], n_tokens)[1]


def si_value_from_prompts(
    method: str, per_prompt: Float[np.ndarray, "*batch n_prompts ..."]
) -> Float[np.ndarray, "*batch"]:
    """Model-level SI from :func:`prompt_summary` output, vectorized over leading axes.

    pattern / normalized_entropy: nanmean over layers of the per-layer nanmean over prompts
    (exactly how ``SIResult.value`` is computed); entropy_profile: SI of the prompt-mean matrix.

    >>> si_value_from_prompts("pattern", np.array([[0.2, 0.4], [0.4, np.nan]])).round(12)
    np.float64(0.35)
    """
    x = np.asarray(per_prompt, dtype=np.float64)
    if method == "entropy_profile":
        return si_from_entropy_profiles(x.mean(axis=-3))
    with _quiet():
        return np.nanmean(np.nanmean(x, axis=-2), axis=-1)


class _quiet:
    """Silence numpy's 'Mean of empty slice' warnings: callers count undefined values themselves."""

    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)
