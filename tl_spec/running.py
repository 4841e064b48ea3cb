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

import re
from typing import Any

import torch

from tl_spec.tokens import PaddingSide, Tokenized, batches, pad_id

__all__ = ["model_device", "run_batches", "stop_hook"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class _Stop(Exception):
    """Raised by the stop hook once every hook the statistics need has fired."""


def stop_hook(model: Any, names: list[Any]) -> str | None:
    """The hook point after which no hook in ``names`` can fire: where the forward may stop.

    Every name must be a ``blocks.{l}.…`` hook (else ``None``: something later is needed). With
    ``L`` the highest layer named: ``blocks.{L}.hook_attn_out`` when every layer-``L`` hook is
    inside the attention or is its output (``blocks.{L}.attn.…``, ``blocks.{L}.hook_attn_out``;
    the rest of the block, ``ln_final`` and the unembedding are then skipped), else
    ``blocks.{L}.hook_resid_post``. ``None`` if the model has no such hook point.

    >>> class M: hook_dict = {"blocks.1.hook_attn_out": 0, "blocks.1.hook_resid_post": 0}
    >>> stop_hook(M(), ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    'blocks.1.hook_attn_out'
    >>> stop_hook(M(), ["blocks.1.hook_mlp_out"]), stop_hook(M(), ["ln_final.hook_normalized"])
    ('blocks.1.hook_resid_post', None)
    """
    parsed = [_BLOCK.match(n) if isinstance(n, str) else None for n in names]
    if not parsed or any(m is None for m in parsed):
        return None
    last = max(int(m.group(1)) for m in parsed)  # type: ignore[union-attr]
    rests = [m.group(2) for m in parsed if int(m.group(1)) == last]  # type: ignore[union-attr]
    inside = all((r.startswith("attn.") and r != "attn.hook_out") or r == "hook_attn_out"
                 for r in rests)
    name = f"blocks.{last}." + ("hook_attn_out" if inside else "hook_resid_post")
    return name if name in getattr(model, "hook_dict", {}) else None


def _raise_stop(x: torch.Tensor, hook: Any = None) -> None:
    raise _Stop


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
    stop_early: bool = True,
) -> list[int]:
    """Forward every prompt once with ``stats.fwd_hooks``; return the prompt order that was run.

    ``stats.attention_mask`` is set to each batch's mask before its forward pass. With right
    padding the model itself gets no mask: in a causal model real tokens never see the pads that
    follow them, and unmasked pads cannot produce the fully masked rows that some attention
    implementations turn into NaN (which then leaks into real rows as 0 x NaN).

    The forward stops right after the last hook in ``stats.fwd_hooks`` (:func:`stop_hook`; the
    output is discarded anyway): for attention statistics, after the last layer's attention,
    skipping its MLP, ``ln_final`` and the unembedding. Nothing a hook sees changes;
    ``stop_early=False`` runs every forward to the end.
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
    hooks = list(stats.fwd_hooks)
    stop = stop_hook(model, [name for name, _ in hooks]) if stop_early else None
    if stop is not None:  # registered last: at a shared hook point it runs after the others
        hooks.append((stop, _raise_stop))
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        for idx, tokens, mask in chunks:
            stats.attention_mask = mask
            model_mask = torch.ones_like(mask) if padding_side == "right" else mask
            try:
                model(tokens, attention_mask=model_mask, return_type=None)
            except _Stop:
                pass
            finally:
                stats.attention_mask = None
            order.extend(idx)
    return order
