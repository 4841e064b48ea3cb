"""Per-head stability across independently trained models of one architecture (seed 004).

Every model runs once per prompt batch (k models, k forward passes, never one per pair); hooks
keep that batch's per-head features, which are reduced at once into per-block sums. Per layer and
model pair a head x head similarity matrix follows (``measure="pattern"``: correlation of
attention patterns over valid entries, as in SI; ``"output"``: linear CKA of the heads'
residual-stream contributions over all valid tokens); heads are matched one-to-one, and a head's
stability is its mean matched similarity over the other models. Random-init copies give the
null level; prompt-block bootstrap intervals come with every layer profile.

>>> from tl_spec import head_stability
>>> r = head_stability([model_a, model_b, model_c], prompts, measure="output")  # doctest: +SKIP
>>> print(r.table())                                                           # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.run import model_device
from tl_spec.hooks.features import BatchFeatures
from tl_spec.metrics.patterns import Region, check_region, cross_correlations, entry_mask, head_correlations
from tl_spec.metrics.stability import PooledStats, summarize
from tl_spec.models import describe, model_id, random_init_like, require_pattern_hooks
from tl_spec.prompts import PromptSet, as_prompt_set
from tl_spec.records import Result, array, provenance
from tl_spec.stats import Interval, paired_bootstrap
from tl_spec.tokens import Tokenized, batches, pad_id, tokenize, validate_prompts

__all__ = ["MEASURES", "Measure", "StabilityResult", "check_models", "head_stability"]

Measure = Literal["pattern", "output"]
MEASURES: tuple[str, ...] = ("pattern", "output")
PROFILES: tuple[str, ...] = ("stability", "best_match", "null", "margin", "distinctness", "resid_cka")
_ARCH_FIELDS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model", "windows")


def _intervals(records: Any) -> Any:
    return {k: [Interval(**r) for r in v] for k, v in records.items()}


@dataclass
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

    def table(self) -> str:
        """Per-layer text table: stability [interval], null, above chance, distinctness, resid."""
        iv = self.intervals
        lines = [f"measure: {self.measure}  ({len(self.models)} models, "
                 f"{len(self.null_models)} random-init null models)",
                 f"{'layer':>5}  {'stability':>9}  {'95% interval':>17}  {'null':>6}  "
                 f"{'> null':>6}  {'distinct':>8}  {'resid CKA':>9}"]
        for layer, value in enumerate(self.stability):
            ci = iv["stability"][layer]
            resid = "" if self.resid_cka is None else f"{self.resid_cka[layer]:9.3f}"
            lines.append(f"{layer:>5}  {value:9.3f}  [{ci.low:7.3f}, {ci.high:7.3f}]  "
                         f"{self.null[layer]:6.3f}  {'yes' if self.above_null[layer] else 'no':>6}  "
                         f"{self.distinctness[layer]:8.3f}  {resid}")
        return "\n".join(lines)


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


def _check_tokens(models: Sequence[Any], prompts: list[str], max_length: int,
                  prepend_bos: bool | None) -> Tokenized:
    tokenized = tokenize(models[0], prompts, max_length=max_length, prepend_bos=prepend_bos)
    for i, m in enumerate(models[1:], start=1):
        with warnings.catch_warnings():  # the first model already warned about truncation
            warnings.simplefilter("ignore", TLSpecWarning)
            other = tokenize(m, prompts, max_length=max_length, prepend_bos=prepend_bos)
        bad = [p for p, (a, b) in enumerate(zip(tokenized.ids, other.ids, strict=True)) if a != b]
        if bad:
            raise TLSpecError(
                f"model {i} tokenizes prompt {bad[0]} differently from model 0 ({len(bad)} "
                "prompts differ): the models have different tokenizers, so their heads do not "
                "see the same tokens; compare models that share a tokenizer"
            )
    return tokenized


def _check_options(measure: str, region: str, null: Any, n_blocks: int, batch_size: int,
                   n_resamples: int) -> None:
    if measure not in MEASURES:
        raise TLSpecError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)} "
                          "(attention-pattern correlation, or linear CKA of head outputs)")
    check_region(region)
    if isinstance(null, bool) or not ((isinstance(null, int) and null >= 0)
                                      or isinstance(null, (list, tuple))):
        raise TLSpecError(f"null must be a number of random-init copies (>= 0) or a list of "
                          f"models, got {null!r}")
    for name, value, low in (("n_blocks", n_blocks, 2), ("batch_size", batch_size, 1),
                             ("n_resamples", n_resamples, 100)):
        if not isinstance(value, int) or value < low:
            raise TLSpecError(f"{name} must be an integer >= {low}, got {value!r}")


class _Engine:
    """Per-block sums for every needed model pair, filled batch by batch; profiles from them."""

    def __init__(self, n_models: int, n_trained: int, measure: str, resid: bool, n_blocks: int,
                 n_layers: int, n_heads: int, d_head: int, d_model: int) -> None:
        self.n_models, self.n_trained, self.measure = n_models, n_trained, measure
        self.blocks, self.layers = n_blocks, n_layers
        self.null = list(range(n_trained, n_models))
        self.cross_pairs = [(a, b) for a in range(n_trained) for b in range(a + 1, n_models)]
        self.stats = PooledStats("pattern" if measure == "pattern" else "cka", n_heads)
        self.resid = PooledStats("cka", 1) if resid else None
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

    def _init_cka(self, stats: PooledStats, width: int, models: Any) -> None:
        models = list(models)
        pairs = [(a, b) for a in models for b in models
                 if a == b or (a < b and a < self.n_trained)]
        stats.cross = {p: np.zeros((self.blocks, self.layers, width, width)) for p in pairs}
        stats.totals = {a: np.zeros((self.blocks, self.layers, width)) for a in models}
        stats.n = np.zeros(self.blocks)

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

    @staticmethod
    def add_cka(stats: PooledStats, blocks: list[int], acts: list[dict[int, torch.Tensor]],
                mask: torch.Tensor) -> None:
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
    prompts: Sequence[str] | PromptSet,
    *,
    measure: Measure = "pattern",
    null: int | Sequence[Any] = 2,
    resid: bool = True,
    region: Region = "lower",
    max_length: int = 128,
    batch_size: int = 8,
    n_blocks: int | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    prepend_bos: bool | None = None,
    stat_dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> StabilityResult:
    """Per-head stability of ``models`` (independently trained, same architecture) on ``prompts``.

    ``null``: a number of random-init copies of the first model (its own initialiser, seeds
    ``seed + 1, ...``) or a list of null models. Intervals: prompt-block bootstrap (prompts go
    round-robin into ``n_blocks`` blocks, default one per prompt up to 20; BCa, percentile where
    BCa is undefined). Memory: one batch of features per model, plus for ``"output"`` per block
    and model pair ``layers x (heads d_head)^2`` float64 sums (``resid``: ``layers x
    d_model^2``).

    >>> r = head_stability([a, b], ["The cat sat on the mat."] * 4, n_blocks=2)  # doctest: +SKIP
    >>> r.stability, r.matching[0]  # doctest: +SKIP
    """
    _check_options(measure, region, null, 2 if n_blocks is None else n_blocks, batch_size,
                   n_resamples)
    pset = as_prompt_set(prompts) if isinstance(prompts, PromptSet) else None
    texts = validate_prompts(pset.prompts if pset else prompts)
    trained = check_models(models)
    n_blocks = min(len(texts), 20) if n_blocks is None else n_blocks
    if len(texts) < max(n_blocks, 2):
        raise TLSpecError(f"{len(texts)} prompts cannot fill n_blocks={n_blocks} bootstrap "
                          f"blocks; pass more prompts or n_blocks <= {len(texts)}")
    given = [] if isinstance(null, int) else list(null)
    if given:
        check_models(trained + given, what="models (null models included)")
    tokenized = _check_tokens(trained + given, texts, max_length, prepend_bos)
    nulls = ([random_init_like(trained[0], seed + 1 + r) for r in range(null)]
             if isinstance(null, int) else given)
    everyone = trained + nulls
    facts = describe(trained[0], seq_len=max_length)
    engine = _Engine(len(everyone), len(trained), measure, resid, n_blocks, facts.n_layers,
                     facts.n_heads, facts.d_head, facts.d_model)
    keep = ("pattern",) if measure == "pattern" else ("output",)
    feats = [BatchFeatures(m, keep=keep + (("resid",) if resid and i < len(trained) else ()),
                           dtype=stat_dtype) for i, m in enumerate(everyone)]
    device = model_device(trained[0])
    chunks = batches(tokenized, batch_size=batch_size, pad_id=pad_id(trained[0]), device=device)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=-(-len(texts) // batch_size), desc="stability", unit="batch")
    for idx, tokens, mask in chunks:
        for model, f in zip(everyone, feats, strict=True):
            f.attention_mask = mask
            with torch.inference_mode(), model.hooks(fwd_hooks=f.fwd_hooks):
                model(tokens.to(model_device(model)), attention_mask=torch.ones_like(mask),
                      return_type=None)
        blocks = [i % n_blocks for i in idx]
        if measure == "pattern":
            valid = [entry_mask(mask.bool(), region=region, window=w) for w in facts.windows]
            engine.add_patterns(blocks, feats, valid, stat_dtype)
        else:
            engine.add_cka(engine.stats, blocks, [f.output for f in feats],
                           mask.bool())
        if engine.resid is not None:
            engine.add_cka(engine.resid, blocks, [f.resid for f in feats[: len(trained)]],
                           mask.bool())
        for f in feats:
            f.clear()
    full = engine.profile()
    names = [n for n in PROFILES if n != "resid_cka" or resid]
    if not nulls:
        names = [n for n in names if n not in ("null", "margin")]
    intervals = _bootstrap(engine, names, facts.n_layers, confidence=confidence,
                           n_resamples=n_resamples, seed=seed)
    above = ([iv.low > 0 for iv in intervals["margin"]] if nulls
             else [False] * facts.n_layers)
    sims = full.pop("_sim")
    pairs = [[a, b] for a in range(len(trained)) for b in range(a + 1, len(trained))]
    settings = dict(measure=measure, region=region, max_length=max_length, batch_size=batch_size,
                    n_blocks=n_blocks, confidence=confidence, n_resamples=n_resamples, seed=seed,
                    prepend_bos=tokenized.prepend_bos, stat_dtype=str(stat_dtype),
                    n_prompts=len(texts), n_truncated=tokenized.n_truncated,
                    null=("random_init" if isinstance(null, int) else "given"),
                    interval="prompt-block bootstrap, BCa (percentile where undefined)")
    result = StabilityResult(
        measure=measure, models=[model_id(m) for m in trained],
        null_models=([f"random-init({model_id(trained[0])}, seed={seed + 1 + r})"
                      for r in range(len(nulls))] if isinstance(null, int)
                     else [model_id(m) for m in nulls]),
        pairs=pairs, stability=full["stability"], best_match=full["best_match"],
        null=full["null"], margin=full["margin"], distinctness=full["distinctness"],
        resid_cka=full.get("resid_cka"), intervals=intervals, above_null=above,
        per_head_stability=full["per_head_stability"], per_head_best=full["per_head_best"],
        similarity=sims, matching=full["matching"][: len(pairs)],
        undefined=int(np.isnan(sims).sum()), settings=settings,
        provenance=provenance(trained[0], prompts=(pset or as_prompt_set(texts)).hashes(),
                              architecture=facts.to_dict(), options=settings,
                              models=[model_id(m) for m in trained]),
    )
    object.__setattr__(result, "_engine", engine)
    return result
