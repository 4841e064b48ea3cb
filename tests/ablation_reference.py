"""Reference for head importance: zero-ablate one head, one text at a time, no batching.

>>> zero_ablation_loss_change(model, ["Some text."], layer=1, head=5)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["zero_ablation_loss_change"]


def zero_ablation_loss_change(model: Any, texts: Sequence[str], *, layer: int, head: int,
                              clean_loss: float) -> float:
    """Mean next-token loss with head ``head`` of ``layer`` zeroed at ``hook_z``, minus clean."""
    from tl_spec.experiments.importance import token_losses

    def ablate(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    total = count = 0.0
    for text in texts:
        tokens = model.to_tokens(text)
        with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]):
            logits = model(tokens, return_type="logits")
        t, n = token_losses(logits, tokens, torch.ones_like(tokens))
        total, count = total + float(t.sum()), count + float(n.sum())
    return total / count - clean_loss
