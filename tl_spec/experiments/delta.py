"""ΔSI between model twins (base vs tuned) with prompt-bootstrap intervals and permutation tests.

The sampling unit is the prompt: one resample of prompts drives both models (paired), and the
null hypothesis swaps base and tuned within each prompt. Resampling works on the per-prompt
statistics each SI run keeps, so no model is ever re-run.

>>> d = delta_si(base, tuned, STANDARD_10, method="pattern")  # doctest: +SKIP
>>> d.delta_pct, d.interval, d.pvalue, d.changed_layers       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.experiments.si import SIResult, check_options, specialization_index
from tl_spec.metrics.specialization import si_value_from_prompts
from tl_spec.models import describe, require_pattern_hooks
from tl_spec.prompts import PromptSet, as_prompt_set
from tl_spec.records import Result, array
from tl_spec.stats import Interval, holm, paired_bootstrap, paired_permutation_test
from tl_spec.tokens import tokenize, validate_prompts

__all__ = [
    "DeltaResult",
    "check_stats_options",
    "delta_from_results",
    "delta_si",
    "relative_change",
]


def relative_change(base: Any, tuned: Any) -> Any:
    """ΔSI in percent (GUIDE Eq. 2): (tuned - base) / base x 100.

    >>> float(relative_change(0.5, 0.4).round(9))
    -20.0
    """
    return (np.asarray(tuned) - np.asarray(base)) / np.asarray(base) * 100.0


def _interval(record: dict[str, Any]) -> Interval:
    return Interval(**record)


@dataclass
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

    def summary(self) -> str:
        """SI of each model, ΔSI with interval and p-value, and the layers that changed."""
        iv = self.interval
        lines = [
            f"method: {self.method}",
            f"SI base  = {self.base.value:.6f}",
            f"SI tuned = {self.tuned.value:.6f}",
            f"ΔSI = {self.delta_pct:+.3f} %   {iv.level:.0%} CI [{iv.low:+.3f}, {iv.high:+.3f}] "
            f"({iv.method}{'; ' + iv.fallback_reason if iv.fallback_reason else ''})",
            f"paired permutation test: p = {self.pvalue:.4g}",
        ]
        if self.per_layer_delta_pct is not None and self.layer_intervals is not None:
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
        """Tidy per-layer table: SI of each model, ΔSI %, interval, p-values, changed flag."""
        import pandas as pd

        if self.per_layer_delta_pct is None:
            return pd.DataFrame([{"layer": None, "si_base": self.base.value,
                                  "si_tuned": self.tuned.value, "delta_pct": self.delta_pct,
                                  "ci_low": self.interval.low, "ci_high": self.interval.high,
                                  "pvalue": self.pvalue}])
        assert self.layer_intervals is not None and self.layer_pvalues is not None
        return pd.DataFrame([
            {"layer": layer, "si_base": float(self.base.per_layer[layer]),
             "si_tuned": float(self.tuned.per_layer[layer]),
             "delta_pct": float(self.per_layer_delta_pct[layer]),
             "ci_low": self.layer_intervals[layer].low, "ci_high": self.layer_intervals[layer].high,
             "pvalue": float(self.layer_pvalues[layer]),
             "pvalue_holm": float(self.layer_pvalues_holm[layer]),
             "changed": layer in self.changed_layers}
            for layer in range(len(self.per_layer_delta_pct))
        ])


def check_stats_options(confidence: float, n_resamples: int, n_prompts: int) -> None:
    """Validate the statistics options before any model runs.

    >>> check_stats_options(0.95, 50, 10)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: n_resamples must be an integer >= 100, got 50
    """
    if not isinstance(confidence, float | int) or not 0 < confidence < 1:
        raise TLSpecError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise TLSpecError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    if n_prompts < 2:
        raise TLSpecError(
            f"a bootstrap over prompts needs at least 2 prompts, got {n_prompts}; the prompt is "
            "the sampling unit of the interval"
        )


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
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> DeltaResult:
    """ΔSI with statistics from two SI results computed on the same prompts (no model runs).

    >>> d = delta_from_results(si_base, si_tuned)  # doctest: +SKIP
    """
    if base.method != tuned.method:
        raise TLSpecError(f"the SI results use different methods ({base.method} vs {tuned.method})")
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
    check_stats_options(confidence, n_resamples, n_prompts)
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
    options = dict(confidence=confidence, n_resamples=n_resamples, seed=seed,
                   sampling_unit="prompt", paired=True,
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
    import datetime as _dt

    from tl_spec.records import jsonable, versions

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


def delta_si(
    base: Any,
    tuned: Any,
    prompts: Sequence[str] | PromptSet,
    *,
    method: str = "pattern",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    chat_template: bool | str | None = None,
    allow_different_tokenizers: bool = False,
    **si_options: Any,
) -> DeltaResult:
    """ΔSI (%) of ``tuned`` vs ``base`` on the same prompts, with paired statistics over prompts.

    ``chat_template`` (``True`` for the tuned tokenizer's own, or a template string) wraps each
    prompt for the tuned model as the paper did for instruct models; ``si_options`` go to
    :func:`~tl_spec.specialization_index` (``region``, ``max_length``, ``batch_size``, ...).

    >>> d = delta_si(base, tuned, STANDARD_10)  # doctest: +SKIP
    >>> print(d.summary())                      # doctest: +SKIP
    """
    region = si_options.get("region", "lower")
    aggregate = si_options.get("aggregate", "prompt")
    check_options(method, region, aggregate, si_options.get("batch_size", 16),
                  si_options.get("max_length", 128), si_options.get("padding_side", "right"))
    if aggregate != "prompt":
        raise TLSpecError("delta_si resamples prompts, so it needs aggregate='prompt'")
    pset = as_prompt_set(prompts) if isinstance(prompts, PromptSet) else None
    prompt_list = validate_prompts(pset.prompts if pset else prompts)
    check_stats_options(confidence, n_resamples, len(prompt_list))
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
    tuned_prompts, template_info = prompt_list, {"applied": False}
    if chat_template:
        tuned_prompts, template_info = _apply_template(tuned, prompt_list, chat_template)
    max_length = si_options.get("max_length", 128)
    tok_b = tokenize(base, prompt_list, max_length=max_length,
                     prepend_bos=si_options.get("prepend_bos"))
    if not allow_different_tokenizers:  # compared on the raw prompts, before any template
        tok_t = tokenize(tuned, prompt_list, max_length=max_length,
                         prepend_bos=si_options.get("prepend_bos"))
        if tok_b.ids != tok_t.ids:
            first = next(i for i, (a, c) in enumerate(zip(tok_b.ids, tok_t.ids)) if a != c)
            raise TLSpecError(
                f"the two models tokenize prompt {first} differently, so their patterns are not "
                "over the same tokens; pass allow_different_tokenizers=True to let each model "
                "tokenize its own prompts"
            )
    tuned_options = dict(si_options)
    if chat_template:
        bos = getattr(tuned.tokenizer, "bos_token", None)
        if bos and all(p.startswith(bos) for p in tuned_prompts):
            tuned_options["prepend_bos"] = False  # the template already starts with BOS
    si_b = specialization_index(base, pset or prompt_list, method=method, **si_options)
    si_t = specialization_index(tuned, tuned_prompts, method=method, **tuned_options)
    return delta_from_results(
        si_b, si_t, confidence=confidence, n_resamples=n_resamples, seed=seed,
        settings=dict(chat_template=template_info,
                      allow_different_tokenizers=allow_different_tokenizers,
                      si_options={k: v for k, v in si_options.items()}),
    )
