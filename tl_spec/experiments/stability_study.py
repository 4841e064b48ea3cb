"""The five head-stability claims of Bali et al. (2026, "Quantifying LLM Attention-Head
Stability"), measured on groups of refits (one configuration, several seeds each).

Each group is one configuration (depth, weight decay) trained from several seeds. Per group:
:func:`~tl_spec.head_stability` (with random-init nulls and ``resid_post`` CKA) and, per model,
:func:`~tl_spec.experiments.importance.head_importance` (mean ablation). Every claim becomes a
signed effect whose positive sign supports it, with a bootstrap interval over the same prompt
blocks in every group (so differences between groups stay paired); a claim "holds here" when
its interval excludes zero on the supporting side.

The caller passes the groups and texts; the zoo's refit set is one source of them
(:func:`tl_spec.zoo.refit_groups`, which needs `tl-spec zoo build refits`).

>>> from tl_spec import stability_study
>>> study = stability_study(tl_spec.zoo.refit_groups(seeds=3), prompts, texts)  # doctest: +SKIP
>>> print(study.summary())                                          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats

from tl_spec.corpus import heldout_texts
from tl_spec.display import short_name
from tl_spec.errors import TLSpecError
from tl_spec.experiments.importance import head_importance
from tl_spec.experiments.stability import StabilityResult, head_stability
from tl_spec.options.base import split_options
from tl_spec.options.si import StatsOptions
from tl_spec.options.stability import (
    StabilityOptions,
    StabilityStatsOptions,
    StabilityStudyOptions,
)
from tl_spec.prompts import PromptSet
from tl_spec.records import Result, provenance
from tl_spec.sources import source
from tl_spec.stats import Interval, interval_records, paired_bootstrap

__all__ = ["CLAIMS", "StabilityStudyOptions", "StudyGroup", "StudyResult", "stability_study"]

CLAIMS = (
    "middle-layer heads are the least stable yet the most distinct",
    "deeper models show stronger mid-depth divergence",
    "unstable heads in deeper layers are more important than their layer peers",
    "weight decay improves head stability",
    "the residual stream is comparatively stable",
)
_VERDICT = {True: "holds", False: "does not hold", None: "not testable"}


@dataclass
class StudyGroup:
    """One configuration trained from several seeds: its ``name``, ``depth``, ``weight_decay``
    and the loaded ``models`` (two or more).

    >>> StudyGroup("L2-wd0", 2, 0.0, [model_a, model_b]).depth  # doctest: +SKIP
    2
    """

    name: str
    depth: int
    weight_decay: float
    models: list[Any]


def _floats(values: Any) -> np.ndarray:
    """A group's profile as floats (read back from JSON, ``None`` is NaN)."""
    return np.asarray(values, dtype=np.float64)


@dataclass(repr=False)
class StudyResult(Result):
    """Per group the stability summary; per claim the effect, interval and verdict."""

    kind = "stability_study"
    decoders = {"claims": interval_records}
    measure: str
    groups: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def model_names(self) -> list[str]:
        """Short names of every model of every group, in group order."""
        return [short_name(m) for g in self.groups for m in g["models"]]

    def tags(self) -> list[str]:
        """The head similarity measure."""
        return [self.measure]

    def headline(self) -> dict[str, Any]:
        """Claims that hold / were testable, groups, models, mean stability and null level."""
        testable = [c for c in self.claims if c["holds"] is not None]
        stab = [_floats(g["stability"]) for g in self.groups]
        null = [_floats(g["null"]) for g in self.groups]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"claims holding": f"{sum(bool(c['holds']) for c in testable)}/{len(testable)}"
                                      " testable",
                    "groups": len(self.groups), "models": len(self.model_names()),
                    "stability": float(np.nanmean(np.concatenate(stab))),
                    "null": float(np.nanmean(np.concatenate(null)))}

    def to_frame(self) -> Any:
        """Tidy table, one row per group and layer: stability, null, distinctness, resid CKA,
        above null and the mean-ablation importance averaged over the layer's heads.

        >>> study.to_frame().pivot(index="layer", columns="group", values="stability")  # doctest: +SKIP
        """
        import pandas as pd

        rows = []
        for g in self.groups:
            stability, null = _floats(g["stability"]), _floats(g["null"])
            distinct = _floats(g["distinctness"])
            resid = None if g.get("resid_cka") is None else _floats(g["resid_cka"])
            importance = _floats(g["importance_mean"])
            for layer in range(len(stability)):
                rows.append({"group": g["name"], "depth": g["depth"],
                             "weight_decay": g["weight_decay"], "n_models": len(g["models"]),
                             "measure": self.measure, "layer": layer,
                             "stability": float(stability[layer]), "null": float(null[layer]),
                             "above_null": bool(g["above_null"][layer]),
                             "distinctness": float(distinct[layer]),
                             "resid_cka": None if resid is None else float(resid[layer]),
                             "importance_mean": float(np.mean(importance[layer]))})
        return pd.DataFrame(rows)

    def claims_frame(self) -> Any:
        """One row per claim statistic: claim id and text, effect, interval, verdict, units.

        >>> study.claims_frame()[["id", "effect", "verdict"]]  # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame([{"id": c["id"], "claim": c["claim"], "statistic": c["statistic"],
                              "effect": c["effect"], "low": c["interval"].low,
                              "high": c["interval"].high, "verdict": _VERDICT[c["holds"]],
                              "units": c["units"]} for c in self.claims])

    def summary(self) -> str:
        """One line per claim: effect [interval] and whether it holds at this scale."""
        lines = [f"Bali et al. (2026) claims, measure={self.measure} (positive effect supports the claim)"]
        for c in self.claims:
            ci = c["interval"]
            lines.append(f"{c['id']}. {c['claim']}\n   {c['statistic']}: {c['effect']:+.4f} "
                         f"[{ci.low:+.4f}, {ci.high:+.4f}] -> {_VERDICT[c['holds']]}")
        return "\n".join(lines)


def _zoo_texts(n_prompts: int) -> tuple[list[str], list[str]]:
    """Disjoint held-out zoo documents: ``n_prompts`` stability prompts, 16 importance texts."""
    return heldout_texts(n_prompts), heldout_texts(16, offset=n_prompts)


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
    prompts: Sequence[str] | PromptSet | None = None,
    texts: Sequence[str] | None = None,
    *,
    options: StabilityStudyOptions | None = None,
    stats: StatsOptions | None = None,
    progress: bool = False,
    seeds: int | None = None,
    depths: Sequence[int] | None = None,
    n_prompts: int = 32,
    backend: str = "auto",
    **option_values: Any,
) -> StudyResult:
    """Measure the five head-stability claims of Bali et al. (2026) on ``groups`` of refits.

    Args:
        groups: the configurations, each two or more models trained from different seeds
            (e.g. :func:`tl_spec.zoo.refit_groups`). Deprecated: ``None`` loads the zoo's refit set.
        prompts: stability prompts, the same for every group. Deprecated: ``None`` takes
            ``n_prompts`` held-out zoo documents.
        texts: importance texts. Deprecated: ``None`` takes 16 further held-out documents.
        options: a :class:`~tl_spec.options.StabilityStudyOptions` (``measure``, ``n_blocks``,
            ``null``); keywords override its fields.
        stats: statistics options (``confidence``, ``n_resamples`` (1000 unless given),
            ``seed``); keywords override its fields.
        progress: show progress bars.
        seeds, depths, backend: deprecated, with ``groups=None``: the refit subset and backend.
        n_prompts: deprecated, with ``prompts=None``: how many held-out documents.
        **option_values: fields of either options class.

    Returns:
        :class:`StudyResult`.

    >>> print(stability_study(tl_spec.zoo.refit_groups(seeds=3), prompts, texts, n_resamples=200).summary())  # doctest: +SKIP
    """
    opts, st = split_options(
        option_values, (StabilityStudyOptions, options),
        (StabilityStatsOptions, stats.to_kwargs() if type(stats) is StatsOptions else stats))
    if groups is None or prompts is None or texts is None:
        warnings.warn("stability_study without groups, prompts and texts is deprecated: pass "
                      "them (groups=tl_spec.zoo.refit_groups(seeds=..., depths=..., backend=...), held-out "
                      "texts as prompts and texts)", DeprecationWarning, stacklevel=2)
    stab_opts = StabilityOptions(measure=opts.measure, null=opts.null, resid=True,
                                 n_blocks=opts.n_blocks)
    stab_opts.blocks_for(n_prompts if prompts is None else
                         len(prompts.prompts if isinstance(prompts, PromptSet) else prompts))
    groups = list(groups) if groups is not None else source("refit_groups")(
        seeds=seeds, depths=depths, backend=backend)
    if not groups or any(len(g.models) < 2 for g in groups):
        raise TLSpecError("every study group needs two or more models (seeds)")
    if prompts is None or texts is None:
        zoo_prompts, zoo_texts = _zoo_texts(n_prompts)
        prompts = zoo_prompts if prompts is None else prompts
        texts = zoo_texts if texts is None else texts
    texts = list(texts)
    results: dict[str, StabilityResult] = {}
    importance: dict[str, list[np.ndarray]] = {}
    for g in groups:
        results[g.name] = head_stability(g.models, prompts, options=stab_opts, stats=st,
                                         progress=progress)
        importance[g.name] = [head_importance(m, texts, ablations=("mean",)).mean_ablation
                              for m in g.models]
    claims = _claims(groups, results, importance, opts, st)
    summaries = [dict(name=g.name, depth=g.depth, weight_decay=g.weight_decay,
                      models=results[g.name].models, stability=results[g.name].stability,
                      null=results[g.name].null, distinctness=results[g.name].distinctness,
                      resid_cka=results[g.name].resid_cka, above_null=results[g.name].above_null,
                      importance_mean=np.mean(importance[g.name], axis=0))
                 for g in groups]
    settings = dict(measure=opts.measure, n_prompts=results[groups[0].name].settings["n_prompts"],
                    n_texts=len(texts), n_blocks=opts.n_blocks, null=opts.null,
                    n_resamples=st.n_resamples, confidence=st.confidence, seed=st.seed,
                    importance="mean ablation")
    return StudyResult(measure=opts.measure, groups=summaries, claims=claims, settings=settings,
                       provenance=provenance(groups[0].models[0], options=settings,
                                             prompts=results[groups[0].name]
                                             .provenance.get("prompts")))


def _claims(groups: list[StudyGroup], results: dict[str, StabilityResult],
            importance: dict[str, list[np.ndarray]], opts: StabilityStudyOptions,
            st: StabilityStatsOptions) -> list[dict[str, Any]]:
    """Every claim statistic: effect, paired bootstrap interval, verdict, units."""
    n_blocks, n_resamples, confidence, seed = opts.n_blocks, st.n_resamples, st.confidence, st.seed

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
        if number == 5 and opts.measure == "pattern":  # a correlation minus a CKA: no common scale
            holds, unit = None, unit + "; not comparable under measure='pattern' (use 'output')"
        claims.append(dict(id=number, claim=CLAIMS[number - 1], statistic=text, effect=value,
                           interval=ci, holds=holds, units=unit))
    return claims
