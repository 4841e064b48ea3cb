"""Named hook points that replace standard attention with a controlled variant (seed 003).

Each variant relaxes one principle of dot-product attention in chosen layers, through ordinary
TransformerLens hooks (``run_with_hooks`` / ``model.hooks()``), on both backends:

- ``"no_mixing"``: each position attends only to itself (no token mixing);
- ``"uniform"``: causal uniform averaging over the valid keys (no sequence dependence, no form);
- ``"static"``: each head's pattern is its mean pattern by position over reference texts
  (sequence-independent but head-specific), computed from the model itself;
- ``"form"``: the same scores through another normalisation than softmax (``form="relu"``:
  ReLU-normalised, ``"sigmoid"``, or ``"softmax"`` as a control), renormalised over valid keys;
- ``"decoupled"``: queries and keys computed from a fixed early representation
  (``resid_pre`` of ``source_layer``, 0 = the embeddings) instead of the current layer's input;
  values unchanged.

Replacement patterns respect padding (set :attr:`AttentionVariant.attention_mask` per batch),
causality and sliding windows; rows of padded queries keep the model's own pattern.

>>> v = attention_variant(model, "uniform", layers="hybrid:2")             # doctest: +SKIP
>>> logits = model.run_with_hooks(tokens, fwd_hooks=v.bind(tokens, mask).fwd_hooks)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from tl_spec.errors import TLSpecError
from tl_spec.hooks.base import HookSet
from tl_spec.hooks.capture import PatternStats
from tl_spec.metrics.patterns import entry_mask
from tl_spec.models import layer_windows, require_pattern_hooks
from tl_spec.names import hook_name, parse_layers, resolve_layers
from tl_spec.options.deconstruct import (
    FORMS,
    VARIANTS,
    DeconstructOptions,
    Form,
    Variant,
    hybrid_period,
)
from tl_spec.running import run_batches
from tl_spec.tokens import PromptInput, prepare_inputs, real_spans, real_tokens

__all__ = ["FORMS", "VARIANTS", "AttentionVariant", "Form", "Variant", "attention_variant",
           "normalise_scores", "resolve_variant_layers", "static_patterns"]


def resolve_variant_layers(spec: Any, n_layers: int) -> list[int]:
    """Layers of a variant: a layer range as :func:`tl_spec.names.parse_layers` /
    :func:`~tl_spec.names.resolve_layers` read it (``"all"``, ``"late"``, ``"0:2"``, ``"0,2"``,
    ``(0, 2)``, ``[0, 2]``), plus ``"none"``, ``"hybrid:k"`` (standard attention kept in every
    k-th layer: layers k-1, 2k-1, ... keep it) and layer numbers joined by ``+`` (``"0+2"``).

    >>> resolve_variant_layers("hybrid:2", 6), resolve_variant_layers("none", 6)
    ([0, 2, 4], [])
    >>> resolve_variant_layers("3+1", 6), resolve_variant_layers("0:2", 6)
    ([1, 3], [0, 1])
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text == "none":
            return []
        k = hybrid_period(text)
        if k is not None:
            return [layer for layer in range(n_layers) if (layer + 1) % k != 0]
        if text.replace("+", "").isdigit():
            spec = [int(x) for x in text.split("+") if x]
        else:
            spec = parse_layers(text)
    if isinstance(spec, (list, tuple)) and len(spec) == 0:
        return []
    return resolve_layers(spec, n_layers)


def normalise_scores(
    scores: Float[torch.Tensor, "batch heads query key"],
    valid: Bool[torch.Tensor, "batch query key"],
    form: str,
) -> Float[torch.Tensor, "batch heads query key"]:
    """Attention weights from scores by ``form``, over the valid keys of each row (float32+).

    ReLU or sigmoid weights are divided by their row sum; a row whose weights are all zero
    becomes uniform over its valid keys. Rows without a valid key are all zero.

    >>> s = torch.tensor([[[[1.0, -1.0], [3.0, 1.0]]]]); ok = torch.ones(1, 2, 2, dtype=torch.bool)
    >>> normalise_scores(s, ok, "relu").tolist()
    [[[[1.0, 0.0], [0.75, 0.25]]]]
    """
    if form not in FORMS:
        raise TLSpecError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    x = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    keep = valid[:, None]
    if form == "softmax":
        w = torch.softmax(x.masked_fill(~keep, float("-inf")), dim=-1)
        return torch.nan_to_num(w, nan=0.0)
    w = torch.relu(x) if form == "relu" else torch.sigmoid(x)
    w = torch.where(keep, torch.nan_to_num(w, nan=0.0, posinf=0.0), 0.0)
    total = w.sum(-1, keepdim=True)
    uniform = keep.to(w.dtype) / keep.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), uniform)


def static_patterns(
    model: Any,
    texts: PromptInput,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    max_length: int = DeconstructOptions.max_length,
    batch_size: int = DeconstructOptions.batch_size,
) -> Float[np.ndarray, "layers heads pos pos"]:
    """Each head's mean pattern by position over ``texts`` (aligned at the first real token).

    Entry ``[l, h, q, k]`` averages over the texts long enough to have query ``q``.

    Args:
        model: a TransformerLens model with pattern hooks.
        texts: reference texts, or their token ids (a ``[batch, pos]`` tensor with an optional
            ``attention_mask``, or a list of 1-D tensors; no tokenizer needed).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        max_length: texts are truncated to this many tokens.
        batch_size: texts per forward pass.

    Returns:
        ``[layers, heads, pos, pos]`` mean patterns (``pos``: the longest text's length).

    >>> static_patterns(model, ["some reference text", "another one"]).shape  # doctest: +SKIP
    (4, 8, 5, 5)
    """
    inputs = prepare_inputs(model, texts, attention_mask=attention_mask, max_length=max_length)
    tokenized = inputs.tokenized
    stats = PatternStats(model, stats=("mean_pattern",), region="full",
                         max_positions=max(tokenized.lengths))
    run_batches(model, tokenized, stats, batch_size=batch_size)
    raw = stats.collect()
    count = raw["mean_pattern_count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, raw["mean_pattern_sum"] / count, 0.0)


class AttentionVariant(HookSet):
    """Hooks replacing attention by ``variant`` in ``layers`` (see the module doc).

    A :class:`~tl_spec.hooks.base.HookSet`: ``bind(tokens, attention_mask)`` before each batch
    (or set :attr:`attention_mask`), then ``fwd_hooks`` or iterate over it.

    Args:
        model: a TransformerLens model with pattern hooks.
        variant: ``no_mixing``, ``uniform``, ``static``, ``form`` or ``decoupled``.
        layers: the variant's layers (see :func:`resolve_variant_layers`).
        form: ``form`` variant: ``relu``, ``sigmoid`` or ``softmax``.
        source_layer: ``decoupled``: queries and keys from this layer's ``resid_pre``.
        static: ``static``: the mean patterns of :func:`static_patterns`.

    >>> v = AttentionVariant(model, "no_mixing", layers=[0])  # doctest: +SKIP
    """

    def __init__(self, model: Any, variant: str, *, layers: Any = "all", form: str = "relu",
                 source_layer: int = 0, static: np.ndarray | None = None) -> None:
        require_pattern_hooks(model)
        if variant not in VARIANTS:
            raise TLSpecError(f"unknown attention variant {variant!r}; choose one of "
                              f"{', '.join(VARIANTS)}")
        n_layers = int(model.cfg.n_layers)
        self.layers = resolve_variant_layers(layers, n_layers)
        self.variant, self.form, self.source_layer = variant, form, int(source_layer)
        if variant == "form" and form not in FORMS:
            raise TLSpecError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
        if variant == "decoupled":
            if not 0 <= self.source_layer < n_layers:
                raise TLSpecError(f"source_layer={source_layer} is out of range (0..{n_layers - 1})")
            late = [layer for layer in self.layers if layer < self.source_layer]
            if late:
                raise TLSpecError(
                    f"decoupled attention in layers {late} cannot take queries and keys from "
                    f"layer {self.source_layer}'s resid_pre, which is computed after them; use "
                    f"source_layer <= {min(self.layers)} or drop those layers")
        if variant == "static":
            if static is None:
                raise TLSpecError("the 'static' variant needs mean patterns: pass static="
                                  "static_patterns(model, reference_texts) (or reference_texts= "
                                  "to attention_variant)")
            if static.shape[:2] != (n_layers, int(model.cfg.n_heads)):
                raise TLSpecError(f"static patterns have shape {static.shape}, expected "
                                  f"({n_layers}, {int(model.cfg.n_heads)}, pos, pos)")
        self.static = static
        self.model = model
        self.windows = layer_windows(model)
        self.attention_mask: torch.Tensor | None = None
        self._scores: dict[int, torch.Tensor] = {}
        self._source: torch.Tensor | None = None

    # ----------------------------------------------------------------- hooks
    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``."""
        hooks: list[tuple[str, Callable[..., Any]]] = []
        if not self.layers:
            return hooks
        if self.variant == "decoupled":
            hooks.append((hook_name("resid_pre", self.source_layer), self._keep_source))
            for layer in self.layers:
                hooks.append((hook_name("q", layer), self._qk_hook(layer, "Q")))
                hooks.append((hook_name("k", layer), self._qk_hook(layer, "K")))
            return hooks
        for layer in self.layers:
            if self.variant == "form":
                hooks.append((hook_name("attn_scores", layer), self._keep_scores(layer)))
            hooks.append((hook_name("pattern", layer), self._pattern_hook(layer)))
        return hooks

    def _keep_scores(self, layer: int) -> Callable[..., None]:
        def hook(scores: torch.Tensor, *, hook: Any = None) -> None:
            self._scores[layer] = scores
        return hook

    def _pattern_hook(self, layer: int) -> Callable[..., torch.Tensor]:
        def hook(pattern: torch.Tensor, *, hook: Any = None) -> torch.Tensor:
            batch, heads, n, _ = pattern.shape
            token_valid = real_tokens(self.attention_mask, batch, n, pattern.device,
                                      owner="variant")
            valid = entry_mask(token_valid, region="lower", window=self.windows[layer])
            new = self._replacement(layer, pattern, token_valid, valid)
            rows = token_valid[:, None, :, None]  # padded queries keep the model's own rows
            return torch.where(rows, new.to(pattern.dtype), pattern)
        return hook

    def _replacement(self, layer: int, pattern: torch.Tensor, token_valid: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
        batch, heads, n, _ = pattern.shape
        if self.variant == "no_mixing":
            eye = torch.eye(n, dtype=torch.float32, device=pattern.device)
            return (eye[None] * valid)[:, None].expand(batch, heads, n, n)
        if self.variant == "uniform":
            w = valid.to(torch.float32)
            return (w / w.sum(-1, keepdim=True).clamp_min(1))[:, None].expand(batch, heads, n, n)
        if self.variant == "form":
            scores = self._scores.pop(layer)
            return normalise_scores(scores, valid, self.form)
        return self._static_rows(layer, pattern, token_valid, valid)

    def _static_rows(self, layer: int, pattern: torch.Tensor, token_valid: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
        assert self.static is not None
        batch, heads, n, _ = pattern.shape
        ref = torch.as_tensor(self.static[layer], dtype=torch.float32, device=pattern.device)
        out = torch.zeros(batch, heads, n, n, dtype=torch.float32, device=pattern.device)
        for b, (start, m) in enumerate(real_spans(token_valid)):
            if m > ref.shape[-1]:
                raise TLSpecError(
                    f"a prompt of {m} tokens is longer than the static patterns "
                    f"({ref.shape[-1]} positions); compute them from longer reference texts")
            out[b, :, start:start + m, start:start + m] = ref[:, :m, :m]
        out = out * valid[:, None]
        total = out.sum(-1, keepdim=True)
        uniform = valid[:, None].float() / valid[:, None].sum(-1, keepdim=True).clamp_min(1)
        return torch.where(total > 0, out / total.clamp_min(1e-30), uniform)

    def _weights(self, layer: int, which: str, heads: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's W_Q / W_K ``[heads, d_model, d_head]`` and bias (None if it has none)."""
        attn = self.model.blocks[layer].attn
        w = None
        for name in (f"_W_{which}", f"W_{which}"):
            cand = getattr(attn, name, None)
            if isinstance(cand, torch.Tensor) and cand.shape[0] == heads:
                w = cand
                break
        if w is None:
            w = getattr(self.model, f"W_{which}")[layer]
        try:
            b = getattr(self.model, f"b_{which}")[layer]
        except (TypeError, AttributeError):  # no bias (e.g. Llama on the bridge)
            b = None
        if b is not None and b.shape[0] != heads:
            b = getattr(attn, f"_b_{which}", b)
        return w, b

    def _keep_source(self, resid: torch.Tensor, *, hook: Any = None) -> None:
        self._source = resid

    def _qk_hook(self, layer: int, which: str) -> Callable[..., torch.Tensor]:
        def hook(x: torch.Tensor, *, hook: Any = None) -> torch.Tensor:
            if self._source is None:
                raise TLSpecError(
                    f"decoupled attention in layer {layer} needs layer {self.source_layer}'s "
                    "resid_pre, whose hook did not run in this forward pass (a run started past "
                    "that layer?); start at or before the source layer")
            block = self.model.blocks[layer]
            normed = block.ln1(self._source.to(x.dtype))
            w, b = self._weights(layer, which, x.shape[2])
            out = torch.einsum("bpd,hde->bphe", normed, w.to(normed.dtype))
            if b is not None:
                out = out + b.to(out.dtype)
            return out.to(x.dtype)
        return hook


def attention_variant(model: Any, variant: str, *, layers: Any = "all", form: str = "relu",
                      source_layer: int = 0, reference_texts: PromptInput | None = None,
                      static: np.ndarray | None = None) -> AttentionVariant:
    """Hooks that replace attention by ``variant`` in ``layers`` (see the module doc).

    ``"static"`` needs ``reference_texts`` (texts or token ids; its mean patterns are computed
    from the model on them) or precomputed ``static`` patterns.

    Args:
        model: a TransformerLens model with pattern hooks.
        variant: ``no_mixing``, ``uniform``, ``static``, ``form`` or ``decoupled``.
        layers: the variant's layers (see :func:`resolve_variant_layers`).
        form: ``form`` variant: ``relu``, ``sigmoid`` or ``softmax``.
        source_layer: ``decoupled``: queries and keys from this layer's ``resid_pre``.
        reference_texts: ``static``: texts (or token ids) to average patterns over.
        static: ``static``: precomputed mean patterns (:func:`static_patterns`).

    Returns:
        :class:`AttentionVariant`.

    >>> v = attention_variant(model, "form", form="sigmoid", layers=[2, 3])  # doctest: +SKIP
    """
    if variant == "static" and static is None and reference_texts is not None:
        static = static_patterns(model, reference_texts)
    return AttentionVariant(model, variant, layers=layers, form=form, source_layer=source_layer,
                            static=static)
