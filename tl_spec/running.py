"""Run a model over tokenized prompts in padded batches with hooks, removing them whatever happens.

The shared model-running loop of every experiment (and of hook objects that measure the model
themselves, such as :func:`tl_spec.hooks.variants.static_patterns`): length-bucketed batches,
attention masks, no gradients, hooks attached through TransformerLens' own ``hooks()`` context
manager (whose ``finally`` removes them, also when the forward raises). It sits just above
:mod:`tl_spec.models` and :mod:`tl_spec.tokens` and below the hooks, so both hooks and experiments
can use it (``tl_spec.experiments.run`` re-exports it).

>>> order = run_batches(model, tokenized, stats, batch_size=8)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from tl_spec.tokens import PaddingSide, Tokenized, batches, pad_id

__all__ = ["model_device", "run_batches"]


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a parameterless look-alike)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device(getattr(model.cfg, "device", None) or "cpu")


def run_batches(
    model: Any,
    tokenized: Tokenized,
    stats: Any,
    *,
    batch_size: int,
    padding_side: PaddingSide = "right",
    progress: bool = False,
) -> list[int]:
    """Forward every prompt once with ``stats.fwd_hooks``; return the prompt order that was run.

    ``stats.attention_mask`` is set to each batch's mask before its forward pass. With right
    padding the model itself gets no mask: in a causal model real tokens never see the pads that
    follow them, and unmasked pads cannot produce the fully masked rows that some attention
    implementations turn into NaN (which then leaks into real rows as 0 x NaN).
    """
    device = model_device(model)
    order: list[int] = []
    chunks = batches(
        tokenized,
        batch_size=batch_size,
        pad_id=pad_id(model),
        padding_side=padding_side,
        device=device,
    )
    if progress:
        from tqdm.auto import tqdm

        n_batches = -(-len(tokenized.ids) // batch_size)
        chunks = tqdm(chunks, total=n_batches, desc="forward", unit="batch", leave=False)
    with torch.inference_mode(), model.hooks(fwd_hooks=stats.fwd_hooks):
        for idx, tokens, mask in chunks:
            stats.attention_mask = mask
            model_mask = torch.ones_like(mask) if padding_side == "right" else mask
            try:
                model(tokens, attention_mask=model_mask, return_type=None)
            finally:
                stats.attention_mask = None
            order.extend(idx)
    return order
