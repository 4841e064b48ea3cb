"""Pure tensor maths of the reproduction routes (the paper's own code, padding artifacts included).

The E11 notebooks and ``src/metrics.py`` of the paper's reproduction package padded every prompt
to 128 tokens and ran Hugging Face *eager* attention with that attention mask. Two facts of that
computation are reproduced here, so every backend gives what Hugging Face gave:

- :func:`eager_padding_scores`: Hugging Face eager attention adds the dtype's minimum to every
  masked score. A query row that still sees a real key softmaxes to exactly the unpadded
  values; a row that sees none (a right-padded pad row past a sliding window, a left-padded pad
  row before the first real token) becomes ``min + score``, which rounds to the same number on
  every key, so the row is *uniform over all keys*, future and pad keys included.
- the statistics of the unmasked routes average those pad rows in (the capture hooks pass
  all-true row and key masks to :func:`~tl_spec.metrics.patterns.column_entropy` and
  :func:`~tl_spec.metrics.patterns.row_entropy`), and ``metrics_py`` normalises by ln of the
  padded length (``Tokenized.norm_lengths``).

>>> import torch
>>> s = torch.zeros(1, 1, 3, 3)
>>> s[..., 0, 1:] = s[..., 1, 2] = -torch.inf               # a causal model's own mask
>>> p = eager_padding_scores(s, torch.tensor([[False, True, True]])).softmax(-1)
>>> p[0, 0].tolist()                                         # row 0 sees no real key: uniform
[[0.3333333432674408, 0.3333333432674408, 0.3333333432674408], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

__all__ = ["eager_padding_scores"]


def eager_padding_scores(
    scores: Float[torch.Tensor, "batch n_heads query_pos key_pos"],
    key_valid: Bool[torch.Tensor, "batch key_pos"],
    *,
    window: int | None = None,
) -> Float[torch.Tensor, "batch n_heads query_pos key_pos"]:
    """Attention scores with a padding mask applied as Hugging Face eager attention applies it.

    Visible entries are key <= query (inside ``window`` when given: query - key < window) on a
    real key, and not already masked by the model (``-inf``, or the dtype's minimum that the
    bridge's Hugging Face mask adds). They keep their score (NaN included, so a broken forward
    pass stays visible); every other entry becomes ``-inf``.
    A query row without any visible entry gets score 0 everywhere, i.e. uniform attention over
    all keys, which is exactly what Hugging Face's ``score + finfo.min`` gives.

    Args:
        scores: the pre-softmax scores of one layer (``hook_attn_scores``).
        key_valid: 1 on real tokens, 0 on padding.
        window: the layer's sliding window (``None``: global).

    Returns:
        The scores to softmax (a new tensor; the input is not changed).

    >>> s = torch.zeros(1, 1, 2, 2)
    >>> eager_padding_scores(s, torch.tensor([[True, False]]))[0, 0].tolist()
    [[0.0, -inf], [0.0, -inf]]
    """
    n_q, n_k = scores.shape[-2:]
    q = torch.arange(n_q, device=scores.device)[:, None] + (n_k - n_q)
    k = torch.arange(n_k, device=scores.device)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= (q - k) < window
    floor = torch.finfo(scores.dtype).min / 2
    # ``~(s <= floor)``, not ``s > floor``: a NaN score stays visible, so a broken forward pass
    # still shows as NaN (and is caught) instead of turning into a uniform row
    visible = allowed & key_valid[:, None, None, :].to(scores.device) & ~(scores <= floor)
    empty = ~visible.any(dim=-1, keepdim=True)
    masked = torch.where(visible, scores, torch.full_like(scores, -torch.inf))
    return torch.where(empty, torch.zeros_like(scores), masked)
