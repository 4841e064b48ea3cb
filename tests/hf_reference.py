"""Independent reference for the three Specialization Index definitions (GUIDE section 1).

Nothing here imports tl_spec: attention comes from Hugging Face *eager* attention
(``output_attentions=True``), one prompt at a time, no padding, and every statistic is computed
in float64 with plain numpy loops over prompts, layers and heads. The token ids are the ones
tl_spec reports in ``SIResult.tokens`` so both sides see the same input.

Window semantics (checked empirically by ``tests/test_si_vs_hf.py::test_hf_window_semantics``):
on a sliding-window layer with window ``w`` query ``q`` sees key ``k`` iff ``0 <= q - k < w``.
Gemma-2 names each layer's kind in ``config.layer_types``; Mistral applies ``sliding_window`` to
every layer; Qwen2 only when ``use_sliding_window`` is true.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "hf_attentions",
    "layer_windows",
    "load_hf",
    "reference_si",
    "visible_mask",
]


def load_hf(path: str | Path) -> Any:
    """The checkpoint as a float32 Hugging Face causal LM with eager attention, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    return model


def hf_attentions(model: Any, ids: Sequence[int]) -> list[np.ndarray]:
    """Per layer, the [n_heads, n, n] eager attention pattern of one unpadded prompt, float64."""
    x = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=x, output_attentions=True, use_cache=False)
    return [a[0].detach().to(torch.float64).cpu().numpy() for a in out.attentions]


def layer_windows(config: Any) -> list[int | None]:
    """Sliding-window size of each layer (None for global layers), read from the HF config."""
    n_layers = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None:
        return [None] * n_layers
    if layer_types is not None:
        return [window if t == "sliding_attention" else None for t in layer_types]
    if getattr(config, "use_sliding_window", True) is False:
        return [None] * n_layers
    return [window] * n_layers


def visible_mask(n: int, window: int | None) -> np.ndarray:
    """[n, n] bool: entries a query can attend to (k <= q, and q - k < window on window layers)."""
    m = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for k in range(n):
            m[q, k] = k <= q and (window is None or q - k < window)
    return m


def _upper_nanmean(corr: np.ndarray) -> float:
    vals = [corr[i, j] for i in range(corr.shape[0]) for j in range(i + 1, corr.shape[0])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _other_heads_mean(corr: np.ndarray) -> np.ndarray:
    n = corr.shape[0]
    out = np.full(n, np.nan)
    for h in range(n):
        vals = [corr[h, g] for g in range(n) if g != h and not math.isnan(corr[h, g])]
        if vals:
            out[h] = float(np.mean(vals))
    return out


def _corrcoef(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.corrcoef(x)


def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _pattern_per_prompt(atts: list[list[np.ndarray]], windows: list[int | None], region: str):
    n_prompts, n_layers = len(atts), len(atts[0])
    n_heads = atts[0][0].shape[0]
    per_prompt = np.full((n_prompts, n_layers), np.nan)
    head_corr = np.full((n_prompts, n_layers, n_heads), np.nan)
    undefined = 0
    for p in range(n_prompts):
        for layer in range(n_layers):
            a = atts[p][layer]
            n = a.shape[-1]
            cells = visible_mask(n, windows[layer]) if region == "lower" else np.ones((n, n), bool)
            x = np.stack([a[h][cells] for h in range(n_heads)])
            undefined += sum(int(np.all(x[h] == x[h][0])) for h in range(n_heads))
            corr = _corrcoef(x)
            per_prompt[p, layer] = 1.0 - _upper_nanmean(corr)
            head_corr[p, layer] = _other_heads_mean(corr)
    hc = _nanmean(head_corr, axis=0)
    return {
        "per_prompt": per_prompt,
        "per_layer": _nanmean(per_prompt, axis=0),
        "head_correlation": hc,
        "per_head": 1.0 - hc,
        "undefined_heads": undefined,
    }


def _pattern_mean(atts: list[list[np.ndarray]], windows: list[int | None], region: str):
    n_prompts, n_layers = len(atts), len(atts[0])
    n_heads = atts[0][0].shape[0]
    size = max(atts[p][0].shape[-1] for p in range(n_prompts))
    per_layer = np.full(n_layers, np.nan)
    head_corr = np.full((n_layers, n_heads), np.nan)
    undefined = 0
    for layer in range(n_layers):
        total = np.zeros((n_heads, size, size))
        count = np.zeros((size, size))
        for p in range(n_prompts):
            a = atts[p][layer]
            n = a.shape[-1]
            total[:, :n, :n] += a
            count[:n, :n] += 1
        have = count > 0
        mean = np.where(have, total / np.maximum(count, 1), 0.0)
        cells = have & visible_mask(size, windows[layer]) if region == "lower" else have
        x = np.stack([mean[h][cells] for h in range(n_heads)])
        undefined += sum(int(np.all(x[h] == x[h][0])) for h in range(n_heads))
        corr = _corrcoef(x)
        per_layer[layer] = 1.0 - _upper_nanmean(corr)
        head_corr[layer] = _other_heads_mean(corr)
    return {
        "per_prompt": None,
        "per_layer": per_layer,
        "head_correlation": head_corr,
        "per_head": 1.0 - head_corr,
        "undefined_heads": undefined,
    }


def _entropy_profile(atts: list[list[np.ndarray]]):
    n_prompts, n_layers = len(atts), len(atts[0])
    n_heads = atts[0][0].shape[0]
    ent = np.zeros((n_prompts, n_layers, n_heads))
    for p in range(n_prompts):
        for layer in range(n_layers):
            for h in range(n_heads):
                dist = atts[p][layer][h].mean(axis=0)  # mean over all n query rows -> [n keys]
                dist = dist / dist.sum()
                dist = dist[dist != 0]
                if len(dist) < 2:
                    ent[p, layer, h] = 0.0
                else:
                    ent[p, layer, h] = -np.sum(dist * np.log2(dist)) / np.log2(len(dist))
    e = ent.mean(axis=0)
    corr = _corrcoef(e.T)  # heads x heads over layers
    return {
        "value": 1.0 - _upper_nanmean(corr),
        "per_prompt": None,
        "per_layer": None,
        "entropies": e,
        "per_head": e,
        "head_correlation": None,
        "undefined_heads": None,
    }


def _normalized_entropy(atts: list[list[np.ndarray]]):
    n_prompts, n_layers = len(atts), len(atts[0])
    n_heads = atts[0][0].shape[0]
    per_prompt = np.zeros((n_prompts, n_layers))
    per_prompt_head = np.zeros((n_prompts, n_layers, n_heads))
    for p in range(n_prompts):
        for layer in range(n_layers):
            a = atts[p][layer]
            n = a.shape[-1]
            row_ent = -(a * np.log(np.clip(a, 1e-10, None))).sum(-1)  # [H, n] nats
            per_prompt[p, layer] = 1.0 - row_ent.mean() / np.log(n)
            for h in range(n_heads):
                per_prompt_head[p, layer, h] = 1.0 - row_ent[h].mean() / np.log(n)
    return {
        "per_prompt": per_prompt,
        "per_layer": per_prompt.mean(axis=0),
        "per_head": per_prompt_head.mean(axis=0),
        "head_correlation": None,
        "undefined_heads": None,
    }


def reference_si(
    atts: list[list[np.ndarray]],
    windows: list[int | None],
    *,
    method: str,
    region: str = "lower",
    aggregate: str = "prompt",
) -> dict[str, Any]:
    """SI from per-prompt HF attentions (``atts[prompt][layer]`` is [H, n, n]) as a dict of arrays.

    Keys: value, per_layer, per_head, head_correlation, entropies, per_prompt, undefined_heads
    (None where a definition has no such output).
    """
    if method == "pattern":
        if aggregate == "prompt":
            out = _pattern_per_prompt(atts, windows, region)
        elif aggregate == "mean_pattern":
            out = _pattern_mean(atts, windows, region)
        else:
            raise ValueError(aggregate)
        out["value"] = float(np.mean(out["per_layer"]))
        out["entropies"] = None
        return out
    if method == "entropy_profile":
        return _entropy_profile(atts)
    if method == "normalized_entropy":
        out = _normalized_entropy(atts)
        out["value"] = float(np.mean(out["per_layer"]))
        out["entropies"] = None
        return out
    raise ValueError(method)
