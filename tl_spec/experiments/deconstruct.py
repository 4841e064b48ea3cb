"""Deconstructing attention at inference (seed 003): loss and SI under attention variants.

For every variant (``tl_spec.hooks.variants``) and placement (``"all"`` layers, ``"hybrid:k"``
keeping standard attention in every k-th layer, ``"single"`` = one layer at a time, or explicit
layer lists) the texts' held-out loss is measured against the unmodified model, with a paired
bootstrap interval over texts, together with the SI (``pattern``) of the layers that keep
standard attention: does specialization redistribute when other layers lose theirs?

Batches run once clean (recording each text's loss, SI and the residual stream where later
conditions start) and then once per condition; on ``HookedTransformer`` a condition whose first
changed layer is ``f`` starts at ``f`` from the clean residual stream (prefix reuse).

>>> from tl_spec import deconstruct
>>> d = deconstruct(model, texts, variants=("uniform", "form"))   # doctest: +SKIP
>>> print(d.table())                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.importance import token_losses
from tl_spec.experiments.run import model_device
from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.variants import FORMS, VARIANTS, AttentionVariant, resolve_variant_layers, static_patterns
from tl_spec.metrics.specialization import si_from_correlations
from tl_spec.models import can_start_at_layer, model_id, require_pattern_hooks
from tl_spec.records import Result, array, provenance
from tl_spec.stats import interval_records, paired_bootstrap
from tl_spec.tokens import pad_batch, pad_id, tokenize, validate_prompts

__all__ = ["DeconstructResult", "deconstruct", "expand_placements"]


def expand_placements(placements: Sequence[Any], n_layers: int) -> list[tuple[str, list[int]]]:
    """``(label, variant layers)`` per condition; ``"single"`` becomes one condition per layer.

    >>> expand_placements(["all", "hybrid:2", "single"], 2)
    [('all', [0, 1]), ('hybrid:2', [0]), ('single:0', [0]), ('single:1', [1])]
    """
    out: list[tuple[str, list[int]]] = []
    for p in placements:
        if p == "single":
            out += [(f"single:{layer}", [layer]) for layer in range(n_layers)]
        else:
            layers = resolve_variant_layers(p, n_layers)
            if not layers:
                raise TLSpecError(f"placement {p!r} changes no layer; drop it")
            out.append((p if isinstance(p, str) else ",".join(map(str, layers)), layers))
    return out



@dataclass
class DeconstructResult(Result):
    """One row per (variant, placement): loss change [interval], perplexity ratio, kept-layer SI.

    ``delta_loss`` is the mean over texts of each text's change in mean loss (nats/token), the
    quantity the interval is for; ``ppl_ratio = exp(delta_loss)``; ``loss`` / ``ppl`` pool all
    tokens of all texts.
    """

    kind = "deconstruct"
    decoders = {"rows": interval_records, "clean_si": array, "clean_text_loss": array}
    model: str
    clean_loss: float
    clean_ppl: float
    clean_si: Any
    clean_text_loss: Any
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def to_frame(self) -> Any:
        """Tidy table, one row per condition (pandas)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "interval"}
                             | {"ci_low": r["interval"].low, "ci_high": r["interval"].high}
                             for r in self.rows])

    def table(self) -> str:
        """Text table of every condition."""
        lines = [f"clean loss {self.clean_loss:.4f} (ppl {self.clean_ppl:.2f}), "
                 f"{self.settings['n_texts']} texts",
                 f"{'variant':<12} {'placement':<10} {'Δloss':>8} {'95% CI':>19} {'ppl x':>7} "
                 f"{'SI kept':>8} {'ΔSI kept':>9}"]
        for r in self.rows:
            ci = r["interval"]
            kept = "" if r["si_kept"] is None else f"{r['si_kept']:8.4f} {r['delta_si_kept']:+9.4f}"
            lines.append(f"{r['variant']:<12} {r['placement']:<10} {r['delta_loss']:+8.4f} "
                         f"[{ci.low:+8.4f},{ci.high:+8.4f}] {r['ppl_ratio']:7.3f} {kept}")
        return "\n".join(lines)


def _check(variants: Sequence[str], form: str, n_resamples: int) -> None:
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise TLSpecError(f"unknown attention variant(s) {bad or list(variants)!r}; choose from "
                          f"{', '.join(VARIANTS)}")
    if form not in FORMS:
        raise TLSpecError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise TLSpecError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")


def deconstruct(
    model: Any,
    texts: Sequence[str],
    *,
    variants: Sequence[str] = VARIANTS,
    placements: Sequence[Any] = ("all", "hybrid:2", "single"),
    form: str = "relu",
    source_layer: int = 0,
    reference_texts: Sequence[str] | None = None,
    max_length: int = 128,
    batch_size: int = 8,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: bool = False,
) -> DeconstructResult:
    """Loss and kept-layer SI under every variant x placement (see the module doc).

    ``reference_texts`` (for ``"static"``) default to 32 held-out documents of the zoo corpus.

    >>> deconstruct(model, texts, variants=("no_mixing",), placements=("all",))  # doctest: +SKIP
    """
    _check(variants, form, n_resamples)
    require_pattern_hooks(model)
    texts = validate_prompts(texts)
    n_layers = int(model.cfg.n_layers)
    conditions = [(v, label, layers) for v in variants
                  for label, layers in expand_placements(placements, n_layers)]
    for v, _, layers in conditions:  # validates layers and source layer before any forward
        if v == "decoupled":
            AttentionVariant(model, v, layers=layers, source_layer=source_layer)
    tokenized = tokenize(model, texts, max_length=max_length)
    static = None
    if "static" in variants:
        if reference_texts is None:
            from tl_spec.zoo.corpus import heldout_texts

            reference_texts = heldout_texts(32)
        with warnings.catch_warnings():  # a reference text cut at max_length is still a reference
            warnings.simplefilter("ignore", TLSpecWarning)
            static = static_patterns(model, reference_texts, max_length=max_length)
    hooks = {(v, label): AttentionVariant(model, v, layers=layers, form=form,
                                          source_layer=source_layer, static=static)
             for v, label, layers in conditions}
    can_start = can_start_at_layer(model)
    device = model_device(model)
    n = len(texts)
    clean_nll, clean_count = np.zeros(n), np.zeros(n)
    clean_corr = np.zeros((n, n_layers, int(model.cfg.n_heads), int(model.cfg.n_heads)))
    nll = {key: np.zeros(n) for key in hooks}
    corr = {key: np.full_like(clean_corr, np.nan) for key in hooks}
    plan = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    steps: Any = range(len(plan))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="deconstruct", unit="batch")
    starts = {key: min(min(h.layers), h.source_layer if h.variant == "decoupled" else n_layers)
              for key, h in hooks.items()}
    for b in steps:
        idx = plan[b]
        tokens, mask = pad_batch([tokenized.ids[i] for i in idx], pad_id=pad_id(model),
                                 padding_side="right", device=device)
        ones = torch.ones_like(mask)
        grabbed: dict[int, torch.Tensor] = {}
        need = sorted({s for s in starts.values() if s > 0}) if can_start else []
        stats = PatternStats(model, stats=("correlation",))
        stats.attention_mask = mask
        grab = [(f"blocks.{s}.hook_resid_pre", lambda x, hook, s=s: grabbed.__setitem__(s, x))
                for s in need]
        with torch.inference_mode(), model.hooks(fwd_hooks=stats.fwd_hooks + grab):
            logits = model(tokens, attention_mask=ones, return_type="logits")
        total, count = token_losses(logits, tokens, mask)
        clean_nll[idx], clean_count[idx] = total.cpu().numpy(), count.cpu().numpy()
        clean_corr[idx] = stats.collect()["correlation"]
        for key, variant in hooks.items():
            start = starts[key] if can_start else 0
            kept = [layer for layer in range(start, n_layers) if layer not in variant.layers]
            pstats = PatternStats(model, stats=("correlation",), layers=kept) if kept else None
            extra = pstats.fwd_hooks if pstats else []
            if pstats:
                pstats.attention_mask = mask
            variant.attention_mask = mask
            with torch.inference_mode(), model.hooks(fwd_hooks=variant.fwd_hooks + extra):
                if start > 0:
                    logits = model(grabbed[start], start_at_layer=start, tokens=tokens,
                                   attention_mask=ones, return_type="logits")
                else:
                    logits = model(tokens, attention_mask=ones, return_type="logits")
            nll[key][idx] = token_losses(logits, tokens, mask)[0].cpu().numpy()
            corr[key][idx] = clean_corr[idx]  # layers before the start are the clean ones
            if pstats:
                corr[key][np.ix_(idx, kept)] = pstats.collect()["correlation"]
    if clean_count.sum() == 0:
        raise TLSpecError("the texts give no next-token predictions; pass texts of 2+ tokens")
    text_loss = clean_nll / np.maximum(clean_count, 1)
    clean_loss = float(clean_nll.sum() / clean_count.sum())
    clean_si_prompt = si_from_correlations(clean_corr).per_prompt_layer
    rows = []
    for (v, label), variant in hooks.items():
        key_loss = (v, label)
        loss_v = nll[key_loss] / np.maximum(clean_count, 1)
        diff = loss_v - text_loss
        interval = paired_bootstrap(lambda i, d=diff: d[i].mean(-1), n, confidence=confidence,
                                    n_resamples=n_resamples, seed=seed)
        pooled = float(nll[key_loss].sum() / clean_count.sum())
        kept = [layer for layer in range(n_layers) if layer not in variant.layers]
        si_prompt = si_from_correlations(corr[key_loss]).per_prompt_layer
        si_kept = float(np.nanmean(si_prompt[:, kept])) if kept else None
        si_clean = float(np.nanmean(clean_si_prompt[:, kept])) if kept else None
        rows.append(dict(variant=v, placement=label, layers=variant.layers, kept_layers=kept,
                         loss=pooled, delta_loss=float(diff.mean()), interval=interval,
                         ppl=math.exp(pooled), ppl_ratio=math.exp(float(diff.mean())),
                         si_kept=si_kept, si_kept_clean=si_clean,
                         delta_si_kept=None if si_kept is None else si_kept - si_clean))
    settings = dict(variants=list(variants), placements=[str(p) for p in placements], form=form,
                    source_layer=source_layer, max_length=max_length, batch_size=batch_size,
                    confidence=confidence, n_resamples=n_resamples, seed=seed, n_texts=n,
                    n_truncated=tokenized.n_truncated, prefix_reuse=can_start,
                    n_reference_texts=None if reference_texts is None else len(reference_texts),
                    interval="paired bootstrap over texts of the per-text mean loss change")
    return DeconstructResult(
        model=model_id(model), clean_loss=clean_loss, clean_ppl=math.exp(clean_loss),
        clean_si=np.nanmean(clean_si_prompt, axis=0), clean_text_loss=text_loss, rows=rows,
        settings=settings, provenance=provenance(model, options=settings))
