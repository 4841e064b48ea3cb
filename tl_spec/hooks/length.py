"""Hooks that reduce one forward pass into the SI statistics of every prefix length at once.

In a causal decoder-only model, query ``q`` attends only to keys ``k <= q`` and every position
scheme in use (rotary, learned absolute, ALiBi) depends on positions up to ``q`` only; so the
pattern of a prompt truncated to ``L`` tokens is exactly the top-left ``L x L`` block of the
full prompt's pattern, and all later layers see the same residual stream on those positions.
:class:`PrefixPatternStats` reduces, inside each layer's hook, the blocks of every length in
``lengths`` with the same maths as :class:`~tl_spec.hooks.capture.PatternStats` (masks for
padding, causality and sliding windows; see :mod:`tl_spec.metrics.patterns`), keeping only small
per-prompt tensors: no pattern is cached. Its non-finite checks are those of ``PatternStats``.

>>> stats = PrefixPatternStats(model, lengths=(16, 64), stats=("column_entropy",))  # doctest: +SKIP
>>> order = run_batches(model, tokenized, stats, batch_size=16)             # doctest: +SKIP
>>> stats.collect()[64]["column_entropy"].shape  # [prompts, layers, heads]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float

from tl_spec.errors import TLSpecError
from tl_spec.hooks.capture import PatternStats
from tl_spec.metrics.patterns import (
    Region,
    column_entropy,
    entry_mask,
    head_correlations,
    row_entropy,
)
from tl_spec.tokens import real_tokens

__all__ = ["PrefixPatternStats", "prefix_tokens"]


def prefix_tokens(
    token_valid: Bool[torch.Tensor, "batch pos"], length: int
) -> Bool[torch.Tensor, "batch pos"]:
    """The first ``length`` real tokens of each row (either padding side): a prompt truncated
    to ``min(its length, length)`` tokens.

    >>> valid = torch.tensor([[False, True, True, True], [True, True, False, False]])
    >>> prefix_tokens(valid, 2).int().tolist()
    [[0, 1, 1, 0], [1, 1, 0, 0]]
    """
    rank = token_valid.long().cumsum(-1)  # 1 on the first real token
    return token_valid & (rank <= length)


class PrefixPatternStats(PatternStats):
    """Per-prompt SI statistics at several prefix lengths from one forward pass.

    Like :class:`~tl_spec.hooks.capture.PatternStats` (same ``stats`` names except
    ``"mean_pattern"``, same ``region``, ``layers``, ``dtype``, the same non-finite checks), but
    :meth:`collect` returns ``{length: {stat: [prompts, layers, ...]}}``: each prompt's statistics
    as if it had been truncated to ``min(its length, length)`` tokens. Exact for causal
    decoder-only models (what the module docstring explains); each length costs a pass over its
    own ``L x L`` block only.

    >>> stats = PrefixPatternStats(model, lengths=(16, 32), stats=("row_entropy",))  # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=[*stats.bind(tokens, mask)]):  # doctest: +SKIP
    ...     model(tokens, attention_mask=mask)
    """

    def __init__(
        self,
        model: Any,
        *,
        lengths: Sequence[int],
        stats: Sequence[str] = ("correlation",),
        region: Region = "lower",
        layers: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if "mean_pattern" in stats:
            raise TLSpecError("prefix statistics are per prompt; 'mean_pattern' pools prompts")
        super().__init__(model, stats=stats, region=region, layers=layers, dtype=dtype)
        lengths = tuple(int(x) for x in lengths)
        if not lengths or any(x < 2 for x in lengths) or len(set(lengths)) != len(lengths):
            raise TLSpecError(f"lengths must be distinct integers >= 2, got {lengths!r}")
        self.lengths = tuple(sorted(lengths))
        self._prefix: dict[int, dict[str, dict[int, list[torch.Tensor]]]] = {
            n: {s: {layer: [] for layer in self.layers} for s in self.stats}
            for n in self.lengths
        }

    @torch.no_grad()
    def reduce(
        self, layer: int, pattern: Float[torch.Tensor, "batch n_heads query_pos key_pos"]
    ) -> None:
        """Reduce one layer's pattern for the current batch, at every prefix length."""
        batch, _, n_q, _ = pattern.shape
        token_valid = real_tokens(self.attention_mask, batch, n_q, pattern.device, owner="stats")
        self._check_rows(layer, pattern, token_valid)
        positions = torch.arange(n_q, device=pattern.device)
        for n in self.lengths:
            valid = prefix_tokens(token_valid, n)
            # the block that holds every row's prefix: [:L, :L] with right padding
            width = int((torch.where(valid, positions, -1).max())) + 1
            block, valid = pattern[:, :, :width, :width], valid[:, :width]
            store = self._prefix[n]
            if "correlation" in store:
                mask = entry_mask(valid, region=self.region, window=self.windows[layer])
                store["correlation"][layer].append(head_correlations(block, mask, dtype=self.dtype))
            if "column_entropy" in store:
                store["column_entropy"][layer].append(
                    column_entropy(block, valid, valid, dtype=self.dtype))
            if "row_entropy" in store:
                store["row_entropy"][layer].append(
                    row_entropy(block, valid, valid, dtype=self.dtype))

    def collect(self) -> dict[int, dict[str, np.ndarray]]:  # type: ignore[override]
        """``{length: {stat: [prompts, layers, ...]}}`` in the order prompts were run.

        Raises (naming the layer) if any forward pass produced non-finite values on real tokens.
        """
        self.check_finite()
        out: dict[int, dict[str, np.ndarray]] = {}
        for n, per_stat in self._prefix.items():
            out[n] = {}
            for stat, per_layer in per_stat.items():
                if not per_layer[self.layers[0]]:
                    raise TLSpecError("no forward pass reached the hooks; run the model with "
                                      "stats.fwd_hooks before collect()")
                out[n][stat] = np.stack(
                    [torch.cat(per_layer[x]).double().cpu().numpy() for x in self.layers], axis=1)
        return out
