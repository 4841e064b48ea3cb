"""Per-head stability across independently trained models of one architecture (seed 004).

Every model runs once per prompt batch (k models, k forward passes, never one per pair); hooks
keep that batch's per-head features, which are reduced at once into per-block sums. Per layer and
model pair a head x head similarity matrix follows (``measure="pattern"``: correlation of
attention patterns over valid entries, as in SI; ``"output"``: linear CKA of the heads'
residual-stream contributions over all valid tokens); heads are matched one-to-one, and a head's
stability is its mean matched similarity over the other models. Random-init copies give the
null level; prompt-block bootstrap intervals come with every layer profile.

Prompts are text (a list of strings or a PromptSet; every model must tokenize them identically)
or token ids (a ``[batch, pos]`` tensor with an optional ``attention_mask``, or a list of 1-D
tensors; every model runs the same ids, no tokenizer needed). Options are
:class:`~tl_spec.options.StabilityOptions` and statistics fields, as keywords or objects.

>>> from tl_spec import head_stability
>>> r = head_stability([model_a, model_b, model_c], prompts, measure="output")  # doctest: +SKIP
>>> print(r.summary())                                                         # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_spec.display import short_name
from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.running import model_device
from tl_spec.hooks.features import BatchFeatures
from tl_spec.metrics.cka import minibatch_hsic
from tl_spec.metrics.patterns import cross_correlations, entry_mask, head_correlations
from tl_spec.metrics.stability import PooledStats, summarize
from tl_spec.models import describe, model_id, random_init_like, require_pattern_hooks
from tl_spec.names import head_label
from tl_spec.options.base import split_options
from tl_spec.options.si import StatsOptions
from tl_spec.options.stability import (
    MEASURES,
    Measure,
    StabilityOptions,
    StabilityStatsOptions,
)
from tl_spec.records import Result, array, provenance
from tl_spec.stats import Interval, paired_bootstrap
from tl_spec.tokens import Inputs, PromptInput, batches, pad_id, prepare_inputs

__all__ = ["MEASURES", "Measure", "StabilityOptions", "StabilityResult", "StabilityStatsOptions",
           "check_models", "head_stability", "stability_options"]

PROFILES: tuple[str, ...] = ("stability", "best_match", "null", "margin", "distinctness", "resid_cka")
_ARCH_FIELDS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model", "windows")


def _intervals(records: Any) -> Any:
    return {k: [Interval(**r) for r in v] for k, v in records.items()}


def _nanmean(x: Any, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)


@dataclass(repr=False)
class StabilityResult(Result):
    """Head stability of ``models`` (same architecture) by ``measure``; see the module doc.

    Per layer: ``stability``, ``best_match``, ``null`` (random-init level), ``margin``
    (stability - null), ``distinctness`` (1 - mean within-model similarity), ``resid_cka``
    (linear CKA of ``resid_post`` across models), each with ``intervals[name]``. Per model and
    head: ``per_head_stability`` / ``per_head_best`` ``[models, layers, heads]``. Per compared
    pair (``pairs``): mean ``similarity`` ``[pairs, layers, heads, heads]`` and the optimal
    ``matching`` ``[pairs, layers, heads]`` (head ``i`` of the first model <-> ``matching[i]``).
    """

    kind = "head_stability"
    decoders = {**{name: array for name in PROFILES + ("per_head_stability", "per_head_best",
                                                      "similarity")},
                "matching": lambda v: np.asarray(v, dtype=np.int64), "intervals": _intervals}
    measure: str
    models: list[str]
    null_models: list[str]
    pairs: list[list[int]]
    stability: Float[np.ndarray, "n_layers"]
    best_match: Float[np.ndarray, "n_layers"]
    null: Float[np.ndarray, "n_layers"]
    margin: Float[np.ndarray, "n_layers"]
    distinctness: Float[np.ndarray, "n_layers"]
    resid_cka: Float[np.ndarray, "n_layers"] | None
    intervals: dict[str, list[Interval]]
    above_null: list[bool]
    per_head_stability: Float[np.ndarray, "n_models n_layers n_heads"]
    per_head_best: Float[np.ndarray, "n_models n_layers n_heads"]
    similarity: Float[np.ndarray, "n_pairs n_layers n_heads n_heads"]
    matching: Int[np.ndarray, "n_pairs n_layers n_heads"]
    undefined: int
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def model_names(self) -> list[str]:
        """Short names of the compared models (null models excluded)."""
        return [short_name(m) for m in self.models]

    def tags(self) -> list[str]:
        """The similarity measure."""
        return [self.measure]

    def least_stable_layer(self) -> int | None:
        """The layer with the lowest stability (``None`` if no layer has a defined value)."""
        values = np.asarray(self.stability, dtype=np.float64)
        return None if np.isnan(values).all() else int(np.nanargmin(values))

    def headline(self) -> dict[str, Any]:
        """Mean stability over layers, the null level, layers above it, models, least stable layer."""
        out: dict[str, Any] = {"stability": float(_nanmean(self.stability))}
        if self.null_models:
            out["null"] = float(_nanmean(self.null))
            out["layers above null"] = f"{sum(map(bool, self.above_null))}/{len(self.stability)}"
        out["models"] = len(self.models)
        out["least stable layer"] = self.least_stable_layer()
        return out

    def heat(self) -> tuple[str, np.ndarray, bool | None]:
        """Each head's matched similarity to the other models, averaged over the models."""
        return ("matched similarity per head (mean over models)",
                _nanmean(self.per_head_stability, axis=0), None)

    def to_frame(self) -> Any:
        """Tidy table, one row per model, layer and head, with that layer's profile alongside.

        Columns: ``model``, ``measure``, ``layer``, ``head``, ``label``, ``stability`` (the
        head's matched similarity, mean over the other models), ``best_match``, then per layer
        ``layer_stability`` (+ ``_low`` / ``_high`` interval), ``null``, ``margin``,
        ``above_null``, ``distinctness``, ``resid_cka``.

        >>> r.to_frame().groupby("layer")["stability"].mean()  # doctest: +SKIP
        """
        import pandas as pd

        names = self.model_names()
        per_head = np.asarray(self.per_head_stability, dtype=np.float64)
        best = np.asarray(self.per_head_best, dtype=np.float64)
        n_models, n_layers, n_heads = per_head.shape
        ci = self.intervals.get("stability") or [None] * n_layers
        rows = []
        for m in range(n_models):
            for layer in range(n_layers):
                layer_cols = {
                    "layer_stability": float(self.stability[layer]),
                    "layer_stability_low": None if ci[layer] is None else float(ci[layer].low),
                    "layer_stability_high": None if ci[layer] is None else float(ci[layer].high),
                    "null": float(self.null[layer]), "margin": float(self.margin[layer]),
                    "above_null": bool(self.above_null[layer]),
                    "distinctness": float(self.distinctness[layer]),
                    "resid_cka": (None if self.resid_cka is None
                                  else float(self.resid_cka[layer])),
                }
                for head in range(n_heads):
                    rows.append({"model": names[m] if m < len(names) else str(m),
                                 "measure": self.measure, "layer": layer, "head": head,
                                 "label": head_label(layer, head),
                                 "stability": float(per_head[m, layer, head]),
                                 "best_match": float(best[m, layer, head]), **layer_cols})
        return pd.DataFrame(rows)

    def profile(self, idx: Int[np.ndarray, "n_blocks"] | None = None) -> dict[str, np.ndarray]:
        """The layer profiles over a resample of prompt blocks (only on a freshly run result):
        ``idx`` holds block indices; resamples are cached, so repeated calls cost nothing.

        >>> r.profile(np.zeros(r.settings["n_blocks"], dtype=int))["stability"]  # doctest: +SKIP
        """
        engine = getattr(self, "_engine", None)
        if engine is None:
            raise TLSpecError("profile() needs the pooled statistics of a result computed in "
                              "this session; a result loaded from a file keeps only its summaries")
        return engine.profile() if idx is None else engine.resample(idx)

    def summary(self) -> str:
        """Per-layer text table: stability [interval], null, above chance, distinctness, resid."""
        iv = self.intervals
        level = iv["stability"][0].level if iv.get("stability") else 0.95
        interval = f"{level:.0%} interval"
        lines = [f"measure: {self.measure}  ({len(self.models)} models, "
                 f"{len(self.null_models)} random-init null models)",
                 f"{'layer':>5}  {'stability':>9}  {interval:>17}  {'null':>6}  "
                 f"{'> null':>6}  {'distinct':>8}  {'resid CKA':>9}"]
        for layer, value in enumerate(self.stability):
            ci = iv["stability"][layer]
            resid = "" if self.resid_cka is None else f"{self.resid_cka[layer]:9.3f}"
            lines.append(f"{layer:>5}  {value:9.3f}  [{ci.low:7.3f}, {ci.high:7.3f}]  "
                         f"{self.null[layer]:6.3f}  {'yes' if self.above_null[layer] else 'no':>6}  "
                         f"{self.distinctness[layer]:8.3f}  {resid}")
        return "\n".join(lines)


def stability_options(
    options: StabilityOptions | None = None,
    stats: StatsOptions | None = None,
    **option_values: Any,
) -> tuple[StabilityOptions, StabilityStatsOptions]:
    """Build and validate ``head_stability``'s two option families from objects and keywords.

    Each keyword goes to the family that declares it (:class:`StabilityOptions` or the
    statistics options: ``confidence``, ``n_resamples``, ``seed``); an unknown name is refused.

    Args:
        options: a :class:`~tl_spec.options.StabilityOptions` (or a mapping), or ``None``.
        stats: a :class:`~tl_spec.options.StatsOptions` (or a mapping), or ``None``.
        **option_values: fields of either family, overriding the objects.

    Returns:
        ``(StabilityOptions, StabilityStatsOptions)``.

    >>> opts, st = stability_options(measure="output", n_resamples=200)
    >>> opts.measure, st.n_resamples, st.confidence
    ('output', 200, 0.95)
    """
    if isinstance(stats, StatsOptions) and not isinstance(stats, StabilityStatsOptions):
        stats = stats.to_kwargs()  # type: ignore[assignment]
    opts, st = split_options(option_values, (StabilityOptions, options),
                             (StabilityStatsOptions, stats))
    return opts, st


def check_models(models: Sequence[Any], *, what: str = "models") -> list[Any]:
    """At least two TransformerLens models of one architecture; a clear error otherwise.

    >>> check_models([object()])
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: head stability compares two or more models; got 1 (pass a list of models trained from different seeds)
    """
    models = list(models)
    if len(models) < 2:
        raise TLSpecError(f"head stability compares two or more {what}; got {len(models)} (pass a "
                          "list of models trained from different seeds)")
    for m in models:
        require_pattern_hooks(m)
    first = describe(models[0]).to_dict()
    for i, m in enumerate(models[1:], start=1):
        other = describe(m).to_dict()
        diff = [f"{k}: {first[k]} vs {other[k]}" for k in _ARCH_FIELDS if first[k] != other[k]]
        if diff:
            raise TLSpecError(
                f"{what} 0 and {i} have different architectures ({'; '.join(diff)}); head "
                "stability compares heads of independently trained copies of one architecture"
            )
    return models


def _prepare(models: Sequence[Any], prompts: PromptInput, attention_mask: Any,
             opts: StabilityOptions) -> Inputs:
    """The prompts as token ids for every model: one tokenization (text) or the given ids.

    Text is tokenized by every model and must give the same ids (the heads must see the same
    tokens); token ids are used as given for every model (checked against each vocabulary).
    """
    inputs = prepare_inputs(models[0], prompts, attention_mask=attention_mask,
                            max_length=opts.max_length, prepend_bos=opts.prepend_bos)
    for i, m in enumerate(models[1:], start=1):
        with warnings.catch_warnings():  # the first model already warned about truncation
            warnings.simplefilter("ignore", TLSpecWarning)
            other = prepare_inputs(m, prompts, attention_mask=attention_mask,
                                   max_length=opts.max_length, prepend_bos=opts.prepend_bos)
        if inputs.from_tokens:  # the same ids for every model (checked against its vocabulary)
            continue
        bad = [p for p, (a, b) in enumerate(zip(inputs.tokenized.ids, other.tokenized.ids,
                                                strict=True)) if a != b]
        if bad:
            raise TLSpecError(
                f"model {i} tokenizes prompt {bad[0]} differently from model 0 ({len(bad)} "
                "prompts differ): the models have different tokenizers, so their heads do not "
                "see the same tokens; compare models that share a tokenizer"
            )
    return inputs


class _Engine:
    """Per-block sums for every needed model pair, filled batch by batch; profiles from them."""

    def __init__(self, n_models: int, n_trained: int, measure: str, resid: bool, n_blocks: int,
                 n_layers: int, n_heads: int, d_head: int, d_model: int,
                 estimator: str = "exact") -> None:
        self.n_models, self.n_trained, self.measure = n_models, n_trained, measure
        self.blocks, self.layers, self.estimator = n_blocks, n_layers, estimator
        self.null = list(range(n_trained, n_models))
        self.cross_pairs = [(a, b) for a in range(n_trained) for b in range(a + 1, n_models)]
        kind = "cka" if estimator == "exact" else "hsic"
        self.stats = PooledStats("pattern" if measure == "pattern" else kind, n_heads)
        self.resid = PooledStats(kind, 1) if resid else None
        self.skipped_tokens = 0  # in minibatches too short for the minibatch estimator (< 4)
        self._resampled: dict[bytes, dict[str, np.ndarray]] = {}
        g, lay, h = n_blocks, n_layers, n_heads
        if measure == "pattern":
            for pair in self.cross_pairs + [(a, a) for a in range(n_trained)]:
                self.stats.sums[pair] = np.zeros((g, lay, h, h))
                self.stats.counts[pair] = np.zeros((g, lay, h, h))
        else:
            self._init_cka(self.stats, n_heads * d_head, range(n_models))
        if self.resid is not None:
            self._init_cka(self.resid, d_model, range(n_trained))

    @staticmethod
    def exact_bytes(n_models: int, n_trained: int, measure: str, resid: bool, n_blocks: int,
                    n_layers: int, n_heads: int, d_head: int, d_model: int) -> int:
        """Bytes of the exact estimator's per-block float64 sums (``estimator="auto"`` reads it)."""
        def pairs(models: int) -> int:
            return sum(1 for a in range(models) for b in range(models)
                       if a == b or (a < b and a < n_trained))

        width = n_heads * d_head
        out = pairs(n_models) * width * width + n_models * width if measure == "output" else 0
        res = pairs(n_trained) * d_model * d_model + n_trained * d_model if resid else 0
        return 8 * n_blocks * n_layers * (out + res)

    def _init_cka(self, stats: PooledStats, width: int, models: Any) -> None:
        models = list(models)
        pairs = [(a, b) for a in models for b in models
                 if a == b or (a < b and a < self.n_trained)]
        stats.n = np.zeros(self.blocks)
        if stats.kind == "hsic":
            h = stats.heads
            stats.hsic = {p: np.zeros((self.blocks, self.layers, h, h)) for p in pairs}
            return
        stats.cross = {p: np.zeros((self.blocks, self.layers, width, width)) for p in pairs}
        stats.totals = {a: np.zeros((self.blocks, self.layers, width)) for a in models}

    def add_patterns(self, blocks: list[int], feats: list[BatchFeatures], valid: list[torch.Tensor],
                     dtype: torch.dtype) -> None:
        index = np.asarray(blocks)
        for pair in self.stats.sums:
            a, b = pair
            for layer in range(self.layers):
                pa = feats[a].pattern[layer]
                corr = (head_correlations(pa, valid[layer], dtype=dtype) if a == b else
                        cross_correlations(pa, feats[b].pattern[layer], valid[layer], dtype=dtype))
                corr = corr.double().cpu().numpy()
                ok = np.isfinite(corr)
                np.add.at(self.stats.sums[pair][:, layer], index, np.where(ok, corr, 0.0))
                np.add.at(self.stats.counts[pair][:, layer], index, ok)

    def add_cka(self, stats: PooledStats, blocks: list[int], acts: list[dict[int, torch.Tensor]],
                mask: torch.Tensor) -> None:
        if stats.kind == "hsic":
            self._add_hsic(stats, blocks, acts, mask)
            return
        assert stats.n is not None
        index = torch.as_tensor(blocks, device=mask.device)
        for g in sorted(set(blocks)):
            rows = index == g
            stats.n[g] += float(mask[rows].sum())
            flat = {a: {layer: x[rows].flatten(0, 1).flatten(1) for layer, x in acts[a].items()}
                    for a in stats.totals}
            for layer in flat[0]:
                for a in stats.totals:
                    stats.totals[a][g, layer] += flat[a][layer].sum(0).double().cpu().numpy()
                for a, b in stats.cross:
                    xa, xb = flat[a][layer], flat[b][layer]
                    stats.cross[(a, b)][g, layer] += (xa.T @ xb).double().cpu().numpy()

    def _add_hsic(self, stats: PooledStats, blocks: list[int],
                  acts: list[dict[int, torch.Tensor]], mask: torch.Tensor) -> None:
        """Minibatch CKA: a batch's prompts of one block are one minibatch (their tokens
        together); its unbiased HSIC per head pair is added to that block."""
        assert stats.n is not None
        pairs = list(stats.hsic)
        models = sorted({m for pair in pairs for m in pair})
        index = torch.as_tensor(blocks, device=mask.device)
        for g in sorted(set(blocks)):
            rows = index == g
            n = mask[rows].sum().reshape(1)
            if int(n) < 4:
                if stats is self.stats or self.measure == "pattern":  # count each token once
                    self.skipped_tokens += int(n)
                continue
            stats.n[g] += 1.0
            for layer in acts[0]:
                feats = []
                for m in models:
                    x = acts[m][layer][rows]
                    x = x[:, :, None, :] if x.dim() == 3 else x  # the residual stream: one "head"
                    feats.append(x.flatten(0, 1)[None])
                values = minibatch_hsic(feats, n, pairs)
                for pair, v in values.items():
                    stats.hsic[pair][g, layer] += v[0].double().cpu().numpy()

    def resample(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The layer profiles over resampled blocks ``idx``, cached by the block weights (the
        interval of every profile and layer, and the study's claims, reuse one resample)."""
        w = np.bincount(np.asarray(idx), minlength=self.blocks).astype(np.float64)
        key = w.tobytes()
        if key not in self._resampled:  # layer profiles only, not the similarity matrices
            self._resampled[key] = {k: v for k, v in self.profile(w).items() if k in PROFILES}
        return self._resampled[key]

    def profile(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every profile, per head and per pair, over blocks weighted by ``weights`` (all 1)."""
        w = np.ones(self.blocks) if weights is None else weights
        both = self.stats.similarities(self.cross_pairs + [(a, a) for a in range(self.n_trained)], w)
        sim = {pair: both[pair] for pair in self.cross_pairs}
        selves = {a: both[(a, a)] for a in range(self.n_trained)}
        out = summarize(sim, selves, n_models=self.n_trained, null=self.null)
        if self.resid is not None:
            pairs = [(a, b) for a in range(self.n_trained) for b in range(a + 1, self.n_trained)]
            resid = self.resid.similarities(pairs, w)
            out["resid_cka"] = np.mean([resid[p][:, 0, 0] for p in pairs], 0)
        out["_sim"] = np.stack([sim[(a, b)] for a in range(self.n_trained)
                                for b in range(a + 1, self.n_trained)])
        return out


def _check_finite(feats: BatchFeatures, name: str, prompts: list[int], inputs: Inputs) -> None:
    """Refuse a forward pass that turned NaN/Inf (it would drop or poison the prompt's sums)."""
    if not prompts:
        return
    first = prompts[0]
    shown = "" if inputs.texts is None else f" ({inputs.texts[first][:60]!r})"
    raise TLSpecError(
        f"model {name} produced NaN/Inf features on prompt {first}{shown} ({len(prompts)} "
        "prompt(s) of this batch affected): head stability would drop or poison that prompt's "
        "statistics; check the model's weights for NaN/Inf (or overflow in a low-precision "
        "dtype), or leave the prompt out"
    )


def _bootstrap(engine: _Engine, names: Sequence[str], n_layers: int, *, confidence: float,
               n_resamples: int, seed: int) -> dict[str, list[Interval]]:
    out: dict[str, list[Interval]] = {}
    for name in names:
        out[name] = []
        for layer in range(n_layers):
            def statistic(idx: np.ndarray, name: str = name, layer: int = layer) -> np.ndarray:
                rows = idx.reshape(-1, idx.shape[-1])
                return np.array([engine.resample(row)[name][layer] for row in rows]
                                ).reshape(idx.shape[:-1])

            out[name].append(paired_bootstrap(statistic, engine.blocks, confidence=confidence,
                                              n_resamples=n_resamples, seed=seed))
    return out


def head_stability(
    models: Sequence[Any],
    prompts: PromptInput,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    options: StabilityOptions | None = None,
    stats: StatsOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> StabilityResult:
    """Per-head stability of ``models`` (independently trained, same architecture) on ``prompts``.

    ``null``: a number of random-init copies of the first model (its own initialiser, seeds
    ``seed + 1, ...``) or a list of null models. Intervals: prompt-block bootstrap (prompts go
    round-robin into ``n_blocks`` blocks, default one per prompt up to 20; BCa, percentile where
    BCa is undefined). Memory: one batch of features per model, plus for ``"output"`` per block
    and model pair ``layers x (heads d_head)^2`` float64 sums (``resid``: ``layers x
    d_model^2``) with ``estimator="exact"``, or ``layers x heads^2`` with ``"minibatch"``
    (``"auto"``, the default, picks exact while those sums fit in 1 GiB; see
    :class:`~tl_spec.options.StabilityOptions`). A forward pass that turns NaN/Inf raises a
    TLSpecError naming the model and prompt.

    Args:
        models: two or more TransformerLens models of one architecture (different seeds).
        prompts: a list of strings or a PromptSet (every model must tokenize them identically),
            a ``[batch, pos]`` token tensor or a list of 1-D token tensors (the same ids for
            every model; no tokenizer needed).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: a :class:`~tl_spec.options.StabilityOptions`; keywords override its fields.
        stats: a :class:`~tl_spec.options.StatsOptions` (``confidence``, ``n_resamples``,
            ``seed``; 1000 resamples unless given); keywords override its fields.
        progress: show a progress bar.
        **option_values: any field of either options class (``measure``, ``null``, ``region``,
            ``n_blocks``, ``n_resamples``, ``seed``, ...).

    Returns:
        :class:`StabilityResult`.

    >>> r = head_stability([a, b], ["The cat sat on the mat."] * 4, n_blocks=2)  # doctest: +SKIP
    >>> r.stability, r.matching[0]  # doctest: +SKIP
    """
    opts, st = stability_options(options, stats, **option_values)
    trained = check_models(models)
    given = [] if isinstance(opts.null, int) else list(opts.null)
    if given:
        check_models(trained + given, what="models (null models included)")
    inputs = _prepare(trained + given, prompts, attention_mask, opts)
    return _stability(trained, given, inputs, opts, st, progress=progress)


def _stability(trained: list[Any], given: list[Any], inputs: Inputs, opts: StabilityOptions,
               st: StabilityStatsOptions, *, progress: bool) -> StabilityResult:
    """:func:`head_stability` on checked models and prepared prompts."""
    tokenized = inputs.tokenized
    n_prompts = len(inputs)
    n_blocks = opts.blocks_for(n_prompts)
    measure, resid, seed, dtype = opts.measure, opts.resid, st.seed, opts.torch_dtype
    nulls = ([random_init_like(trained[0], seed + 1 + r) for r in range(opts.null)]
             if isinstance(opts.null, int) else given)
    everyone = trained + nulls
    facts = describe(trained[0], seq_len=opts.max_length)
    shape = (len(everyone), len(trained), measure, resid, n_blocks, facts.n_layers,
             facts.n_heads, facts.d_head, facts.d_model)
    exact_bytes = _Engine.exact_bytes(*shape)
    estimator = opts.estimator_for(exact_bytes)
    if opts.estimator == "auto" and estimator != "exact":
        warnings.warn(
            f"the exact CKA sums would take {exact_bytes / 2**30:.1f} GiB, so head stability uses "
            "minibatch CKA (per-block unbiased HSIC, Nguyen et al. 2021): a different estimator, "
            "whose values are not comparable with exact CKA; pass estimator='exact' or "
            "'minibatch' to choose (result.settings['estimator'] records it)",
            TLSpecWarning, stacklevel=2)
    engine = _Engine(*shape, estimator=estimator)
    keep = ("pattern",) if measure == "pattern" else ("output",)
    feats = [BatchFeatures(m, keep=keep + (("resid",) if resid and i < len(trained) else ()),
                           dtype=dtype) for i, m in enumerate(everyone)]
    device = model_device(trained[0])
    # minibatch CKA: batches hold one block's prompts where they can (larger minibatches)
    order = (sorted(range(n_prompts), key=lambda i: (i % n_blocks, i))
             if estimator == "minibatch" and (measure == "output" or resid) else None)
    chunks = batches(tokenized, batch_size=opts.batch_size, pad_id=pad_id(trained[0]),
                     device=device, order=order)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=-(-n_prompts // opts.batch_size), desc="stability",
                      unit="batch")
    names = ([model_id(m) for m in trained]
             + [f"random-init null copy {r} of {model_id(trained[0])}" for r in range(len(nulls))])
    for idx, tokens, mask in chunks:
        for i, (model, f) in enumerate(zip(everyone, feats, strict=True)):
            with torch.inference_mode(), model.hooks(fwd_hooks=f.bind(tokens, mask).fwd_hooks):
                model(tokens.to(model_device(model)), attention_mask=torch.ones_like(mask),
                      return_type=None)
            _check_finite(f, names[i], [idx[r] for r in f.nonfinite_rows()], inputs)
        blocks = [i % n_blocks for i in idx]
        if measure == "pattern":
            valid = [entry_mask(mask.bool(), region=opts.region, window=w) for w in facts.windows]
            engine.add_patterns(blocks, feats, valid, dtype)
        else:
            engine.add_cka(engine.stats, blocks, [f.output for f in feats], mask.bool())
        if engine.resid is not None:
            engine.add_cka(engine.resid, blocks, [f.resid for f in feats[: len(trained)]],
                           mask.bool())
        for f in feats:
            f.clear()
    if engine.skipped_tokens:
        warnings.warn(f"{engine.skipped_tokens} tokens sit in minibatches of fewer than 4 tokens "
                      "and are left out of minibatch CKA (its unbiased HSIC needs 4); pass "
                      "longer prompts, a larger batch_size or estimator='exact'", TLSpecWarning,
                      stacklevel=3)
    full = engine.profile()
    names = [n for n in PROFILES if n != "resid_cka" or resid]
    if not nulls:
        names = [n for n in names if n not in ("null", "margin")]
    intervals = _bootstrap(engine, names, facts.n_layers, confidence=st.confidence,
                           n_resamples=st.n_resamples, seed=seed)
    above = ([iv.low > 0 for iv in intervals["margin"]] if nulls
             else [False] * facts.n_layers)
    sims = full.pop("_sim")
    pairs = [[a, b] for a in range(len(trained)) for b in range(a + 1, len(trained))]
    settings = dict(opts.to_dict(), **st.to_dict(), n_blocks=n_blocks,
                    prepend_bos=tokenized.prepend_bos, n_prompts=n_prompts,
                    n_truncated=tokenized.n_truncated,
                    null=("random_init" if isinstance(opts.null, int) else "given"),
                    input="token ids" if inputs.from_tokens else "text",
                    interval="prompt-block bootstrap, BCa (percentile where undefined)")
    if measure == "output" or resid:
        settings.update(estimator=estimator, n_skipped_tokens=engine.skipped_tokens)
    result = StabilityResult(
        measure=measure, models=[model_id(m) for m in trained],
        null_models=([f"random-init({model_id(trained[0])}, seed={seed + 1 + r})"
                      for r in range(len(nulls))] if isinstance(opts.null, int)
                     else [model_id(m) for m in nulls]),
        pairs=pairs, stability=full["stability"], best_match=full["best_match"],
        null=full["null"], margin=full["margin"], distinctness=full["distinctness"],
        resid_cka=full.get("resid_cka"), intervals=intervals, above_null=above,
        per_head_stability=full["per_head_stability"], per_head_best=full["per_head_best"],
        similarity=sims, matching=full["matching"][: len(pairs)],
        undefined=int(np.isnan(sims).sum()), settings=settings,
        provenance=provenance(trained[0], prompts=inputs.info, architecture=facts.to_dict(),
                              options=settings, models=[model_id(m) for m in trained]),
    )
    object.__setattr__(result, "_engine", engine)
    return result
