"""Deconstructing attention at inference (seed 003): loss and SI under attention variants.

For every variant (``tl_spec.hooks.variants``) and placement (``"all"`` layers, ``"hybrid:k"``
keeping standard attention in every k-th layer, ``"single"`` = one layer at a time, or explicit
layer lists) the texts' held-out loss is measured against the unmodified model, with a paired
bootstrap interval over texts, together with the SI (``pattern``) of the layers that keep
standard attention: does specialization redistribute when other layers lose theirs?

Batches run once clean (recording each text's loss, SI and the residual stream where later
conditions start) and then once per condition; where the model can resume mid-way
(:func:`~tl_spec.resume.can_start_at_layer`) a condition whose first changed layer is ``f``
starts at ``f`` from the clean residual stream (prefix reuse).

Texts are strings or token ids (a ``[batch, pos]`` tensor with an optional ``attention_mask``, or
a list of 1-D tensors); options are :class:`~tl_spec.options.deconstruct.DeconstructOptions`
fields, given as keywords or as ``options=``.

>>> from tl_spec import deconstruct
>>> d = deconstruct(model, texts, variants=("uniform", "form"))   # doctest: +SKIP
>>> print(d.summary())                                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.importance import token_losses
from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.variants import AttentionVariant, resolve_variant_layers, static_patterns
from tl_spec.metrics.specialization import si_from_correlations
from tl_spec.models import model_id, require_pattern_hooks
from tl_spec.names import hook_name
from tl_spec.options.deconstruct import DeconstructOptions, check_placement
from tl_spec.resume import can_start_at_layer, forward_from_layer
from tl_spec.records import Result, array, provenance
from tl_spec.running import model_device
from tl_spec.stats import interval_records, paired_bootstrap
from tl_spec.tokens import Inputs, PromptInput, pad_batch, pad_id, prepare_inputs
from tl_spec.corpus import heldout_texts

__all__ = ["DeconstructOptions", "DeconstructResult", "costliest", "deconstruct",
           "expand_placements"]

#: How many held-out zoo documents the ``static`` variant averages over by default.
N_REFERENCE_TEXTS = 32


def costliest(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline of the condition with the largest loss increase: ``{"largest Δloss", "at", "CI"}``
    (empty without rows).

    >>> costliest([{"variant": "uniform", "placement": "all", "delta_loss": 0.5, "interval": None}])["at"]
    'uniform all'
    """
    if not rows:
        return {}
    worst = max(rows, key=lambda r: r["delta_loss"])
    return {"largest Δloss": worst["delta_loss"], "at": f"{worst['variant']} {worst['placement']}",
            "CI": worst["interval"]}


def expand_placements(placements: Sequence[Any], n_layers: int) -> list[tuple[str, list[int]]]:
    """``(label, variant layers)`` per condition; ``"single"`` becomes one condition per layer.

    >>> expand_placements(["all", "hybrid:2", "single"], 2)
    [('all', [0, 1]), ('hybrid:2', [0]), ('single:0', [0]), ('single:1', [1])]
    """
    out: list[tuple[str, list[int]]] = []
    for p in placements:
        label = check_placement(p)
        if label == "single":
            out += [(f"single:{layer}", [layer]) for layer in range(n_layers)]
            continue
        layers = resolve_variant_layers(label, n_layers)
        if not layers:
            raise TLSpecError(f"placement {p!r} changes no layer; drop it")
        out.append((label, layers))
    return out


@dataclass(repr=False)
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
    clean_si: Float[np.ndarray, "n_layers"]
    clean_text_loss: Float[np.ndarray, "n_texts"]
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def headline(self) -> dict[str, Any]:
        """Clean loss, texts, conditions, and the costliest condition with its interval."""
        out: dict[str, Any] = {"clean loss": self.clean_loss,
                               "texts": self.settings.get("n_texts", len(self.clean_text_loss)),
                               "conditions": len(self.rows)}
        out.update(costliest(self.rows))
        return out

    def to_frame(self) -> Any:
        """Tidy table, one row per condition (variant x placement), pandas.

        >>> d.to_frame().query("placement == 'all'")[["variant", "delta_loss"]]  # doctest: +SKIP
        """
        import pandas as pd

        model = (self.model_names() or [self.model])[0]
        rows = []
        for r in self.rows:
            ci = r["interval"]
            rows.append({"model": model, "variant": r["variant"], "placement": r["placement"],
                         "layers": ",".join(map(str, r["layers"])),
                         "kept_layers": ",".join(map(str, r["kept_layers"])),
                         "loss": r["loss"], "ppl": r.get("ppl"), "delta_loss": r["delta_loss"],
                         "ci_low": ci.low, "ci_high": ci.high, "ci_level": ci.level,
                         "ppl_ratio": r["ppl_ratio"], "si_kept": r["si_kept"],
                         "si_kept_clean": r.get("si_kept_clean"),
                         "delta_si_kept": r["delta_si_kept"]})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Text table of every condition."""
        level = self.rows[0]["interval"].level if self.rows else self.settings.get("confidence", 0.95)
        lines = [f"deconstruct {', '.join(self.model_names()) or self.model}: clean loss "
                 f"{self.clean_loss:.4f} (ppl {self.clean_ppl:.2f}), "
                 f"{self.settings['n_texts']} texts",
                 f"{'variant':<12} {'placement':<10} {'Δloss':>8} {f'{level:.0%} CI':>19} "
                 f"{'ppl x':>7} {'SI kept':>8} {'ΔSI kept':>9}"]
        for r in self.rows:
            ci = r["interval"]
            kept = "" if r["si_kept"] is None else f"{r['si_kept']:8.4f} {r['delta_si_kept']:+9.4f}"
            lines.append(f"{r['variant']:<12} {r['placement']:<10} {r['delta_loss']:+8.4f} "
                         f"[{ci.low:+8.4f},{ci.high:+8.4f}] {r['ppl_ratio']:7.3f} {kept}")
        return "\n".join(lines)


def deconstruct(
    model: Any,
    texts: PromptInput,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    reference_texts: PromptInput | None = None,
    options: DeconstructOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> DeconstructResult:
    """Loss and kept-layer SI under every variant x placement (see the module doc).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with pattern hooks.
        texts: a list of strings, a PromptSet, a ``[batch, pos]`` token tensor or a list of 1-D
            token tensors (token ids need no tokenizer); at least 2 (the bootstrap's unit).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        reference_texts: ``"static"`` only: texts or token ids (a list of 1-D tensors, or an
            unpadded ``[batch, pos]`` tensor) whose mean patterns replace attention; default 32
            held-out documents of the zoo corpus (which needs the model's tokenizer).
        options: a :class:`~tl_spec.options.deconstruct.DeconstructOptions`; keyword options
            override its fields.
        progress: show a progress bar.
        **option_values: any ``DeconstructOptions`` field (``variants``, ``placements``,
            ``form``, ``source_layer``, ``max_length``, ``batch_size``, ``confidence``,
            ``n_resamples``, ``seed``).

    Returns:
        :class:`DeconstructResult`.

    >>> deconstruct(model, texts, variants=("no_mixing",), placements=("all",))  # doctest: +SKIP
    """
    opts = DeconstructOptions.build(options, **option_values)
    require_pattern_hooks(model)
    n_layers = int(model.cfg.n_layers)
    conditions = [(v, label, layers) for v in opts.variants
                  for label, layers in expand_placements(opts.placements, n_layers)]
    for v, _, layers in conditions:  # validates layers and source layer before any forward
        if v == "decoupled":
            AttentionVariant(model, v, layers=layers, source_layer=opts.source_layer)
    needs_static = "static" in opts.variants
    if needs_static and reference_texts is None and getattr(model, "tokenizer", None) is None:
        raise TLSpecError("the 'static' variant's default reference texts need the model's "
                          "tokenizer; pass reference_texts as token ids (a list of 1-D tensors)")
    inputs = prepare_inputs(model, texts, attention_mask=attention_mask,
                            max_length=opts.max_length)
    if len(inputs) < 2:
        raise TLSpecError(f"deconstruct needs at least 2 texts (the unit of its bootstrap "
                          f"interval), got {len(inputs)}")
    static = None
    if needs_static:
        if reference_texts is None:
            reference_texts = heldout_texts(N_REFERENCE_TEXTS)
        with warnings.catch_warnings():  # a reference text cut at max_length is still a reference
            warnings.simplefilter("ignore", TLSpecWarning)
            static = static_patterns(model, reference_texts, max_length=opts.max_length)
        longest = max(inputs.tokenized.lengths)
        if static.shape[-1] < longest:
            raise TLSpecError(
                f"the static patterns cover {static.shape[-1]} positions but a text has {longest} "
                "tokens; pass longer reference_texts (or a smaller max_length)")
    hooks = {(v, label): AttentionVariant(model, v, layers=layers, form=opts.form,
                                          source_layer=opts.source_layer, static=static)
             for v, label, layers in conditions}
    return _measure(model, inputs, hooks, opts, progress=progress,
                    n_reference=None if reference_texts is None else len(reference_texts))


def _measure(model: Any, inputs: Inputs, hooks: dict[tuple[str, str], AttentionVariant],
             opts: DeconstructOptions, *, progress: bool, n_reference: int | None
             ) -> DeconstructResult:
    """Run the clean model and every condition over ``inputs`` and build the result."""
    tokenized = inputs.tokenized
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    can_start = can_start_at_layer(model)
    device = model_device(model)
    n = len(tokenized.ids)
    clean_nll, clean_count = np.zeros(n), np.zeros(n)
    clean_corr = np.zeros((n, n_layers, n_heads, n_heads))
    nll = {key: np.zeros(n) for key in hooks}
    corr = {key: np.full_like(clean_corr, np.nan) for key in hooks}
    plan = [list(range(i, min(i + opts.batch_size, n))) for i in range(0, n, opts.batch_size)]
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
        grab = [(hook_name("resid_pre", s), lambda x, hook, s=s: grabbed.__setitem__(s, x))
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
            variant.bind(tokens, mask)
            with torch.inference_mode(), model.hooks(fwd_hooks=variant.fwd_hooks + extra):
                if start > 0:
                    logits = forward_from_layer(model, grabbed[start], start, tokens=tokens,
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
        loss_v = nll[(v, label)] / np.maximum(clean_count, 1)
        diff = loss_v - text_loss
        interval = paired_bootstrap(lambda i, d=diff: d[i].mean(-1), n,
                                    confidence=opts.confidence, n_resamples=opts.n_resamples,
                                    seed=opts.seed)
        pooled = float(nll[(v, label)].sum() / clean_count.sum())
        kept = [layer for layer in range(n_layers) if layer not in variant.layers]
        si_prompt = si_from_correlations(corr[(v, label)]).per_prompt_layer
        si_kept = float(np.nanmean(si_prompt[:, kept])) if kept else None
        si_clean = float(np.nanmean(clean_si_prompt[:, kept])) if kept else None
        rows.append(dict(variant=v, placement=label, layers=variant.layers, kept_layers=kept,
                         loss=pooled, delta_loss=float(diff.mean()), interval=interval,
                         ppl=math.exp(pooled), ppl_ratio=math.exp(float(diff.mean())),
                         si_kept=si_kept, si_kept_clean=si_clean,
                         delta_si_kept=None if si_kept is None else si_kept - si_clean))
    settings = dict(opts.to_dict(), n_texts=n, n_truncated=tokenized.n_truncated,
                    prefix_reuse=can_start, n_reference_texts=n_reference,
                    input="token ids" if inputs.from_tokens else "text",
                    interval="paired bootstrap over texts of the per-text mean loss change")
    return DeconstructResult(
        model=model_id(model), clean_loss=clean_loss, clean_ppl=math.exp(clean_loss),
        clean_si=np.nanmean(clean_si_prompt, axis=0), clean_text_loss=text_loss, rows=rows,
        settings=settings, provenance=provenance(model, prompts=inputs.info, options=settings))
