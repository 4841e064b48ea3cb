"""Named hook points that reduce each layer's attention pattern to per-prompt statistics.

:class:`PatternStats` attaches to ``blocks.{l}.attn.hook_pattern`` through the ordinary
TransformerLens hook API, so it works in your own ``run_with_hooks(..., fwd_hooks=...)`` or
``with model.hooks(...)`` code. Each hook reduces its layer's ``[batch, head, query, key]``
pattern at once (masks for padding, causality and sliding windows applied) and keeps only small
per-prompt tensors; no activation cache is ever held. It also checks every forward pass for
non-finite values, whatever the backend: a real token's attention row must be finite and carry
weight (``HookedTransformer`` turns NaN patterns into zero rows before any hook sees them), and
the residual stream after each measured layer (``blocks.{l}.hook_resid_post``; for the model's
last layer its attention output) must be finite (with ``rows="all"``, every position's, pad
rows included, since they are measured); :meth:`PatternStats.collect` raises a :class:`~tl_spec.errors.TLSpecError` naming the layer.

>>> stats = PatternStats(model, stats=("correlation", "column_entropy"))  # doctest: +SKIP
>>> model.run_with_hooks(tokens, attention_mask=mask,                     # doctest: +SKIP
...                      fwd_hooks=list(stats.bind(tokens, mask)))
>>> stats.collect()["correlation"].shape  # [prompts, layers, heads, heads]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.hooks.base import HookSet
from tl_spec.metrics.patterns import (
    Region,
    check_region,
    column_entropy,
    entry_mask,
    head_correlations,
    row_entropy,
)
from tl_spec.metrics.routes import eager_padding_scores
from tl_spec.models import layer_windows, require_pattern_hooks
from tl_spec.names import hook_name
from tl_spec.tokens import real_spans, real_tokens

__all__ = ["ROWS", "STATS", "PatternStats", "Rows", "Stat", "pattern_hook_name"]

Stat = Literal["correlation", "column_entropy", "row_entropy", "mean_pattern"]
Rows = Literal["valid", "all"]
ROWS: tuple[str, ...] = ("valid", "all")
STATS: tuple[str, ...] = ("correlation", "column_entropy", "row_entropy", "mean_pattern")

def _non_finite_parameters(model: Any, limit: int = 3) -> list[str]:
    """Names of up to ``limit`` parameters of ``model`` holding NaN or Inf (empty if none)."""
    named = getattr(model, "named_parameters", None)
    if not callable(named):
        return []
    bad = []
    with torch.no_grad():
        for name, param in named():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                bad.append(name.replace("._original_component", ""))
                if len(bad) == limit:
                    break
    return bad


def pattern_hook_name(layer: int) -> str:
    """The TransformerLens hook name of layer ``layer``'s attention pattern.

    >>> pattern_hook_name(3)
    'blocks.3.attn.hook_pattern'
    """
    return hook_name("pattern", layer)


class PatternStats(HookSet):
    """Reduce attention patterns inside hooks, batch after batch, into per-prompt statistics.

    ``stats`` picks what to keep per prompt and layer: ``"correlation"`` (head x head Pearson
    correlation over the ``region``'s entries), ``"column_entropy"`` (normalized entropy of the
    mean attention row, as in the E11 notebooks), ``"row_entropy"`` (mean row entropy in nats),
    ``"mean_pattern"`` (running sum of patterns aligned at each prompt's first token, for the
    paper's batch-averaged variant). Before each forward pass, :meth:`bind` the batch's tokens and
    attention mask (or set :attr:`attention_mask`; ``None`` means every token is real); call
    :meth:`collect` at the end. A :class:`~tl_spec.hooks.base.HookSet`: iterating gives the
    ``(name, fn)`` pairs, so it composes with other hook objects.

    Two switches serve the reproduction routes of the paper's code (``SIOptions.route``):
    ``rows="all"`` averages every query row and key into the entropies, pad rows included (the
    unmasked E11 route and ``src/metrics.py``; the finiteness checks then cover every position,
    since every position is measured); ``eager_padding=True`` adds one ``hook_attn_scores`` hook
    per layer that applies the batch's padding mask as Hugging Face eager attention does
    (:func:`~tl_spec.metrics.routes.eager_padding_scores`), for a model run without a mask on
    a padded batch (so positions count from 0 on every backend, as Hugging Face counts them).

    >>> stats = PatternStats(model, stats=("row_entropy",))  # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=[*stats.bind(tokens, mask)]):  # doctest: +SKIP
    ...     model(tokens, attention_mask=mask)
    """

    def __init__(
        self,
        model: Any,
        *,
        stats: Sequence[str] = ("correlation",),
        region: Region = "lower",
        layers: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
        max_positions: int | None = None,
        rows: Rows = "valid",
        eager_padding: bool = False,
    ) -> None:
        require_pattern_hooks(model)
        if rows not in ROWS:
            raise TLSpecError(f"rows must be 'valid' (real tokens only) or 'all' (pad rows "
                              f"included, the unmasked routes), got {rows!r}")
        if rows == "all" and ("correlation" in stats or "mean_pattern" in stats):
            raise TLSpecError("rows='all' applies to the entropies (column_entropy, row_entropy); "
                              "the pattern statistics always use real tokens only")
        unknown = [s for s in stats if s not in STATS]
        if unknown or not stats:
            raise TLSpecError(f"unknown statistic(s) {unknown or stats!r}; choose from {STATS}")
        check_region(region)
        if dtype not in (torch.float32, torch.float64):
            raise TLSpecError(f"statistics need float32 or float64, got {dtype}")
        n_layers = int(model.cfg.n_layers)
        self.layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        bad = [x for x in self.layers if not 0 <= x < n_layers]
        if bad:
            raise TLSpecError(f"layers {bad} out of range for a model with {n_layers} layers")
        self.stats = tuple(stats)
        self.region: Region = region
        self.dtype = dtype
        self.windows = layer_windows(model)
        self.attention_mask: torch.Tensor | None = None
        self.n_heads = int(model.cfg.n_heads)
        self.max_positions = max_positions
        self.rows: Rows = rows
        self.eager_padding = bool(eager_padding)
        self._per_batch: dict[str, dict[int, list[torch.Tensor]]] = {
            s: {layer: [] for layer in self.layers} for s in self.stats if s != "mean_pattern"
        }
        self._model = model  # to name non-finite weights when a forward pass went wrong
        self._bad_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._bad_resid: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        hook_dict = getattr(model, "hook_dict", {})
        # after each layer the residual stream; after the model's last layer only the attention
        # output (its MLP cannot change a pattern, and SI forwards stop before it)
        last = int(model.cfg.n_layers) - 1
        self._checks = [(x, hook_name("attn_out" if x == last else "resid_post", x))
                        for x in self.layers]
        self._checks = [(x, name) for x, name in self._checks if name in hook_dict]
        self._sum: dict[int, torch.Tensor] = {}
        self._count: torch.Tensor | None = None

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., None]]]:
        """``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``.

        One pattern hook per layer, then one check per layer that records whether the real
        tokens' residual stream stayed finite (``hook_resid_post``; ``hook_attn_out`` of the
        model's last layer); the checks change nothing.
        """
        hooks = []
        if self.eager_padding:
            hooks += [(hook_name("attn_scores", layer), self._make_score_hook(layer))
                      for layer in self.layers]
        hooks += [(pattern_hook_name(layer), self._make_hook(layer)) for layer in self.layers]
        hooks += [(name, self._make_resid_hook(layer)) for layer, name in self._checks]
        return hooks

    def _measured(self, batch: int, n: int, device: torch.device) -> torch.Tensor:
        """Positions whose rows the statistics use: real tokens, or every one with rows='all'."""
        valid = real_tokens(self.attention_mask, batch, n, device, owner="stats")
        return torch.ones_like(valid) if self.rows == "all" else valid

    def _make_score_hook(self, layer: int) -> Callable[..., torch.Tensor]:
        def hook(scores: torch.Tensor, *, hook: Any = None) -> torch.Tensor:
            batch, n = scores.shape[0], scores.shape[-1]
            valid = real_tokens(self.attention_mask, batch, n, scores.device, owner="stats")
            return eager_padding_scores(scores, valid, window=self.windows[layer])

        hook.__name__ = f"tl_spec_eager_padding_L{layer}"
        return hook

    def _make_resid_hook(self, layer: int) -> Callable[..., None]:
        def hook(resid: torch.Tensor, *, hook: Any = None) -> None:
            batch, n = resid.shape[:2]
            token_valid = self._measured(batch, n, resid.device)
            # x * 0 is 0 for finite x and NaN for NaN/Inf, and a sum of zeros cannot overflow:
            # exact, and a tenth of the cost of isfinite(...).all(-1)
            broken = (resid * 0).sum(-1).isnan()
            self._bad_resid[layer].append((token_valid & broken).any())
            return None

        hook.__name__ = f"tl_spec_finite_resid_L{layer}"
        return hook

    def _make_hook(self, layer: int) -> Callable[..., None]:
        def hook(pattern: torch.Tensor, *, hook: Any = None) -> None:
            self.reduce(layer, pattern)
            return None

        hook.__name__ = f"tl_spec_pattern_stats_L{layer}"
        return hook

    def _check_rows(self, layer: int, pattern: torch.Tensor, measured: torch.Tensor) -> None:
        """Note whether any measured query row of ``pattern`` is broken (see :meth:`collect`)."""
        row_sums = pattern.sum(-1)
        # a real query attends at least to itself: a NaN/Inf row, or an exactly zero one (what
        # HookedTransformer makes of NaN scores; attention sinks leave rows below 1, not at 0),
        # means the forward pass went wrong
        broken = ~torch.isfinite(row_sums) | (row_sums == 0)
        self._bad_rows[layer].append((measured[:, None, :] & broken).any())

    @torch.no_grad()
    def reduce(
        self, layer: int, pattern: Float[torch.Tensor, "batch n_heads query_pos key_pos"]
    ) -> None:
        """Reduce one layer's pattern for the current batch (what each hook calls)."""
        batch, _, n_q, _ = pattern.shape
        token_valid = real_tokens(self.attention_mask, batch, n_q, pattern.device, owner="stats")
        measured = self._measured(batch, n_q, pattern.device)
        self._check_rows(layer, pattern, measured)
        store = self._per_batch
        if "correlation" in store:
            valid = entry_mask(token_valid, region=self.region, window=self.windows[layer])
            store["correlation"][layer].append(head_correlations(pattern, valid, dtype=self.dtype))
        if "column_entropy" in store:
            ent = column_entropy(pattern, measured, measured, dtype=self.dtype)
            store["column_entropy"][layer].append(ent)
        if "row_entropy" in store:
            store["row_entropy"][layer].append(
                row_entropy(pattern, measured, measured, dtype=self.dtype)
            )
        if "mean_pattern" in self.stats:
            self._accumulate(layer, pattern, token_valid)

    def _accumulate(self, layer: int, pattern: torch.Tensor, token_valid: torch.Tensor) -> None:
        """Add each prompt's valid pattern block, aligned at its first real token, to a canvas."""
        size = self.max_positions or pattern.shape[-1]
        if layer not in self._sum:
            self._sum[layer] = pattern.new_zeros((self.n_heads, size, size), dtype=self.dtype)
        count = pattern.new_zeros((size, size), dtype=self.dtype)
        canvas = self._sum[layer]
        if canvas.shape[-1] < pattern.shape[-1]:
            raise TLSpecError(
                f"a prompt of {pattern.shape[-1]} tokens exceeds max_positions={size} of the "
                "mean-pattern canvas; raise max_positions"
            )
        for b, (start, n) in enumerate(real_spans(token_valid)):
            block = pattern[b, :, start : start + n, start : start + n].to(self.dtype)
            canvas[:, :n, :n] += torch.nan_to_num(block)
            count[:n, :n] += 1
        if layer == self.layers[0]:
            self._count = count if self._count is None else self._count + count

    def check_finite(self) -> None:
        """Raise if any forward pass so far produced non-finite values on real tokens.

        :meth:`collect` calls it first. The message names the first broken layer, what broke
        (attention rows, residual stream) and any non-finite weights of the model.
        """
        rows = [x for x in self.layers if any(bool(f) for f in self._bad_rows[x])]
        resid = [x for x in self.layers if any(bool(f) for f in self._bad_resid[x])]
        if not rows and not resid:
            return
        first = min(rows + resid)
        where = []
        if rows:
            which = "measured tokens (pad rows included)" if self.rows == "all" else "real tokens"
            where.append(f"attention rows of {which} that are NaN/Inf or empty in layers {rows}")
        if resid:
            where.append(f"a non-finite residual stream (hook_resid_post, or hook_attn_out of the "
                         f"last layer) in layers {resid}")
        weights = _non_finite_parameters(self._model)
        cause = (f"the model's weights hold non-finite values ({', '.join(weights)}): repair or "
                 "reload the checkpoint" if weights else
                 "the weights are finite, so the forward pass overflowed or divided by zero (e.g. "
                 "float16/bfloat16 overflow, or fully masked padded rows with "
                 "padding_side='left'): use dtype='float32', padding_side='right' or batch_size=1")
        raise TLSpecError(
            f"the model's forward pass produced non-finite values (NaN/Inf) starting at layer "
            f"{first}: {'; '.join(where)}. Attention statistics of such a pass are meaningless, "
            f"so nothing was measured; {cause}."
        )

    def collect(self) -> dict[str, np.ndarray]:
        """Per-prompt statistics in the order prompts were run: ``{stat: [prompts, layers, ...]}``.

        ``"correlation"`` is ``[prompts, layers, heads, heads]``; entropies ``[prompts, layers,
        heads]``; ``"mean_pattern"`` gives ``"mean_pattern_sum"`` ``[layers, heads, n, n]`` and
        ``"mean_pattern_count"`` ``[n, n]``.
        """
        self.check_finite()
        out: dict[str, np.ndarray] = {}
        for stat, per_layer in self._per_batch.items():
            if not per_layer[self.layers[0]]:
                raise TLSpecError(
                    "no forward pass reached the hooks; run the model with stats.fwd_hooks "
                    "before collect()"
                )
            out[stat] = np.stack(
                [torch.cat(per_layer[x]).double().cpu().numpy() for x in self.layers], axis=1
            )
        if "mean_pattern" in self.stats:
            if self._count is None:
                raise TLSpecError("no forward pass reached the hooks; nothing to collect")
            out["mean_pattern_sum"] = np.stack(
                [self._sum[x].double().cpu().numpy() for x in self.layers]
            )
            out["mean_pattern_count"] = self._count.double().cpu().numpy()
        return out
