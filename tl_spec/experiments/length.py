"""SI versus prompt length: the Specialization Index at several truncation lengths, windows marked.

At each length ``L`` every prompt is truncated to ``min(its length, L)`` tokens, exactly what
``specialization_index(..., max_length=L)`` measures; each length gets a bootstrap interval over
prompts (the sampling unit) and, where the method has one, the SI of each layer. A layer with a
sliding window ``w`` (query ``q`` sees key ``k`` iff ``0 <= q - k < w``) is bound by it once a
prompt has more than ``w`` tokens: the result marks, per layer, the first length at which that
happens on these prompts. Below it, the window cannot have shaped the measurement, so an SI
difference between a sliding-window model and a global-attention one measured there is no
window effect (D'Elia 2026 compares at 128 tokens, where 4,096-token windows never bind).

One forward pass at the longest length gives every length (``reuse=True``, the default): with
causal attention the pattern of a truncated prompt is the top-left block of the full one
(:class:`~tl_spec.hooks.length.PrefixPatternStats`). ``reuse=False`` runs
:func:`~tl_spec.experiments.si.specialization_index` once per length instead.

>>> from tl_spec.zoo.registry import load
>>> from tl_spec.prompts import STANDARD_10
>>> prof = length_profile(load("base-swa"), STANDARD_10, method="entropy_profile")  # doctest: +SKIP
>>> prof.si, prof.binding_from  # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.si import si_from_inputs
from tl_spec.hooks.length import PrefixPatternStats
from tl_spec.metrics.specialization import (
    si_from_correlations,
    si_from_entropy_profile,
    si_from_row_entropy,
    si_value_from_prompts,
)
from tl_spec.models import describe, require_pattern_hooks
from tl_spec.options.base import split_options
from tl_spec.options.length import LengthOptions
from tl_spec.options.si import SIOptions, StatsOptions
from tl_spec.records import Result, array, provenance
from tl_spec.running import run_batches
from tl_spec.stats import Interval, paired_bootstrap
from tl_spec.tokens import Inputs, PromptInput, Tokenized, prepare_inputs

__all__ = ["LengthOptions", "LengthProfileResult", "length_profile"]

_STAT_FOR = {"pattern": "correlation", "entropy_profile": "column_entropy",
             "normalized_entropy": "row_entropy"}


def _interval(value: Any) -> Interval:
    return value if isinstance(value, Interval) else Interval(**value)


def _intervals(values: list[Any]) -> list[Interval]:
    return [_interval(v) for v in values]


@dataclass(repr=False)
class LengthProfileResult(Result):
    """SI of one model at several truncation lengths, with intervals and window-binding marks.

    ``si[i]`` is the SI at ``lengths[i]`` (equal to ``specialization_index(...,
    max_length=lengths[i]).value``), ``intervals[i]`` its bootstrap interval over prompts,
    ``per_layer[i]`` the layer SIs (``None`` for ``entropy_profile``, a model-level definition).
    ``windows`` holds each layer's sliding window (``None``: global); ``n_beyond_window[i, l]``
    counts the prompts longer than layer ``l``'s window after truncation to ``lengths[i]``, and
    ``binding_from[l]`` is the first length at which it is non-zero (``None``: never, here).
    ``per_prompt[i]`` keeps the per-prompt statistics behind ``si[i]`` ([prompts, layers], or
    [prompts, layers, heads] for ``entropy_profile``), so resampling never re-runs the model.
    """

    kind = "length_profile"
    decoders = {"si": array, "per_layer": array, "n_beyond_window": array,
                "per_prompt": array, "intervals": _intervals}
    method: str
    lengths: list[int]
    si: Float[np.ndarray, "n_lengths"]
    intervals: list[Interval]
    per_layer: Float[np.ndarray, "n_lengths n_layers"] | None
    windows: list[int | None]
    n_beyond_window: Float[np.ndarray, "n_lengths n_layers"]
    binding_from: list[int | None]
    n_truncated: list[int]
    prompt_lengths: list[int]
    per_prompt: Float[np.ndarray, "n_lengths n_prompts ..."]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    @property
    def first_binding(self) -> int | None:
        """The shortest length at which any layer's window binds on these prompts (or ``None``)."""
        found = [x for x in self.binding_from if x is not None]
        return min(found) if found else None

    def headline(self) -> dict[str, Any]:
        """SI at the shortest and longest length, and where a window first binds."""
        first, last = self.lengths[0], self.lengths[-1]
        binds = self.first_binding
        return {f"SI@{first}": float(self.si[0]), f"SI@{last}": float(self.si[-1]),
                "window binds from": "never" if binds is None else binds}

    def to_frame(self) -> Any:
        """Tidy table, one row per (length, layer): SI with its interval, layer SI, window facts.

        >>> prof.to_frame().query("window_binds")  # doctest: +SKIP
        """
        import pandas as pd

        model = (self.model_names() or [None])[0]
        rows = []
        for i, n in enumerate(self.lengths):
            iv = self.intervals[i]
            for layer, window in enumerate(self.windows):
                rows.append({
                    "model": model, "method": self.method, "length": n, "layer": layer,
                    "si": float(self.si[i]), "ci_low": iv.low, "ci_high": iv.high,
                    "layer_si": None if self.per_layer is None else float(self.per_layer[i, layer]),
                    "window": window,
                    "n_beyond_window": int(self.n_beyond_window[i, layer]),
                    "window_binds": bool(self.n_beyond_window[i, layer] > 0),
                    "n_truncated": self.n_truncated[i],
                })
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A table: length, SI with interval, prompts truncated, layers whose window binds."""
        iv0 = self.intervals[0]
        lines = [f"SI versus prompt length of {', '.join(self.model_names())}, method: "
                 f"{self.method} ({len(self.prompt_lengths)} prompts of "
                 f"{min(self.prompt_lengths)}-{max(self.prompt_lengths)} tokens; "
                 f"{iv0.level:.0%} intervals over prompts)"]
        lines.append(f"{'length':>6}  {'SI':>8}  {'interval':>19}  {'cut':>4}  window binds in")
        for i, n in enumerate(self.lengths):
            iv = self.intervals[i]
            bound = [str(x) for x in range(len(self.windows)) if self.n_beyond_window[i, x] > 0]
            lines.append(f"{n:>6}  {self.si[i]:8.4f}  [{iv.low:8.4f}, {iv.high:8.4f}]  "
                         f"{self.n_truncated[i]:>4}  "
                         + (f"layers {','.join(bound)}" if bound else "-"))
        windows = sorted({w for w in self.windows if w is not None})
        if not windows:
            lines.append("no layer has a sliding window: every difference is a length effect")
        else:
            marks = ", ".join(f"L{x}: {'never' if b is None else b}"
                              for x, b in enumerate(self.binding_from) if self.windows[x])
            lines.append(f"windows {windows} bind from length ({marks}); below that, SI cannot "
                         "reflect the window")
        if self.per_layer is not None and len(self.windows) <= 16:
            lines.append("SI by layer:")
            lines.append(f"{'length':>6}  " + "  ".join(f"{'L' + str(x):>6}"
                                                       for x in range(len(self.windows))))
            for n, row in zip(self.lengths, self.per_layer):
                lines.append(f"{n:>6}  " + "  ".join(f"{v:6.4f}" for v in row))
        longest = max(self.prompt_lengths)
        same = [n for n in self.lengths if n >= longest]
        if len(same) > 1:
            lines.append(f"lengths {same} cut no prompt (the longest has {longest} tokens): "
                         "their SI is the same")
        return "\n".join(lines)


def _si_at(method: str, raw: dict[str, np.ndarray], n_tokens: np.ndarray,
           length: int) -> tuple[float, np.ndarray | None, np.ndarray]:
    """Model-level SI, per-layer SI and per-prompt statistics from one length's raw statistics,
    computed exactly as :func:`~tl_spec.experiments.si.si_from_inputs` does."""
    if method == "pattern":
        summary = si_from_correlations(raw["correlation"])
        per_layer, per_prompt = summary.per_layer, summary.per_prompt_layer
        bad = np.isnan(per_layer)
        if bad.all():
            raise TLSpecError(f"at length {length} no layer has a defined SI: every head pattern "
                              "had zero variance; drop this length")
        if bad.any():
            warnings.warn(f"at length {length} layers {np.flatnonzero(bad).tolist()} have no "
                          "defined head correlation and were excluded from the SI",
                          TLSpecWarning, stacklevel=3)
        return float(np.nanmean(per_layer)), per_layer, per_prompt
    if method == "entropy_profile":
        per_prompt = raw["column_entropy"]
        value = si_from_entropy_profile(per_prompt.mean(axis=0))
        if np.isnan(value):
            raise TLSpecError(f"at length {length} the entropy-profile SI is undefined: every "
                              "head's profile is constant; drop this length")
        return value, None, per_prompt
    per_prompt = si_from_row_entropy(raw["row_entropy"], n_tokens)[1]
    per_layer = per_prompt.mean(axis=0)
    return float(per_layer.mean()), per_layer, per_prompt


def _truncate(inputs: Inputs, length: int) -> Inputs:
    ids = tuple(row[:length] for row in inputs.tokenized.ids)
    cut = sum(len(r) > length for r in inputs.tokenized.ids)
    tok = Tokenized(ids, cut, inputs.tokenized.prepend_bos, length)
    return Inputs(tok, inputs.texts, inputs.info)


def _check(model: Any, lo: LengthOptions, opts: SIOptions, st: StatsOptions) -> None:
    if opts.route != "tl_spec":
        raise TLSpecError(
            f"route={opts.route!r} pads every prompt to a fixed length, so a length profile does not "
            "apply to it; use route='tl_spec' (the default), which truncates each prompt to "
            "min(its length, L)"
        )
    if opts.aggregate != "prompt":
        raise TLSpecError("length_profile gives intervals over prompts, so it needs "
                          "aggregate='prompt' (mean_pattern pools the prompts first)")
    longest = lo.lengths[-1]
    if longest > opts.max_length:
        raise TLSpecError(
            f"length {longest} exceeds max_length={opts.max_length}; raise max_length to at "
            f"least {longest} or drop the lengths above {opts.max_length}"
        )
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and longest > int(n_ctx):
        raise TLSpecError(
            f"length {longest} exceeds the model's context of {int(n_ctx)} tokens (cfg.n_ctx); "
            f"a model cannot attend beyond it: drop the lengths above {int(n_ctx)}"
        )


def _bootstrap(method: str, per_prompt: np.ndarray, st: StatsOptions) -> Interval:
    n = per_prompt.shape[0]
    unit = max(1, int(np.prod(per_prompt.shape[1:])))
    batch = max(1, min(st.n_resamples, 2**22 // (n * unit)))  # ~32 MB of float64 per call
    return paired_bootstrap(lambda idx: si_value_from_prompts(method, per_prompt[idx]), n,
                            confidence=st.confidence, n_resamples=st.n_resamples, seed=st.seed,
                            batch=batch)


def length_profile(
    model: Any,
    prompts: PromptInput,
    lengths: Sequence[int] | None = None,
    *,
    attention_mask: Any = None,
    options: LengthOptions | None = None,
    si_options: SIOptions | None = None,
    stats: StatsOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> LengthProfileResult:
    """SI of ``model`` at several truncation lengths, with intervals and window-binding marks.

    At each length ``L`` each prompt is truncated to ``min(its length, L)`` tokens (the value
    equals ``specialization_index(model, prompts, max_length=L, ...)``). Everything is checked
    before the model runs: lengths (distinct integers >= 2, none above ``max_length`` or the
    model's ``n_ctx``), the SI options (``aggregate="prompt"``; the default route only).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (causal, decoder-only).
        prompts: a list of strings, a PromptSet, a ``[batch, pos]`` token tensor or a list of
            1-D token tensors.
        lengths: truncation lengths in tokens (default ``(16, 24, 32, 48, 64, 96, 128)``).
        attention_mask: with a token tensor, 1 on real tokens.
        options: a :class:`~tl_spec.options.LengthOptions` (``lengths``, ``reuse``).
        si_options: a :class:`~tl_spec.options.SIOptions` (``method``, ``region``, ...).
        stats: a :class:`~tl_spec.options.StatsOptions` for the intervals.
        progress: show a progress bar.
        **option_values: any field of the three option families.

    Returns:
        :class:`LengthProfileResult`.

    >>> prof = length_profile(model, STANDARD_10, (16, 32, 64), method="pattern")  # doctest: +SKIP
    >>> print(prof.summary())  # doctest: +SKIP
    """
    if lengths is not None:
        option_values = {**option_values, "lengths": lengths}
    lo, opts, st = split_options(option_values, (LengthOptions, options), (SIOptions, si_options),
                                 (StatsOptions, stats))
    require_pattern_hooks(model)
    _check(model, lo, opts, st)
    inputs = prepare_inputs(model, prompts, attention_mask=attention_mask,
                            max_length=opts.max_length, prepend_bos=opts.prepend_bos)
    st.check_units(len(inputs))
    facts = describe(model, seq_len=lo.lengths[-1])
    full = np.array(inputs.tokenized.lengths)  # up to max_length: what "cut" counts against
    started = time.perf_counter()
    measured = _run(model, _truncate(inputs, lo.lengths[-1]), lo, opts, progress)
    seconds = time.perf_counter() - started
    values = [float(v) for v, _, _ in measured]
    layer_si = [x for _, x, _ in measured]
    prompt_stats = [np.asarray(p, dtype=np.float64) for _, _, p in measured]
    intervals = [_bootstrap(opts.method, p, st) for p in prompt_stats]
    windows = list(facts.windows)
    beyond = np.array([[0 if w is None else int((np.minimum(full, n) > w).sum()) for w in windows]
                       for n in lo.lengths], dtype=np.float64)
    binding = [next((n for n, row in zip(lo.lengths, beyond) if row[x] > 0), None)
               for x in range(len(windows))]
    settings = dict(opts.to_dict(), **lo.to_dict(), **st.to_dict(),
                    prepend_bos=inputs.tokenized.prepend_bos, n_prompts=len(full),
                    input="token ids" if inputs.from_tokens else "text",
                    mode="prefix reuse (one forward)" if lo.reuse else
                         "separate forwards (one per length)",
                    forward_seconds=round(seconds, 4))
    return LengthProfileResult(
        method=opts.method,
        lengths=list(lo.lengths),
        si=np.array(values),
        intervals=intervals,
        per_layer=None if opts.method == "entropy_profile" else np.stack(layer_si),
        windows=windows,
        n_beyond_window=beyond,
        binding_from=binding,
        n_truncated=[int((full > n).sum()) for n in lo.lengths],
        prompt_lengths=[int(x) for x in full],
        per_prompt=np.stack(prompt_stats),
        settings=settings,
        provenance=provenance(model, prompts=inputs.info, architecture=facts.to_dict(),
                              options=settings),
    )


def _run(model: Any, inputs: Inputs, lo: LengthOptions, opts: SIOptions,
         progress: bool) -> list[tuple[float, np.ndarray | None, np.ndarray]]:
    """Per length ``(SI, per-layer SI, per-prompt statistics)``: from one forward pass (reuse)
    or from one :func:`~tl_spec.experiments.si.si_from_inputs` run per length."""
    if not lo.reuse:
        out = []
        for n in lo.lengths:
            r = si_from_inputs(model, _truncate(inputs, n), opts.replace(max_length=n),
                               progress=progress)
            per_prompt = r.per_prompt_heads if opts.method == "entropy_profile" else r.per_prompt
            out.append((r.value, r.per_layer, per_prompt))
        return out
    hooks = PrefixPatternStats(model, lengths=lo.lengths, stats=(_STAT_FOR[opts.method],),
                               region=opts.region, dtype=opts.torch_dtype)
    order = run_batches(model, inputs.tokenized, hooks, batch_size=opts.batch_size,
                        padding_side=opts.padding_side, progress=progress)
    inverse = np.argsort(order)
    full = np.array(inputs.tokenized.lengths)
    raw = hooks.collect()
    return [_si_at(opts.method, {k: v[inverse] for k, v in raw[n].items()},
                   np.minimum(full, n), n) for n in lo.lengths]
