"""Reduce attention patterns to the per-prompt statistics every SI definition needs.

Pure tensor maths (patterns and masks in, small tensors out), used inside the capture hooks so a
layer's ``[batch, heads, query, key]`` pattern never outlives its hook. Masks say which entries
count: padding (either side), the causal structure and sliding windows are all expressed as
boolean masks built by :func:`entry_mask`. Statistics are computed in ``dtype`` (float64 by
default, float32 at least) whatever the model's dtype, in query-row chunks of bounded size.

>>> import torch
>>> pat = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.5, 0.5]]]])  # two identical heads
>>> valid = entry_mask(torch.ones(1, 2, dtype=torch.bool), region="lower")
>>> round(head_correlations(pat, valid)[0, 0, 1].item(), 12)
1.0
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from tl_spec.errors import TLSpecError
from tl_spec.metrics.pearson import ZERO_VARIANCE_STD, pearson_from_moments
from tl_spec.options.si import Region

__all__ = [
    "CHUNK_BYTES",
    "Region",
    "ZERO_VARIANCE_STD",
    "check_region",
    "column_entropy",
    "cross_correlations",
    "entry_mask",
    "head_correlations",
    "row_entropy",
]


def check_region(region: str) -> None:
    """Raise a clear error unless ``region`` is ``"lower"`` or ``"full"``.

    >>> check_region("lower")
    """
    if region not in ("lower", "full"):
        raise TLSpecError(
            f"unknown region {region!r}; use 'lower' (key <= query, inside any sliding window: "
            "the entries a causal head can attend to) or 'full' (the paper's flattening of the "
            "whole n x n matrix, causal zeros included)"
        )


def entry_mask(
    token_valid: Bool[torch.Tensor, "batch pos"],
    *,
    region: Region = "lower",
    window: int | None = None,
) -> Bool[torch.Tensor, "batch query_pos key_pos"]:
    """Entries that count: valid query x valid key, restricted to what a head can attend to.

    ``region="lower"`` keeps key <= query and, for a sliding window ``w``, query - key < w (the
    entries a causal head can attend to); ``region="full"`` keeps every valid x valid entry
    (the paper's flattening, causal zeros included).

    >>> entry_mask(torch.tensor([[False, True, True]]), region="lower").int().tolist()
    [[[0, 0, 0], [0, 1, 0], [0, 1, 1]]]
    """
    valid = token_valid[:, :, None] & token_valid[:, None, :]
    if region == "full":
        return valid
    n = token_valid.shape[-1]
    idx = torch.arange(n, device=token_valid.device)
    dist = idx[:, None] - idx[None, :]  # query - key
    allowed = dist >= 0
    if window is not None:
        allowed &= dist < window
    return valid & allowed


def _row_chunks(pattern: torch.Tensor, dtype: torch.dtype, budget_bytes: int) -> list[slice]:
    """Query-row slices whose ``dtype`` copy of the pattern stays under ``budget_bytes``."""
    batch, heads, n_q, n_k = pattern.shape
    per_row = max(1, batch * heads * n_k * torch.finfo(dtype).bits // 8)
    rows = max(1, budget_bytes // per_row)
    return [slice(q0, min(q0 + rows, n_q)) for q0 in range(0, n_q, rows)]


#: Temporaries of the statistics are built in query-row chunks of at most this many bytes, so a
#: long prompt costs a bounded amount of memory on top of the pattern TransformerLens already holds.
#: Small on purpose: the allocator reuses a few-MiB buffer from chunk to chunk, while every fresh
#: 64 MiB one is new pages to fault in (measured on CPU, one 32-head layer in bfloat16: the Gram
#: took 29 ms at 512 tokens with 64 MiB chunks, 4.6 ms with 4 MiB; 135 vs 66 ms at 2048).
CHUNK_BYTES = 4 * 2**20


def head_correlations(
    pattern: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    valid: Bool[torch.Tensor, "batch query_pos key_pos"],
    *,
    dtype: torch.dtype = torch.float64,
) -> Float[torch.Tensor, "batch n_heads n_heads"]:
    """Pearson correlation between every pair of heads over each prompt's valid entries.

    One masked ``dtype`` copy per query-row chunk feeds a Gram matrix and row sums; the
    correlation follows from these moments (:func:`~tl_spec.metrics.pearson.pearson_from_moments`,
    the one Pearson kernel) on the small ``[heads, heads]`` result, in float64 by default, where
    the subtraction costs nothing that matters for values in [0, 1]. Zero-variance heads (std <
    :data:`ZERO_VARIANCE_STD`) get NaN rows and columns, diagonal included, so callers can
    exclude and count them.

    >>> p = torch.rand(2, 3, 4, 4)
    >>> c = head_correlations(p, torch.ones(2, 4, 4, dtype=torch.bool))
    >>> bool(torch.allclose(c.diagonal(dim1=-2, dim2=-1), torch.ones(2, 3, dtype=c.dtype)))
    True
    """
    batch, heads = pattern.shape[:2]
    n = valid.sum(dim=(-1, -2)).to(dtype)[:, None]
    gram = pattern.new_zeros((batch, heads, heads), dtype=dtype)
    total = pattern.new_zeros((batch, heads), dtype=dtype)
    used_cols = valid.any(0)  # [query, key]: entries any prompt of the batch counts
    for rows in _row_chunks(pattern, dtype, CHUNK_BYTES):  # where, not *: pad rows may hold NaN
        used = used_cols[rows].any(0).nonzero()
        if used.numel() == 0:
            continue
        # key columns past the chunk's last valid one contribute exact zeros (causal "lower":
        # the upper triangle), so they are not copied nor multiplied: ~2x less work at length
        end = int(used.max()) + 1
        x = torch.where(valid[:, None, rows, :end], pattern[:, :, rows, :end].to(dtype),
                        0.0).flatten(-2)
        gram += x @ x.transpose(-1, -2)
        total += x.sum(-1)
    sq = gram.diagonal(dim1=-2, dim2=-1)
    return pearson_from_moments(gram, total, total, sq, sq, n)


def cross_correlations(
    pattern_a: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    pattern_b: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    valid: Bool[torch.Tensor, "batch query_pos key_pos"],
    *,
    dtype: torch.dtype = torch.float64,
) -> Float[torch.Tensor, "batch n_heads n_heads"]:
    """Pearson correlation of every head of ``pattern_a`` with every head of ``pattern_b``.

    Two models' patterns on the same prompts, over each prompt's valid entries (as in
    :func:`head_correlations`, which is the case ``pattern_a is pattern_b``); entry ``[b, i, j]``
    is head ``i`` of the first against head ``j`` of the second. Zero-variance heads give NaN.

    >>> p = torch.rand(1, 2, 4, 4)
    >>> ok = torch.ones(1, 4, 4, dtype=torch.bool)
    >>> bool(torch.allclose(cross_correlations(p, p, ok), head_correlations(p, ok)))
    True
    """
    if pattern_a.shape != pattern_b.shape:
        raise ValueError(f"pattern shapes differ: {tuple(pattern_a.shape)} vs {tuple(pattern_b.shape)}")
    batch, heads = pattern_a.shape[:2]
    n = valid.sum(dim=(-1, -2)).to(dtype)[:, None]
    cross = pattern_a.new_zeros((batch, heads, heads), dtype=dtype)
    tot_a, tot_b, sq_a, sq_b = (pattern_a.new_zeros((batch, heads), dtype=dtype) for _ in range(4))
    for rows in _row_chunks(pattern_a, dtype, CHUNK_BYTES // 2):
        keep = valid[:, None, rows]
        xa = torch.where(keep, pattern_a[:, :, rows].to(dtype), 0.0).flatten(-2)
        xb = torch.where(keep, pattern_b[:, :, rows].to(dtype), 0.0).flatten(-2)
        cross += xa @ xb.transpose(-1, -2)
        sq_a += (xa * xa).sum(-1)
        sq_b += (xb * xb).sum(-1)
        tot_a += xa.sum(-1)
        tot_b += xb.sum(-1)
    return pearson_from_moments(cross, tot_a, tot_b, sq_a, sq_b, n)


def column_entropy(
    pattern: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    query_valid: Bool[torch.Tensor, "batch query_pos"],
    key_valid: Bool[torch.Tensor, "batch key_pos"],
    *,
    dtype: torch.dtype = torch.float64,
) -> Float[torch.Tensor, "batch n_heads"]:
    """Normalized entropy of each head's attention averaged over valid query rows (E11 notebooks).

    The mean row over valid queries, restricted to valid keys, is renormalized, exact zeros are
    dropped, and H / log2(#nonzero) is returned (0 when fewer than two keys receive attention).

    >>> p = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    >>> column_entropy(p, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)).item()
    1.0
    """
    batch, heads, _, n_k = pattern.shape
    col = pattern.new_zeros((batch, heads, n_k), dtype=dtype)
    # where, not *: pad rows may hold NaN; the masked copy keeps the pattern's dtype and the sum
    # runs in ``dtype`` (every value converts exactly; a float64 copy costs six times more)
    for rows in _row_chunks(pattern, pattern.dtype, CHUNK_BYTES):
        col += torch.where(query_valid[:, None, rows, None], pattern[:, :, rows],
                           0.0).sum(dim=-2, dtype=dtype)
    col = torch.where(key_valid[:, None, :], col, 0.0)
    p = col / query_valid.sum(-1).to(dtype)[:, None, None]
    p = p / p.sum(dim=-1, keepdim=True)
    nonzero = p > 0
    plogp = torch.where(nonzero, p * torch.log2(torch.where(nonzero, p, 1.0)), 0.0)
    k = nonzero.sum(-1)
    h = -plogp.sum(-1)
    return torch.where(k >= 2, h / torch.log2(k.clamp_min(2).to(dtype)), 0.0)


def row_entropy(
    pattern: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    query_valid: Bool[torch.Tensor, "batch query_pos"],
    key_valid: Bool[torch.Tensor, "batch key_pos"],
    *,
    dtype: torch.dtype = torch.float64,
) -> Float[torch.Tensor, "batch n_heads"]:
    """Mean over valid query rows of each row's entropy in nats over valid keys (clamped at 1e-10).

    p log p is evaluated in the pattern's precision (at least float32: a float64 log costs five
    times more) and summed in ``dtype``. Rows are reduced first and padded rows dropped after, so
    NaN in padded rows never spreads.

    >>> p = torch.full((1, 1, 2, 2), 0.5)
    >>> round(row_entropy(p, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)).item(), 6)
    0.693147
    """
    mask_keys = not bool(key_valid.all())
    elementwise = torch.promote_types(pattern.dtype, torch.float32)
    total = pattern.new_zeros(pattern.shape[:2], dtype=dtype)
    for rows in _row_chunks(pattern, elementwise, CHUNK_BYTES):
        x = pattern[:, :, rows].to(elementwise, copy=True)  # our own copy: in-place is safe
        if mask_keys:
            x.masked_fill_(~key_valid[:, None, None, :], 0.0)
        plogp = x.clamp_min(1e-10).log_().mul_(x)
        ent = -plogp.sum(-1, dtype=dtype)  # [batch, heads, rows], summed in ``dtype``
        total += torch.where(query_valid[:, None, rows], ent, 0.0).sum(-1)
    return total / query_valid.sum(-1).to(dtype)[:, None]
