"""The Specialization Index of a model on a prompt set, by any of the three published definitions.

Prompts are text (a list of strings or a PromptSet) or token ids (a ``[batch, pos]`` tensor with
an optional ``attention_mask``, or a list of 1-D tensors); options are :class:`SIOptions` fields,
given as keywords or as ``options=``.

>>> from tl_spec import load_model, specialization_index
>>> from tl_spec.prompts import STANDARD_10
>>> si = specialization_index(load_model("ckpt_dir"), STANDARD_10, method="pattern")  # doctest: +SKIP
>>> si.value, si.per_layer.shape, si.top(3)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.running import run_batches
from tl_spec.hooks.capture import PatternStats
from tl_spec.metrics.specialization import (
    corrcoef_rows,
    gqa_group_split,
    si_from_correlations,
    si_from_entropy_profile,
    si_from_row_entropy,
)
from tl_spec.models import describe, require_pattern_hooks
from tl_spec.names import head_label, head_labels
from tl_spec.options.si import ROUTES_WITH_PAD_ROWS, METHODS, Aggregate, Method, Region, SIOptions
from tl_spec.records import Result, array, provenance
from tl_spec.tokens import Inputs, PromptInput, prepare_inputs, route_inputs

__all__ = [
    "METHODS",
    "ROUTE_NOTE",
    "Aggregate",
    "Method",
    "SIOptions",
    "SIResult",
    "check_options",
    "head_labels",
    "si_from_inputs",
    "specialization_index",
]

_STAT_FOR = {"pattern": "correlation", "entropy_profile": "column_entropy",
             "normalized_entropy": "row_entropy"}
#: What each reproduction route reproduces (shown by summaries and reports).
ROUTE_NOTE = {
    "e11_masked": "the E11 notebooks' masked route: tokenizer's special tokens, padded to "
                  "max_length, valid rows and keys only",
    "e11_unmasked": "the E11 notebooks' unmasked route: padded to max_length, pad rows averaged "
                    "in",
    "metrics_py": "src/metrics.py: padded to max_length, pad rows averaged in, H_max = "
                  "ln(max_length)",
}
_ALL_ROWS = ROUTES_WITH_PAD_ROWS
_PER_HEAD_MEANING = {
    "pattern": "1 - mean correlation with the other heads of the layer",
    "entropy_profile": "normalized entropy of the mean attention row (the E matrix)",
    "normalized_entropy": "1 - mean row entropy / ln(n)",
}


@dataclass(repr=False)
class SIResult(Result):
    """SI of one model: model-level ``value``, ``per_layer`` (where the method has one), per head.

    ``per_head`` means: pattern -> 1 - mean correlation with the layer's other heads;
    entropy_profile -> the entropy matrix E; normalized_entropy -> 1 - mean row entropy / ln(n).
    ``per_prompt`` [prompts, layers] and ``per_prompt_heads`` [prompts, layers, heads] keep the
    per-prompt statistics so resampling never re-runs the model.
    """

    kind = "specialization_index"
    decoders = {
        name: array
        for name in ("per_layer", "per_head", "head_correlation", "within_group", "between_group",
                     "entropies", "per_prompt", "per_prompt_heads")
    }
    method: str
    value: float
    per_layer: Float[np.ndarray, "n_layers"] | None
    per_head: Float[np.ndarray, "n_layers n_heads"]
    head_correlation: Float[np.ndarray, "n_layers n_heads"] | None
    within_group: Float[np.ndarray, "n_layers n_heads"] | None
    between_group: Float[np.ndarray, "n_layers n_heads"] | None
    entropies: Float[np.ndarray, "n_layers n_heads"] | None
    per_prompt: Float[np.ndarray, "n_prompts n_layers"] | None
    per_prompt_heads: Float[np.ndarray, "n_prompts n_layers n_heads"] | None
    tokens: list[list[int]]
    undefined_heads: int
    excluded_layers: list[int]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.per_head.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.per_head.shape[1])

    @property
    def route(self) -> str:
        """The SI route measured: ``"tl_spec"`` or a reproduction of the paper's code."""
        return str(self.settings.get("route", "tl_spec"))

    def tags(self) -> list[str]:
        """The method, and the route when it is a reproduction route."""
        tags = [self.method]
        return tags if self.route == "tl_spec" else [*tags, f"route={self.route}"]

    def headline(self) -> dict[str, Any]:
        """``{"SI": value, "prompts": n}``."""
        return {"SI": self.value, "prompts": len(self.tokens)}

    def heat(self) -> tuple[str, np.ndarray, bool | None]:
        """The per-head score (its meaning depends on the method)."""
        return _PER_HEAD_MEANING[self.method], self.per_head, False

    def top(self, k: int = 5, *, largest: bool = True) -> list[tuple[str, float]]:
        """The ``k`` heads with the largest (or smallest) per-head score, as ``("L3H7", value)``.

        >>> si.top(2)  # doctest: +SKIP
        [('L2H5', 0.91), ('L1H0', 0.88)]
        """
        flat = self.per_head.ravel()
        ok = np.flatnonzero(~np.isnan(flat))
        ranked = ok[np.argsort(flat[ok])]
        picked = ranked[::-1][:k] if largest else ranked[:k]
        return [(head_label(i // self.n_heads, i % self.n_heads), float(flat[i])) for i in picked]

    def to_frame(self) -> Any:
        """Tidy table, one row per head: layer, head, label, per-head scores, layer SI.

        >>> si.to_frame().query("layer == 0").head()  # doctest: +SKIP
        """
        import pandas as pd

        rows = []
        model = (self.model_names() or [None])[0]
        optional = {"head_correlation": self.head_correlation, "within_group": self.within_group,
                    "between_group": self.between_group}
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                row = {"model": model, "method": self.method,
                       "layer": layer, "head": head, "label": head_label(layer, head),
                       "per_head": float(self.per_head[layer, head]),
                       "layer_si": None if self.per_layer is None else float(self.per_layer[layer])}
                for name, values in optional.items():
                    if values is not None:
                        row[name] = float(values[layer, head])
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A per-layer text table and the model-level value."""
        lines = [f"SI of {', '.join(self.model_names())}, method: {self.method}  "
                 f"({_PER_HEAD_MEANING[self.method]} per head)"]
        if self.route != "tl_spec":
            lines.append(f"route: {self.route}, a reproduction of an artifact of the paper's "
                         f"code ({ROUTE_NOTE.get(self.route, '')})")
        if self.per_layer is not None:
            lines.append(f"{'layer':>5}  {'SI':>8}  {'min head':>9}  {'max head':>9}")
            for layer, v in enumerate(self.per_layer):
                row = self.per_head[layer]
                lines.append(
                    f"{layer:>5}  {v:8.4f}  {np.nanmin(row):9.4f}  {np.nanmax(row):9.4f}"
                )
        lines.append(f"SI = {self.value:.6f}  ({len(self.tokens)} prompts)")
        if self.undefined_heads:
            lines.append(f"undefined (zero-variance) head patterns excluded: {self.undefined_heads}")
        return "\n".join(lines)


def check_options(
    method: str,
    region: str = "lower",
    aggregate: str = "prompt",
    batch_size: int = 16,
    max_length: int = 128,
    padding_side: str = "right",
) -> None:
    """Deprecated: build :class:`~tl_spec.options.SIOptions` instead (it validates itself)."""
    warnings.warn("check_options is deprecated; SIOptions(...) validates itself",
                  DeprecationWarning, stacklevel=2)
    SIOptions(method=method, region=region, aggregate=aggregate, batch_size=batch_size,
              max_length=max_length, padding_side=padding_side)


def _mean_pattern_corr(
    total: np.ndarray, count: np.ndarray, region: Region, windows: Sequence[int | None]
) -> np.ndarray:
    """Per layer, head x head correlation of patterns averaged over prompts: [1, L, H, H]."""
    n = count.shape[-1]
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    out = []
    for layer, window in enumerate(windows):
        cells = count > 0
        if region == "lower":
            cells &= k <= q
            if window is not None:
                cells &= (q - k) < window
        mean = total[layer][:, cells] / count[cells]
        out.append(corrcoef_rows(mean))
    return np.stack(out)[None]


def _warn_undefined(n: int, where: str) -> None:
    if n:
        warnings.warn(
            f"{n} {where} had zero variance, so their correlations are undefined; they were "
            "excluded from the means and counted in result.undefined_heads.",
            TLSpecWarning,
            stacklevel=3,
        )


def _layer_mean(per_layer: np.ndarray) -> tuple[float, list[int]]:
    excluded = [int(i) for i in np.flatnonzero(np.isnan(per_layer))]
    if excluded:
        warnings.warn(
            f"layers {excluded} have no defined head correlation and were excluded from the "
            "model-level SI.",
            TLSpecWarning,
            stacklevel=3,
        )
    if len(excluded) == len(per_layer):
        raise TLSpecError("no layer has a defined SI: every head pattern had zero variance")
    return float(np.nanmean(per_layer)), excluded


def specialization_index(
    model: Any,
    prompts: PromptInput,
    *,
    attention_mask: Any = None,
    options: SIOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> SIResult:
    """Specialization Index of ``model`` on ``prompts``, by any of the three published definitions.

    ``method="pattern"`` (Eq. 1 of the paper): per prompt and layer, 1 - mean Pearson correlation
    between heads over the ``region``'s entries; ``.per_layer`` averages prompts, ``.value``
    layers. ``aggregate="mean_pattern"`` is the paper's snippet (average patterns over prompts
    first). ``"entropy_profile"``: the route of the E11 notebooks behind every published SI (one
    number per model). ``"normalized_entropy"``: 1 - mean row entropy / ln(n) per layer.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (or a look-alike).
        prompts: a list of strings, a PromptSet, a ``[batch, pos]`` token tensor or a list of
            1-D token tensors (token ids need no tokenizer).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: an :class:`~tl_spec.options.SIOptions`; keyword options override its fields.
        progress: show a progress bar.
        **option_values: any :class:`~tl_spec.options.SIOptions` field (``method``, ``region``,
            ``max_length``, ...).

    Returns:
        :class:`SIResult`.

    >>> r = specialization_index(model, ["The cat sat.", "Dogs bark loudly."])  # doctest: +SKIP
    >>> r.value, r.per_layer  # doctest: +SKIP
    """
    opts = SIOptions.build(options, **option_values)
    require_pattern_hooks(model)
    inputs = prepare_inputs(model, prompts, attention_mask=attention_mask,
                            max_length=opts.max_length, prepend_bos=opts.prepend_bos,
                            route=opts.route)
    return si_from_inputs(model, inputs, opts, progress=progress)


def _routed(model: Any, inputs: Inputs, opts: SIOptions) -> Inputs:
    """``inputs`` as ``opts.route`` prepares them (re-tokenized and padded where needed)."""
    have = inputs.tokenized.route
    if have == opts.route and (have == "tl_spec" or inputs.tokenized.pad_to == opts.max_length):
        return inputs
    if opts.route == "tl_spec":
        raise TLSpecError(
            f"these inputs were prepared for route={have!r} but the options say route='tl_spec'; "
            "prepare them again with prepare_inputs(..., route='tl_spec')"
        )
    return route_inputs(model, inputs, route=opts.route, max_length=opts.max_length)


def si_from_inputs(model: Any, inputs: Inputs, opts: SIOptions, *,
                   progress: bool = False) -> SIResult:
    """:func:`specialization_index` on prompts already prepared by :func:`~tl_spec.tokens.prepare_inputs`."""
    method, region, aggregate, route = opts.method, opts.region, opts.aggregate, opts.route
    inputs = _routed(model, inputs, opts)
    facts = describe(model, seq_len=opts.max_length)
    tokenized = inputs.tokenized
    stat = "mean_pattern" if aggregate == "mean_pattern" else _STAT_FOR[method]
    routed = route != "tl_spec"
    # a route's batches are padded to max_length on the tokenizer's side (tokens.batches); the
    # model runs them unmasked, from position 0, and the hooks apply the padding mask exactly
    # as Hugging Face eager attention does
    stats = PatternStats(model, stats=(stat,), region=region, dtype=opts.torch_dtype,
                         max_positions=max(tokenized.lengths),
                         rows="all" if route in _ALL_ROWS else "valid", eager_padding=routed)
    order = run_batches(model, tokenized, stats, batch_size=opts.batch_size,
                        padding_side="right" if routed else opts.padding_side,
                        progress=progress)
    raw = stats.collect()
    inverse = np.argsort(order)
    kv = facts.n_kv_heads
    fields: dict[str, Any] = dict(head_correlation=None, within_group=None, between_group=None,
                                  entropies=None, per_prompt=None, per_prompt_heads=None,
                                  excluded_layers=[], undefined_heads=0)
    if method == "pattern":
        if aggregate == "mean_pattern":
            corr = _mean_pattern_corr(raw["mean_pattern_sum"], raw["mean_pattern_count"],
                                      region, facts.windows)
        else:
            corr = raw["correlation"][inverse]
        summary = si_from_correlations(corr)
        _warn_undefined(summary.undefined_heads, "(prompt, layer, head) patterns")
        value, excluded = _layer_mean(summary.per_layer)
        fields.update(head_correlation=summary.head_correlation, excluded_layers=excluded,
                      undefined_heads=summary.undefined_heads)
        if aggregate == "prompt":
            fields["per_prompt"] = summary.per_prompt_layer
            fields["per_prompt_heads"] = summary.per_prompt_head_correlation
        if kv < facts.n_heads and kv > 1:
            fields["within_group"], fields["between_group"] = gqa_group_split(corr, kv)
        per_layer, per_head = summary.per_layer, 1.0 - summary.head_correlation
    elif method == "entropy_profile":
        per_prompt_heads = raw["column_entropy"][inverse]
        entropies = per_prompt_heads.mean(axis=0)
        corr = corrcoef_rows(entropies.T)
        undefined = int(np.isnan(np.diagonal(corr)).sum())
        _warn_undefined(undefined, "heads' entropy profiles across layers")
        value = si_from_entropy_profile(entropies)
        fields.update(entropies=entropies, per_prompt_heads=per_prompt_heads,
                      undefined_heads=undefined)
        per_layer, per_head = None, entropies
        if np.isnan(value):
            raise TLSpecError("entropy-profile SI undefined: every head's profile is constant")
    else:
        per_prompt_head, per_prompt = si_from_row_entropy(raw["row_entropy"][inverse],
                                                          np.array(tokenized.norm_lengths))
        per_layer = per_prompt.mean(axis=0)
        per_head = per_prompt_head.mean(axis=0)
        value = float(per_layer.mean())
        fields.update(per_prompt=per_prompt, per_prompt_heads=per_prompt_head)
    settings = dict(opts.to_dict(), prepend_bos=tokenized.prepend_bos,
                    n_prompts=len(tokenized.ids), n_truncated=tokenized.n_truncated,
                    input="token ids" if inputs.from_tokens else "text",
                    per_head_meaning=_PER_HEAD_MEANING[method])
    if routed:
        settings.update(route_note=ROUTE_NOTE[route], padded_to=tokenized.pad_to,
                        pad_token_id=tokenized.pad_token, route_padding_side=tokenized.pad_side)
    return SIResult(
        method=method,
        value=float(value),
        per_layer=per_layer,
        per_head=per_head,
        tokens=[list(t) for t in tokenized.ids],
        settings=settings,
        provenance=provenance(model, prompts=inputs.info, architecture=facts.to_dict(),
                              options=settings),
        **fields,
    )
