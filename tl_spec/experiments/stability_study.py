"""Seed 004's five claims, measured on groups of refits (the zoo's ``refits`` set by default).

Each group is one configuration (depth, weight decay) trained from several seeds. Per group:
:func:`~tl_spec.head_stability` (with random-init nulls and ``resid_post`` CKA) and, per model,
:func:`~tl_spec.experiments.importance.head_importance` (mean ablation). Every claim becomes a
signed effect whose positive sign supports it, with a bootstrap interval over the same prompt
blocks in every group (so differences between groups stay paired); a claim "holds here" when
its interval excludes zero on the supporting side.

>>> from tl_spec import stability_study
>>> study = stability_study(seeds=3)   # needs `tl-spec zoo build refits`  # doctest: +SKIP
>>> print(study.table())                                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats

from tl_spec.errors import TLSpecError
from tl_spec.experiments.importance import head_importance
from tl_spec.experiments.stability import MEASURES, StabilityResult, head_stability
from tl_spec.records import Result, provenance
from tl_spec.stats import Interval, interval_records, paired_bootstrap
from tl_spec.zoo.corpus import heldout_texts

__all__ = ["CLAIMS", "StudyGroup", "StudyResult", "refit_groups", "stability_study"]

CLAIMS = (
    "middle-layer heads are the least stable yet the most distinct",
    "deeper models show stronger mid-depth divergence",
    "unstable heads in deeper layers are more important than their layer peers",
    "weight decay improves head stability",
    "the residual stream is comparatively stable",
)


@dataclass
class StudyGroup:
    """One configuration trained from several seeds: ``models`` (loaded) or zoo ``names``."""

    name: str
    depth: int
    weight_decay: float
    models: list[Any]



@dataclass
class StudyResult(Result):
    """Per group the stability summary; per claim the effect, interval and verdict."""

    kind = "stability_study"
    decoders = {"claims": interval_records}
    measure: str
    groups: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def table(self) -> str:
        """One line per claim: effect [interval] and whether it holds at this scale."""
        lines = [f"seed 004 claims, measure={self.measure} (positive effect supports the claim)"]
        for c in self.claims:
            ci = c["interval"]
            verdict = {True: "holds", False: "does not hold", None: "not testable"}[c["holds"]]
            lines.append(f"{c['id']}. {c['claim']}\n   {c['statistic']}: {c['effect']:+.4f} "
                         f"[{ci.low:+.4f}, {ci.high:+.4f}] -> {verdict}")
        return "\n".join(lines)


def refit_groups(*, seeds: int | None = None, depths: Sequence[int] | None = None,
                 backend: str = "auto") -> list[StudyGroup]:
    """The zoo's refit set as study groups (built models only; a clear error otherwise).

    >>> [g.name for g in refit_groups(seeds=2)]  # doctest: +SKIP
    ['L2-wd0', 'L2-wd0.1', 'L4-wd0', 'L4-wd0.1']
    """
    from tl_spec.zoo import registry

    found: dict[tuple[int, float], list[str]] = {}
    for m in registry.SETS["refits"]:
        assert m.config is not None
        key = (m.config.n_layers, m.config.weight_decay)
        if depths is None or key[0] in depths:
            found.setdefault(key, []).append(m.name)
    groups = []
    for (depth, wd), names in sorted(found.items()):
        names = names[:seeds] if seeds else names
        groups.append(StudyGroup(f"L{depth}-wd{wd:g}", depth, wd,
                                 [registry.load(n, backend=backend) for n in names]))
    return groups


def _effects(results: dict[str, StabilityResult], groups: list[StudyGroup],
             row: np.ndarray) -> np.ndarray:
    deepest = max(g.depth for g in groups)
    shallowest = min(g.depth for g in groups)
    p = {g.name: results[g.name].profile(row) for g in groups}  # cached per resample
    deep = [g for g in groups if g.depth == deepest]
    mid = slice(1, deepest - 1)
    edges = [0, deepest - 1]
    e1a = np.mean([p[g.name]["stability"][edges].mean() - p[g.name]["stability"][mid].mean()
                   for g in deep]) if deepest >= 3 else np.nan
    e1b = np.mean([p[g.name]["distinctness"][mid].mean() - p[g.name]["distinctness"][edges].mean()
                   for g in deep]) if deepest >= 3 else np.nan

    def centre_instability(g: StudyGroup) -> float:
        centres = (np.arange(g.depth) + 0.5) / g.depth
        dist = np.abs(centres - 0.5)
        return float(1.0 - p[g.name]["stability"][np.isclose(dist, dist.min())].mean())

    e2 = (np.mean([centre_instability(g) for g in deep]) -
          np.mean([centre_instability(g) for g in groups if g.depth == shallowest])
          if deepest > shallowest else np.nan)
    with_wd = [g for g in groups if g.weight_decay > 0]
    e4 = []
    for g in with_wd:
        twins = [h for h in groups if h.depth == g.depth and h.weight_decay == 0]
        e4 += [p[g.name]["stability"].mean() - p[h.name]["stability"].mean() for h in twins]
    e5 = [(p[g.name]["resid_cka"] - p[g.name]["stability"]).mean() for g in groups]
    return np.array([e1a, e1b, e2, np.mean(e4) if e4 else np.nan, np.mean(e5)])


def _spearman_units(groups: list[StudyGroup], results: dict[str, StabilityResult],
                    importance: dict[str, list[np.ndarray]]) -> list[float]:
    deepest = max(g.depth for g in groups)
    rhos = []
    for g in groups:
        if g.depth != deepest:
            continue
        for m, imp in enumerate(importance[g.name]):
            for layer in range(deepest // 2, deepest):
                instability = 1.0 - results[g.name].per_head_stability[m, layer]
                if np.ptp(imp[layer]) > 0 and np.ptp(instability) > 0:
                    rhos.append(float(scipy.stats.spearmanr(instability, imp[layer]).statistic))
    return rhos


def stability_study(
    groups: Sequence[StudyGroup] | None = None,
    *,
    seeds: int | None = None,
    depths: Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    measure: str = "output",
    n_prompts: int = 32,
    n_blocks: int = 16,
    null: int = 2,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    backend: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> StudyResult:
    """Measure seed 004's five claims on ``groups`` (default: the zoo's refits).

    ``prompts`` (stability) and ``texts`` (importance) default to disjoint held-out documents
    of the zoo corpus. ``seeds`` / ``depths`` take a subset of the refit set.

    >>> print(stability_study(seeds=3, n_resamples=200).table())  # doctest: +SKIP
    """
    if measure not in MEASURES:
        raise TLSpecError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    groups = list(groups) if groups is not None else refit_groups(seeds=seeds, depths=depths,
                                                                   backend=backend)
    if not groups or any(len(g.models) < 2 for g in groups):
        raise TLSpecError("every study group needs two or more models (seeds)")
    prompts = list(prompts) if prompts is not None else heldout_texts(n_prompts)
    texts = list(texts) if texts is not None else heldout_texts(16, offset=n_prompts)
    results: dict[str, StabilityResult] = {}
    importance: dict[str, list[np.ndarray]] = {}
    for g in groups:
        results[g.name] = head_stability(g.models, prompts, measure=measure, null=null, resid=True,
                                         n_blocks=n_blocks, n_resamples=n_resamples,
                                         confidence=confidence, seed=seed, progress=progress)
        importance[g.name] = [head_importance(m, texts, ablations=("mean",)).mean_ablation
                              for m in g.models]
    def effect(k: int) -> Any:
        def statistic(idx: np.ndarray) -> np.ndarray:
            flat = idx.reshape(-1, idx.shape[-1])
            return np.array([_effects(results, groups, row)[k] for row in flat]).reshape(idx.shape[:-1])
        return statistic

    full = _effects(results, groups, np.arange(n_blocks))
    statistics = [
        ("stability(edge layers) - stability(middle layers), deepest models", 0),
        ("distinctness(middle) - distinctness(edges), deepest models", 1),
        ("instability of the layers nearest mid-depth: deepest - shallowest models", 2),
        ("Spearman rho(instability, mean-ablation importance) within deeper-half layers", None),
        ("mean stability: with weight decay - without, same depth", 3),
        ("resid_post CKA - head stability, mean over layers and groups", 4),
    ]
    claims = []
    for number, (text, k) in zip((1, 1, 2, 3, 4, 5), statistics, strict=True):
        if k is None:
            rhos = np.array(_spearman_units(groups, results, importance))
            value = float(rhos.mean()) if rhos.size >= 2 else float("nan")
            ci = (paired_bootstrap(lambda idx: rhos[idx].mean(-1), rhos.size,
                                   n_resamples=n_resamples, confidence=confidence, seed=seed)
                  if rhos.size >= 2 else None)
            unit = f"{rhos.size} (model, layer) units"
        else:
            value = float(full[k])
            ci = (paired_bootstrap(effect(k), n_blocks, n_resamples=n_resamples,
                                   confidence=confidence, seed=seed)
                  if np.isfinite(value) else None)
            unit = f"{n_blocks} prompt blocks"
        if ci is None:
            ci = Interval(float("nan"), float("nan"), confidence, "none", "not testable", 0)
        holds = None if not np.isfinite(value) else bool(ci.low > 0)
        if number == 5 and measure == "pattern":  # a correlation minus a CKA: no common scale
            holds, unit = None, unit + "; not comparable under measure='pattern' (use 'output')"
        claims.append(dict(id=number, claim=CLAIMS[number - 1], statistic=text, effect=value,
                           interval=ci, holds=holds, units=unit))
    summaries = [dict(name=g.name, depth=g.depth, weight_decay=g.weight_decay,
                      models=results[g.name].models, stability=results[g.name].stability,
                      null=results[g.name].null, distinctness=results[g.name].distinctness,
                      resid_cka=results[g.name].resid_cka, above_null=results[g.name].above_null,
                      importance_mean=np.mean(importance[g.name], axis=0))
                 for g in groups]
    settings = dict(measure=measure, n_prompts=len(prompts), n_texts=len(texts),
                    n_blocks=n_blocks, null=null, n_resamples=n_resamples,
                    confidence=confidence, seed=seed, importance="mean ablation")
    return StudyResult(measure=measure, groups=summaries, claims=claims, settings=settings,
                       provenance=provenance(groups[0].models[0], options=settings))
