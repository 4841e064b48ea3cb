"""Head importance: loss increase on held-out text when one head is ablated (mean or zero).

One clean pass collects the loss and every head's mean output ``z`` over the real tokens of the
data. Then, layer by layer, the batch is repeated once per head and each copy ablates a
different head at ``blocks.{l}.attn.hook_z`` (set to the head's data mean, or to zero), so a
layer's heads cost one forward call, not one per head. On ``HookedTransformer`` the ablated
passes start at layer ``l`` from the clean residual stream (``start_at_layer``).

>>> from tl_spec.experiments.importance import head_importance
>>> imp = head_importance(model, texts)          # doctest: +SKIP
>>> imp.mean_ablation.shape  # [layers, heads], loss increase in nats  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.experiments.run import model_device
from tl_spec.models import can_start_at_layer, model_id, require_pattern_hooks
from tl_spec.records import Result, array, provenance
from tl_spec.tokens import batches, pad_id, tokenize, validate_prompts

__all__ = ["ABLATIONS", "ImportanceResult", "head_importance", "token_losses"]

ABLATIONS: tuple[str, ...] = ("mean", "zero")


@dataclass
class ImportanceResult(Result):
    """Per head ``[layers, heads]``: mean loss increase (nats/token) under each ablation."""

    kind = "head_importance"
    decoders = {"mean_ablation": array, "zero_ablation": array}
    model: str
    clean_loss: float
    mean_ablation: Float[np.ndarray, "n_layers n_heads"] | None
    zero_ablation: Float[np.ndarray, "n_layers n_heads"] | None
    n_tokens: int
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)


def token_losses(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """Per sequence: summed next-token cross-entropy (float64) and number of predicted tokens.

    >>> logits = torch.zeros(1, 3, 4); tokens = torch.tensor([[0, 1, 2]])
    >>> total, n = token_losses(logits, tokens, torch.ones(1, 3))
    >>> round(float(total / n), 6) == round(float(np.log(4)), 6)
    True
    """
    keep = (mask[:, :-1] * mask[:, 1:]).to(torch.float64)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:],
                          reduction="none").to(torch.float64)
    return (nll * keep).sum(-1), keep.sum(-1)


def _check(ablations: Sequence[str], batch_size: int, heads_per_pass: int | None) -> None:
    bad = [a for a in ablations if a not in ABLATIONS]
    if bad or not ablations:
        raise TLSpecError(f"unknown ablation(s) {bad or list(ablations)!r}; choose from {ABLATIONS}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TLSpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    if heads_per_pass is not None and (not isinstance(heads_per_pass, int) or heads_per_pass < 1):
        raise TLSpecError(f"heads_per_pass must be a positive integer or None, got {heads_per_pass!r}")


def head_importance(
    model: Any,
    texts: Sequence[str],
    *,
    ablations: Sequence[str] = ABLATIONS,
    max_length: int = 128,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = False,
) -> ImportanceResult:
    """Loss increase per head under mean and/or zero ablation of its output ``z``.

    ``heads_per_pass`` (default: all heads of a layer) bounds the forward's memory: a call runs
    ``batch_size x heads_per_pass`` sequences. With prefix reuse the clean residual stream of
    every batch and layer is kept (``texts x tokens x layers x d_model`` floats): pass fewer
    texts per call for large models.

    >>> head_importance(model, texts, ablations=("zero",)).zero_ablation  # doctest: +SKIP
    """
    _check(ablations, batch_size, heads_per_pass)
    require_pattern_hooks(model)
    texts = validate_prompts(texts)
    tokenized = tokenize(model, texts, max_length=max_length)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    per_pass = min(heads_per_pass or n_heads, n_heads)
    device = model_device(model)
    plan = list(batches(tokenized, batch_size=batch_size, pad_id=pad_id(model), device=device))
    z_sum: dict[int, torch.Tensor] = {}
    count = torch.zeros((), dtype=torch.float64)
    clean_total, clean_n = 0.0, 0.0

    def collect(layer: int) -> Any:
        def hook(z: torch.Tensor, *, hook: Any = None) -> None:
            valid = current["mask"].to(z.device).to(torch.float64)
            total = torch.einsum("bp,bphd->hd", valid, z.detach().to(torch.float64))
            z_sum[layer] = z_sum.get(layer, 0) + total
        return hook

    current: dict[str, torch.Tensor] = {}
    can_start = can_start_at_layer(model)  # prefix reuse: layers before l are unchanged
    resid: dict[tuple[int, int], torch.Tensor] = {}

    def keep(b: int, layer: int) -> Any:
        def hook(x: torch.Tensor, *, hook: Any = None) -> None:
            resid[(b, layer)] = x.detach()
        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", collect(layer)) for layer in range(n_layers)]
    for b, (_, tokens, mask) in enumerate(plan):
        extra = ([(f"blocks.{layer}.hook_resid_pre", keep(b, layer))
                  for layer in range(1, n_layers)] if can_start else [])
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks + extra):
            current["mask"] = mask
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
            total, n = token_losses(logits, tokens, mask)
            clean_total += float(total.sum())
            clean_n += float(n.sum())
            count += mask.sum().to(torch.float64).cpu()
    if clean_n == 0:
        raise TLSpecError("the texts give no next-token predictions; pass texts of 2+ tokens")
    means = {layer: (z_sum[layer] / count.to(z_sum[layer].device)) for layer in range(n_layers)}
    clean = clean_total / clean_n
    out: dict[str, np.ndarray] = {}
    steps = [(a, layer, h0) for a in ablations for layer in range(n_layers)
             for h0 in range(0, n_heads, per_pass)]
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="ablations", unit="pass")
    for ablation, layer, h0 in steps:
        heads = list(range(h0, min(h0 + per_pass, n_heads)))
        totals = np.zeros(len(heads))

        def ablate(z: torch.Tensor, *, hook: Any = None, heads: list[int] = heads,
                   ablation: str = ablation, layer: int = layer) -> torch.Tensor:
            z = z.clone()
            view = z.view(len(heads), -1, *z.shape[1:])
            for r, h in enumerate(heads):
                view[r, :, :, h] = means[layer][h].to(z.dtype) if ablation == "mean" else 0.0
            return z

        name = f"blocks.{layer}.attn.hook_z"
        with torch.inference_mode(), model.hooks(fwd_hooks=[(name, ablate)]):
            for b, (_, tokens, mask) in enumerate(plan):
                rep = tokens.repeat(len(heads), 1)
                rep_mask = mask.repeat(len(heads), 1)
                ones = torch.ones_like(rep_mask)
                if (b, layer) in resid:
                    x = resid[(b, layer)].repeat(len(heads), 1, 1)
                    logits = model(x, start_at_layer=layer, tokens=rep, attention_mask=ones,
                                   return_type="logits")
                else:
                    logits = model(rep, attention_mask=ones, return_type="logits")
                total, _ = token_losses(logits, rep, rep_mask)
                totals += total.view(len(heads), -1).sum(-1).cpu().numpy()
        out.setdefault(ablation, np.zeros((n_layers, n_heads)))[layer, heads] = totals / clean_n - clean
    settings = dict(ablations=list(ablations), max_length=max_length, batch_size=batch_size,
                    heads_per_pass=per_pass, n_texts=len(texts), n_truncated=tokenized.n_truncated,
                    prefix_reuse=can_start,
                    meaning="loss increase in nats per predicted token; mean ablation replaces a "
                            "head's z by its mean over the real tokens of these texts")
    return ImportanceResult(
        model=model_id(model), clean_loss=float(clean), mean_ablation=out.get("mean"),
        zero_ablation=out.get("zero"), n_tokens=int(clean_n), settings=settings,
        provenance=provenance(model, options=settings),
    )
