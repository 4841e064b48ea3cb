"""Named hook points that keep one batch's per-head features for comparisons across models.

Comparing heads across models needs both models' activations on the same tokens at once, so
:class:`BatchFeatures` keeps, for the current batch only, what the comparison needs and nothing
more: attention patterns (``"pattern"``), each head's residual-stream contribution in
``d_head`` dimensions (``"output"``: ``z_h R_h`` with ``R_h R_h^T = W_O[h] W_O[h]^T``, padding
zeroed) and the residual stream after each block (``"resid"``). The caller reduces them into
running sums and calls :meth:`clear` before the next batch. It follows the
:class:`~tl_spec.hooks.base.HookSet` protocol (``fwd_hooks``, iteration, ``bind``).

>>> feats = BatchFeatures(model, keep=("output",))                  # doctest: +SKIP
>>> with model.hooks(fwd_hooks=[*feats.bind(tokens, mask)]):         # doctest: +SKIP
...     model(tokens, return_type=None)
>>> feats.output[0].shape  # [batch, pos, heads, d_head] for layer 0  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tl_spec.errors import TLSpecError
from tl_spec.hooks.base import HookSet
from tl_spec.metrics.cka import output_factors
from tl_spec.names import HookPoint, hook_name
from tl_spec.tokens import real_tokens

__all__ = ["FEATURES", "BatchFeatures"]

FEATURES: tuple[str, ...] = ("pattern", "output", "resid")
#: The hook point each feature is read from.
_POINT: dict[str, HookPoint] = {"pattern": "pattern", "output": "z", "resid": "resid_post"}


class BatchFeatures(HookSet):
    """Keep one batch's ``pattern`` / ``output`` / ``resid`` features per layer (see module doc).

    ``output`` and ``resid`` are cast to ``dtype`` with padded positions set to zero (so sums
    over positions are sums over real tokens; :meth:`bind` or ``attention_mask`` gives the
    batch's real tokens); ``pattern`` is kept as the model produced it.

    >>> feats = BatchFeatures(model, keep=("pattern", "resid"))  # doctest: +SKIP
    >>> [name for name, _ in feats][:1]                           # doctest: +SKIP
    ['blocks.0.attn.hook_pattern']
    """

    def __init__(self, model: Any, *, keep: Sequence[str], dtype: torch.dtype = torch.float64) -> None:
        unknown = [k for k in keep if k not in FEATURES]
        if unknown or not keep:
            raise TLSpecError(f"unknown feature(s) {unknown or keep!r}; choose from {FEATURES}")
        self.keep = tuple(keep)
        self.dtype = dtype
        self.n_layers = int(model.cfg.n_layers)
        self.tokens: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.factors: torch.Tensor | None = None
        if "output" in self.keep:
            with torch.no_grad():
                w_o = model.W_O.detach().to(torch.float64)  # [layers, heads, d_head, d_model]
                self.factors = output_factors(w_o).to(dtype)
        self.pattern: dict[int, torch.Tensor] = {}
        self.output: dict[int, torch.Tensor] = {}
        self.resid: dict[int, torch.Tensor] = {}

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., None]]]:
        """``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``."""
        return [(hook_name(_POINT[k], layer), self._make_hook(k, layer))
                for k in self.keep for layer in range(self.n_layers)]

    def _make_hook(self, kind: str, layer: int) -> Callable[..., None]:
        def hook(x: torch.Tensor, *, hook: Any = None) -> None:
            self._store(kind, layer, x)
            return None

        hook.__name__ = f"tl_spec_features_{kind}_L{layer}"
        return hook

    @torch.no_grad()
    def _store(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "pattern":
            self.pattern[layer] = x.detach().clone()
            return
        valid = None if self.attention_mask is None else real_tokens(
            self.attention_mask, x.shape[0], x.shape[1], x.device, owner="features")
        if kind == "output":
            assert self.factors is not None
            r = self.factors[layer].to(x.device)
            y = torch.einsum("bphd,hde->bphe", x.detach().to(self.dtype), r)
            if valid is not None:
                y = torch.where(valid[:, :, None, None], y, 0.0)
            self.output[layer] = y
        else:
            y = x.detach().to(self.dtype)
            if valid is not None:
                y = torch.where(valid[:, :, None], y, 0.0)
            self.resid[layer] = y

    @torch.no_grad()
    def nonfinite_rows(self) -> list[int]:
        """Batch rows (prompts) whose kept features hold NaN or Inf (padding is zeroed, so only
        real tokens count for ``output`` / ``resid``).

        >>> feats.nonfinite_rows()  # after a forward pass  # doctest: +SKIP
        []
        """
        bad: torch.Tensor | None = None
        for store in (self.pattern, self.output, self.resid):
            for x in store.values():
                rows = ~torch.isfinite(x).flatten(1).all(1)
                bad = rows if bad is None else bad | rows.to(bad.device)
        return [] if bad is None else torch.nonzero(bad).flatten().tolist()

    def clear(self) -> None:
        """Drop the batch's features (call after reducing them)."""
        self.pattern, self.output, self.resid = {}, {}, {}
