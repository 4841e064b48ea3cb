"""ΔSI between model twins (base vs tuned) with prompt-bootstrap intervals and permutation tests.

The sampling unit is the prompt: one resample of prompts drives both models (paired), and the
null hypothesis swaps base and tuned within each prompt. Resampling works on the per-prompt
statistics each SI run keeps, so no model is ever re-run.

Prompts are text (a list of strings or a PromptSet; the tuned model may get them in a chat
template) or token ids (a ``[batch, pos]`` tensor with an optional ``attention_mask``, or a list
of 1-D tensors), which both models receive unchanged. Options are
:class:`~tl_spec.options.SIOptions` and :class:`~tl_spec.options.StatsOptions` fields.

>>> d = delta_si(base, tuned, STANDARD_10, method="pattern")  # doctest: +SKIP
>>> d.delta_pct, d.interval, d.pvalue, d.changed_layers       # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_spec.display import short_name
from tl_spec.errors import TLSpecError
from tl_spec.experiments.si import SIResult, si_from_inputs
from tl_spec.metrics.specialization import si_value_from_prompts
from tl_spec.models import describe, require_pattern_hooks
from tl_spec.options.base import split_options
from tl_spec.options.si import SIOptions, StatsOptions
from tl_spec.records import Result, array, jsonable, versions
from tl_spec.stats import Interval, holm, paired_bootstrap, paired_permutation_test
from tl_spec.tokens import Inputs, PromptInput, prepare_inputs

__all__ = [
    "DeltaResult",
    "SIOptions",
    "StatsOptions",
    "check_stats_options",
    "delta_from_results",
    "delta_si",
    "provenance_pair",
    "relative_change",
]


def relative_change(base: Any, tuned: Any) -> Any:
    """ΔSI in percent (Eq. 2 of the paper): (tuned - base) / base x 100.

    >>> float(relative_change(0.5, 0.4).round(9))
    -20.0
    """
    return (np.asarray(tuned) - np.asarray(base)) / np.asarray(base) * 100.0


def _interval(record: dict[str, Any]) -> Interval:
    return Interval(**record)


@dataclass(repr=False)
class DeltaResult(Result):
    """ΔSI of a twin pair: both SI results, ΔSI (%), its interval and p-value, per layer and head.

    ``layer_intervals`` are simultaneous (Bonferroni) intervals at ``1 - (1 - confidence) / L``;
    ``layer_pvalues_holm`` are Holm-adjusted; ``changed_layers`` are the layers whose adjusted
    p-value is below ``1 - confidence``.
    """

    kind = "delta_si"
    decoders = {
        "base": SIResult.from_dict,
        "tuned": SIResult.from_dict,
        "interval": _interval,
        "layer_intervals": lambda v: None if v is None else [_interval(x) for x in v],
        "per_layer_delta_pct": array,
        "per_head_delta": array,
        "layer_pvalues": array,
        "layer_pvalues_holm": array,
    }
    method: str
    base: SIResult
    tuned: SIResult
    delta_pct: float
    interval: Interval
    pvalue: float
    per_layer_delta_pct: Float[np.ndarray, "n_layers"] | None
    per_head_delta: Float[np.ndarray, "n_layers n_heads"]
    layer_intervals: list[Interval] | None
    layer_pvalues: Float[np.ndarray, "n_layers"] | None
    layer_pvalues_holm: Float[np.ndarray, "n_layers"] | None
    changed_layers: list[int]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def model_names(self) -> list[str]:
        """``[base, tuned]``: the short names of the two models."""
        prov = self.provenance or {}
        names = []
        for role, si in (("base", self.base), ("tuned", self.tuned)):
            ref = (prov.get(role) or {}).get("model")
            names.append(short_name(ref) if ref else (si.model_names() or [role])[0])
        return names

    def headline(self) -> dict[str, Any]:
        """SI of each model, ΔSI (%), its interval and the paired permutation p-value."""
        return {"SI base": self.base.value, "SI tuned": self.tuned.value,
                "ΔSI %": self.delta_pct, "CI": self.interval, "p": self.pvalue}

    def tags(self) -> list[str]:
        """The SI method, and the route when it is a reproduction route (as the SI results)."""
        return self.base.tags()

    def heat(self) -> tuple[str, np.ndarray, bool | None]:
        """Per-head change of the per-head score, tuned − base (diverging around 0)."""
        meaning = self.base.settings.get("per_head_meaning") or "per-head score"
        return f"Δ {meaning} (tuned − base)", self.per_head_delta, True

    def summary(self) -> str:
        """SI of each model, ΔSI with interval and p-value, and the layers that changed."""
        iv = self.interval
        base, tuned = self.model_names()
        lines = [
            f"ΔSI of {tuned} vs {base}, method: {self.method}"
            + ("" if self.base.route == "tl_spec" else
               f", route: {self.base.route} (a reproduction of an artifact of the paper's code)"),
            f"SI base  = {self.base.value:.6f}",
            f"SI tuned = {self.tuned.value:.6f}",
            f"ΔSI = {self.delta_pct:+.3f} %   {iv.level:.0%} CI [{iv.low:+.3f}, {iv.high:+.3f}] "
            f"({iv.method}{'; ' + iv.fallback_reason if iv.fallback_reason else ''})",
            f"paired permutation test: p = {self.pvalue:.4g}",
        ]
        if (self.per_layer_delta_pct is not None and self.layer_intervals is not None
                and self.layer_pvalues_holm is not None):
            lines.append(f"{'layer':>5}  {'ΔSI %':>9}  {'simultaneous CI':>22}  {'p (Holm)':>9}")
            for layer, (d, iv_l, p) in enumerate(
                zip(self.per_layer_delta_pct, self.layer_intervals, self.layer_pvalues_holm)
            ):
                mark = "  *" if layer in self.changed_layers else ""
                lines.append(f"{layer:>5}  {d:+9.3f}  [{iv_l.low:+9.3f}, {iv_l.high:+9.3f}]  "
                             f"{p:9.4g}{mark}")
            lines.append(f"layers whose change survives Holm correction: {self.changed_layers}")
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """Tidy per-layer table: both models, SI of each, ΔSI %, interval, p-values, changed flag.

        Methods without a per-layer SI (``entropy_profile``) give one model-level row
        (``layer`` is ``None``).

        >>> d.to_frame().query("changed")  # doctest: +SKIP
        """
        import pandas as pd

        base, tuned = self.model_names()
        common = {"model_base": base, "model_tuned": tuned, "method": self.method}
        if (self.per_layer_delta_pct is None or self.layer_intervals is None
                or self.layer_pvalues is None or self.layer_pvalues_holm is None
                or self.base.per_layer is None or self.tuned.per_layer is None):
            return pd.DataFrame([{**common, "layer": None, "si_base": self.base.value,
                                  "si_tuned": self.tuned.value, "delta_pct": self.delta_pct,
                                  "ci_low": self.interval.low, "ci_high": self.interval.high,
                                  "ci_level": self.interval.level, "pvalue": self.pvalue}])
        return pd.DataFrame([
            {**common, "layer": layer, "si_base": float(self.base.per_layer[layer]),
             "si_tuned": float(self.tuned.per_layer[layer]),
             "delta_pct": float(self.per_layer_delta_pct[layer]),
             "ci_low": self.layer_intervals[layer].low, "ci_high": self.layer_intervals[layer].high,
             "ci_level": self.layer_intervals[layer].level,
             "pvalue": float(self.layer_pvalues[layer]),
             "pvalue_holm": float(self.layer_pvalues_holm[layer]),
             "changed": layer in self.changed_layers}
            for layer in range(len(self.per_layer_delta_pct))
        ])


def check_stats_options(confidence: float, n_resamples: int, n_prompts: int) -> None:
    """Deprecated: build :class:`~tl_spec.options.StatsOptions` (it validates itself) and call
    its ``check_units(n_prompts)``.

    >>> check_stats_options(0.95, 50, 10)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: n_resamples must be an integer >= 100, got 50
    """
    warnings.warn("check_stats_options is deprecated; StatsOptions(confidence=..., "
                  "n_resamples=...) validates itself and .check_units(n) checks the prompt count",
                  DeprecationWarning, stacklevel=2)
    StatsOptions(confidence=confidence, n_resamples=n_resamples).check_units(n_prompts)


def _stat_for(method: str) -> Any:
    """ΔSI % of the model-level SI from per-prompt summaries of base and tuned."""
    return lambda b, t: relative_change(si_value_from_prompts(method, b),
                                        si_value_from_prompts(method, t))


def _layer_stat(layer: int) -> Any:
    def stat(b: np.ndarray, t: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return relative_change(np.nanmean(b[..., layer], axis=-1),
                                   np.nanmean(t[..., layer], axis=-1))

    return stat


def _by_index(stat: Any, b: np.ndarray, t: np.ndarray) -> Any:
    """A statistic of resampled prompt indices [..., P] (paired: one index drives both models)."""
    return lambda idx: stat(b[idx], t[idx])


def delta_from_results(
    base: SIResult,
    tuned: SIResult,
    *,
    stats: StatsOptions | None = None,
    settings: dict[str, Any] | None = None,
    **option_values: Any,
) -> DeltaResult:
    """ΔSI with statistics from two SI results computed on the same prompts (no model runs).

    Args:
        base: SI of the base model (``aggregate="prompt"``, so per-prompt statistics are kept).
        tuned: SI of the tuned model on the same prompts, in the same order, same method.
        stats: a :class:`~tl_spec.options.StatsOptions`; keyword options override its fields.
        settings: extra entries recorded in the result's ``settings``.
        **option_values: ``confidence``, ``n_resamples`` or ``seed``.

    Returns:
        :class:`DeltaResult`.

    >>> d = delta_from_results(si_base, si_tuned, n_resamples=2000)  # doctest: +SKIP
    """
    st = StatsOptions.build(stats, **option_values)
    if base.method != tuned.method:
        raise TLSpecError(f"the SI results use different methods ({base.method} vs {tuned.method})")
    if base.route != tuned.route:
        raise TLSpecError(f"the SI results use different routes ({base.route} vs {tuned.route}); "
                          "measure both with the same SIOptions.route")
    if base.per_head.shape != tuned.per_head.shape:
        raise TLSpecError(
            f"the models differ in shape: base has [layers, heads] = {list(base.per_head.shape)}, "
            f"tuned {list(tuned.per_head.shape)}; ΔSI compares twins of one architecture"
        )
    if len(base.tokens) != len(tuned.tokens):
        raise TLSpecError(
            f"mismatched prompt counts: base ran {len(base.tokens)} prompts, tuned "
            f"{len(tuned.tokens)}; both must run the same prompts, in the same order"
        )
    n_prompts = len(base.tokens)
    st.check_units(n_prompts)
    confidence, n_resamples, seed = st.confidence, st.n_resamples, st.seed
    if base.method == "entropy_profile":
        b, t = base.per_prompt_heads, tuned.per_prompt_heads
    else:
        b, t = base.per_prompt, tuned.per_prompt
    stat = _stat_for(base.method)
    if b is None or t is None:
        raise TLSpecError(
            "these SI results keep no per-prompt statistics (aggregate='mean_pattern' pools "
            "prompts before correlating), so prompts cannot be resampled; use aggregate='prompt'"
        )
    delta = float(stat(b, t))
    interval = paired_bootstrap(_by_index(stat, b, t), n_prompts, confidence=confidence,
                                n_resamples=n_resamples, seed=seed)
    test = paired_permutation_test(stat, b, t, n_resamples=n_resamples, seed=seed)
    per_layer = layer_intervals = layer_p = layer_holm = None
    changed: list[int] = []
    if base.per_layer is not None and base.method != "entropy_profile":
        n_layers = b.shape[-1]
        per_layer = relative_change(base.per_layer, tuned.per_layer)
        level = 1 - (1 - confidence) / n_layers
        layer_intervals = [
            paired_bootstrap(_by_index(_layer_stat(x), b, t), n_prompts, confidence=level,
                             n_resamples=n_resamples, seed=seed + x)
            for x in range(n_layers)
        ]
        layer_p = np.array([
            paired_permutation_test(_layer_stat(x), b, t, n_resamples=n_resamples,
                                    seed=seed + x).pvalue
            for x in range(n_layers)
        ])
        layer_holm = holm(layer_p)
        changed = [int(x) for x in np.flatnonzero(layer_holm < 1 - confidence)]
    options = dict(st.to_dict(), sampling_unit="prompt", paired=True,
                   layer_correction="Holm (p-values); Bonferroni level (intervals)",
                   **(settings or {}))
    return DeltaResult(
        method=base.method,
        base=base,
        tuned=tuned,
        delta_pct=delta,
        interval=interval,
        pvalue=float(test.pvalue),
        per_layer_delta_pct=per_layer,
        per_head_delta=tuned.per_head - base.per_head,
        layer_intervals=layer_intervals,
        layer_pvalues=layer_p,
        layer_pvalues_holm=layer_holm,
        changed_layers=changed,
        settings=options,
        provenance=provenance_pair(base, tuned, options),
    )


def provenance_pair(base: SIResult, tuned: SIResult, options: dict[str, Any]) -> dict[str, Any]:
    """Provenance of a comparison: versions and time now, and each model's own record."""
    keys = ("backend", "model", "model_config_hash", "dtype", "device", "prompts")
    return jsonable({
        "versions": versions(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": {k: base.provenance.get(k) for k in keys},
        "tuned": {k: tuned.provenance.get(k) for k in keys},
        "options": options,
    })


def _apply_template(model: Any, prompts: list[str], template: bool | str) -> tuple[list[str], dict]:
    tok = getattr(model, "tokenizer", None)
    explicit = template if isinstance(template, str) else None
    if tok is None or not hasattr(tok, "apply_chat_template"):
        raise TLSpecError("the tuned model has no tokenizer with apply_chat_template")
    if explicit is None and not getattr(tok, "chat_template", None):
        raise TLSpecError(
            "chat_template=True but the tuned model's tokenizer defines no chat template; pass "
            "the template string as chat_template=... or leave it None"
        )
    rendered = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                add_generation_prompt=True, chat_template=explicit)
        for p in prompts
    ]
    source = explicit or tok.chat_template
    info = {"applied": True, "source": "argument" if explicit else "tokenizer",
            "template_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "example": rendered[0]}
    return rendered, info




def _check_twins(base: Any, tuned: Any) -> None:
    """Both models expose pattern hooks and share one architecture (layers, heads, KV heads)."""
    for model in (base, tuned):
        require_pattern_hooks(model)
    fb, ft = describe(base), describe(tuned)
    shape_b = (fb.n_layers, fb.n_heads, fb.n_kv_heads)
    shape_t = (ft.n_layers, ft.n_heads, ft.n_kv_heads)
    if shape_b != shape_t:
        raise TLSpecError(
            f"the models differ in architecture: base (layers, heads, KV heads) = {shape_b}, tuned "
            f"= {shape_t}; ΔSI compares twins of one architecture"
        )


def _same_tokens(inputs_b: Inputs, inputs_t: Inputs) -> None:
    """Refuse prompts the two models tokenize differently (their patterns would not align)."""
    ids_b, ids_t = inputs_b.tokenized.ids, inputs_t.tokenized.ids
    if ids_b != ids_t:
        first = next(i for i, (a, c) in enumerate(zip(ids_b, ids_t)) if a != c)
        raise TLSpecError(
            f"the two models tokenize prompt {first} differently, so their patterns are not "
            "over the same tokens; pass allow_different_tokenizers=True to let each model "
            "tokenize its own prompts"
        )


def delta_si(
    base: Any,
    tuned: Any,
    prompts: PromptInput,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    chat_template: bool | str | None = None,
    allow_different_tokenizers: bool = False,
    si_options: SIOptions | None = None,
    stats: StatsOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> DeltaResult:
    """ΔSI (%) of ``tuned`` vs ``base`` on the same prompts, with paired statistics over prompts.

    Options are :class:`~tl_spec.options.SIOptions` fields (``method``, ``region``,
    ``max_length``, ...) and :class:`~tl_spec.options.StatsOptions` fields (``confidence``,
    ``n_resamples``, ``seed``), as keywords or as ``si_options=`` / ``stats=``; all are checked,
    with the prompts, before any model runs. ``aggregate`` must be ``"prompt"`` (the prompt is
    the resampling unit).

    Args:
        base: the base model (``HookedTransformer`` or ``TransformerBridge``).
        tuned: its twin of the same architecture (e.g. after fine-tuning).
        prompts: a list of strings, a PromptSet, a ``[batch, pos]`` token tensor or a list of
            1-D token tensors; token ids go to both models unchanged (no tokenizer needed).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        chat_template: text prompts only: ``True`` wraps each prompt for the tuned model in its
            tokenizer's chat template, a string uses that template (as the paper did for
            instruct models).
        allow_different_tokenizers: let each model tokenize the prompts its own way (otherwise
            prompts the two tokenize differently are refused).
        si_options: an :class:`~tl_spec.options.SIOptions`; keyword options override its fields.
        stats: a :class:`~tl_spec.options.StatsOptions`; keyword options override its fields.
        progress: show progress bars over the forward passes.
        **option_values: any ``SIOptions`` or ``StatsOptions`` field.

    Returns:
        :class:`DeltaResult`.

    >>> d = delta_si(base, tuned, STANDARD_10, n_resamples=2000)  # doctest: +SKIP
    >>> print(d.summary())                                        # doctest: +SKIP
    """
    opts, st = split_options(option_values, (SIOptions, si_options), (StatsOptions, stats))
    if opts.aggregate != "prompt":
        raise TLSpecError("delta_si resamples prompts, so it needs aggregate='prompt'")
    if chat_template is not None and not isinstance(chat_template, (bool, str)):
        raise TLSpecError(f"chat_template must be True, a template string or None, got "
                          f"{type(chat_template).__name__}")
    _check_twins(base, tuned)
    inputs_b = prepare_inputs(base, prompts, attention_mask=attention_mask,
                              max_length=opts.max_length, prepend_bos=opts.prepend_bos)
    if inputs_b.from_tokens and chat_template:
        raise TLSpecError(
            "chat_template applies to text prompts; token ids go to both models exactly as "
            "given, so apply the template before tokenizing (or pass the prompts as text)"
        )
    st.check_units(len(inputs_b))
    template_info: dict[str, Any] = {"applied": False}
    opts_t = opts
    if inputs_b.from_tokens:  # the same ids for both models
        inputs_t = prepare_inputs(tuned, prompts, attention_mask=attention_mask,
                                  max_length=opts.max_length)
    elif chat_template:
        rendered, template_info = _apply_template(tuned, list(inputs_b.texts or ()),
                                                  chat_template)
        if not allow_different_tokenizers:  # compared on the raw prompts, before the template
            _same_tokens(inputs_b, prepare_inputs(tuned, prompts, max_length=opts.max_length,
                                                  prepend_bos=opts.prepend_bos))
        bos = getattr(tuned.tokenizer, "bos_token", None)
        if bos and all(p.startswith(bos) for p in rendered) and opts.route == "tl_spec":
            # (a reproduction route tokenizes the rendered text as the notebooks did, with the
            # tokenizer's own special tokens, a doubled BOS included)
            opts_t = opts.replace(prepend_bos=False)  # the template already starts with BOS
        inputs_t = prepare_inputs(tuned, rendered, max_length=opts.max_length,
                                  prepend_bos=opts_t.prepend_bos)
    else:
        inputs_t = prepare_inputs(tuned, prompts, max_length=opts.max_length,
                                  prepend_bos=opts.prepend_bos)
    if not allow_different_tokenizers and not chat_template:
        _same_tokens(inputs_b, inputs_t)
    si_b = si_from_inputs(base, inputs_b, opts, progress=progress)
    si_t = si_from_inputs(tuned, inputs_t, opts_t, progress=progress)
    return delta_from_results(
        si_b, si_t, stats=st,
        settings=dict(chat_template=template_info,
                      allow_different_tokenizers=allow_different_tokenizers,
                      input="token ids" if inputs_b.from_tokens else "text",
                      si_options=opts.to_dict()),
    )
