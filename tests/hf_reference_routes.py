"""Independent reference for the SI reproduction routes: the paper's code path, redone in plain HF.

Nothing here imports tl_spec. Each prompt is tokenized as the paper's E11 notebooks did it:
``tokenizer(prompt, padding="max_length", max_length=128, truncation=True)`` with the
tokenizer's own special tokens, pad token and padding side (EOS as pad where the tokenizer has
none, as the notebooks set it); the Hugging Face model runs with *eager* attention, that
attention mask and ``output_attentions=True``; every statistic is a float64 numpy loop over
prompts, layers and heads.

- ``e11_unmasked``: each head's attention averaged over all ``max_length`` query rows (pad rows
  included), normalised, exact zeros dropped, base-2 entropy / log2(entries left) (0 if fewer
  than 2); mean over prompts -> E[layers, heads]; SI = 1 - nanmean(triu(corrcoef(E.T), 1)).
- ``e11_masked``: the same over valid (non-pad) query rows and keys only.
- ``metrics_py``: per layer, 1 - mean over heads and all ``max_length`` rows of the row entropy
  (natural log, ``p * log(clip(p, 1e-10))`` over all keys) / ln(max_length); value = mean over
  layers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["hf_padded_attentions", "reference_route"]


def hf_padded_attentions(
    path: str | Path, prompts: Sequence[str], *, max_length: int = 128,
    padding_side: str | None = None,
) -> tuple[list[list[int]], np.ndarray, list[np.ndarray]]:
    """``(real token ids per prompt, attention_mask [P, n], per layer [P, H, n, n] float64)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if padding_side is not None:
        tok.padding_side = padding_side
    enc = tok(list(prompts), padding="max_length", max_length=max_length, truncation=True,
              return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    output_attentions=True, use_cache=False)
    mask = enc["attention_mask"].numpy().astype(bool)
    ids = [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in
           zip(enc["input_ids"].tolist(), mask)]
    return ids, mask, [a.to(torch.float64).numpy() for a in out.attentions]


def _entropy2(dist: np.ndarray) -> float:
    dist = dist / dist.sum()
    dist = dist[dist != 0]
    if len(dist) < 2:
        return 0.0
    return float(-np.sum(dist * np.log2(dist)) / np.log2(len(dist)))


def _si_from_e(e: np.ndarray) -> float:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        corr = np.corrcoef(e.T)
    vals = [corr[i, j] for i in range(corr.shape[0]) for j in range(i + 1, corr.shape[0])]
    vals = [v for v in vals if not math.isnan(v)]
    return 1.0 - float(np.mean(vals))


def reference_route(mask: np.ndarray, atts: list[np.ndarray], route: str) -> dict[str, Any]:
    """The route's SI from :func:`hf_padded_attentions` output, as a dict of numbers and arrays."""
    n_prompts, n = mask.shape
    n_layers, n_heads = len(atts), atts[0].shape[1]
    if route in ("e11_unmasked", "e11_masked"):
        ent = np.zeros((n_prompts, n_layers, n_heads))
        for p in range(n_prompts):
            rows = mask[p] if route == "e11_masked" else np.ones(n, bool)
            for layer in range(n_layers):
                for h in range(n_heads):
                    a = atts[layer][p, h][rows][:, rows]
                    ent[p, layer, h] = _entropy2(a.mean(axis=0))
        e = ent.mean(axis=0)
        return {"value": _si_from_e(e), "entropies": e, "per_prompt_heads": ent}
    if route == "metrics_py":
        per_prompt_head = np.zeros((n_prompts, n_layers, n_heads))
        for p in range(n_prompts):
            for layer in range(n_layers):
                for h in range(n_heads):
                    a = atts[layer][p, h]
                    row_ent = -(a * np.log(np.clip(a, 1e-10, None))).sum(-1)  # [n] nats
                    per_prompt_head[p, layer, h] = 1.0 - row_ent.mean() / np.log(n)
        per_prompt = per_prompt_head.mean(axis=-1)
        per_layer = per_prompt.mean(axis=0)
        return {"value": float(per_layer.mean()), "per_layer": per_layer,
                "per_prompt": per_prompt, "per_head": per_prompt_head.mean(axis=0)}
    raise ValueError(route)
