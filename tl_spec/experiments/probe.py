"""The perturbation probe (paper Sec. 2.4, Table 2) and the E11-T sweep over regions and sigmas.

Gaussian noise is added at the attention output of a layer range; the response is the relative
change of SI. The paper's reading: > +20 % suppressed capacity (pathological), within +-5 %
stable (healthy), a decrease optimized (noise-sensitive); +5..+20 % it leaves unnamed
("indeterminate" here). Band edges are parameters.

>>> probe = perturbation_probe(model, STANDARD_10, sigma=0.05)   # doctest: +SKIP
>>> probe.response_pct, probe.verdict                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.experiments.delta import check_stats_options, relative_change
from tl_spec.experiments.si import check_options
from tl_spec.experiments.sweep import NoiseCondition, run_sweep
from tl_spec.hooks.noising import LayerSpec, check_noise_options, resolve_layers
from tl_spec.metrics.specialization import prompt_summary, si_value_from_prompts
from tl_spec.models import describe, require_pattern_hooks
from tl_spec.prompts import as_prompt_set
from tl_spec.records import Result, array, provenance
from tl_spec.stats import Interval, paired_bootstrap
from tl_spec.tokens import tokenize, validate_prompts

__all__ = ["ProbeResult", "SweepResult", "perturbation_probe", "probe_sweep", "verdict"]

_STAT = {"pattern": "correlation", "entropy_profile": "column_entropy",
         "normalized_entropy": "row_entropy"}


def verdict(response_pct: float, *, stable: float = 5.0, suppressed: float = 20.0) -> str:
    """The paper's Table 2 reading of a probe response (percent SI change under noise).

    >>> [verdict(x) for x in (30.0, 2.0, -8.0, 12.0)]
    ['suppressed (pathological)', 'stable (healthy)', 'optimized (noise-sensitive)', 'indeterminate']
    """
    if response_pct > suppressed:
        return "suppressed (pathological)"
    if abs(response_pct) <= stable:
        return "stable (healthy)"
    if response_pct < 0:
        return "optimized (noise-sensitive)"
    return "indeterminate"


def _validate(model: Any, prompts: Any, method: str, site: str, seeds: Sequence[int],
              sigmas: Sequence[float], max_length: int, batch_size: int) -> list[str]:
    check_options(method, "lower", "prompt", batch_size, max_length)
    check_noise_options(site=site, sigmas=sigmas, seeds=seeds)
    require_pattern_hooks(model)
    return validate_prompts(as_prompt_set(prompts).prompts)


@dataclass
class ProbeResult(Result):
    """Clean SI, SI under noise per seed, the response (%) with a prompt-bootstrap interval, verdict."""

    kind = "perturbation_probe"
    decoders = {"si_noised": array, "response_per_seed": array, "interval": lambda d: Interval(**d),
                "per_layer_clean": array, "per_layer_noised": array}
    method: str
    sigma: float
    layers: list[int]
    site: str
    seeds: list[int]
    si_clean: float
    si_noised: Float[np.ndarray, "n_seeds"]
    response_pct: float
    response_per_seed: Float[np.ndarray, "n_seeds"]
    interval: Interval
    verdict: str
    bands: dict[str, float]
    per_layer_clean: Float[np.ndarray, "n_layers"] | None
    per_layer_noised: Float[np.ndarray, "n_layers"] | None
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        """The probe in a few lines."""
        iv = self.interval
        return "\n".join([
            f"perturbation probe: sigma={self.sigma} at {self.site}, layers {self.layers[0]}.."
            f"{self.layers[-1]}, seeds {self.seeds}, SI method {self.method}",
            f"SI clean = {self.si_clean:.6f}; under noise (per seed) = "
            + ", ".join(f"{x:.6f}" for x in self.si_noised),
            f"response = {self.response_pct:+.2f} %  ({iv.level:.0%} CI [{iv.low:+.2f}, "
            f"{iv.high:+.2f}], {iv.method}; per seed "
            + ", ".join(f"{x:+.2f}" for x in self.response_per_seed) + ")",
            f"verdict: {self.verdict}",
        ])

    def to_frame(self) -> Any:
        """One row per seed."""
        import pandas as pd

        return pd.DataFrame({"seed": self.seeds, "si_clean": self.si_clean,
                             "si_noised": self.si_noised, "response_pct": self.response_per_seed,
                             "verdict": self.verdict})


def perturbation_probe(
    model: Any,
    prompts: Sequence[str],
    *,
    sigma: float = 0.05,
    seeds: Sequence[int] = (42, 123, 456),
    layers: LayerSpec = "all",
    site: str = "attn_out",
    method: str = "pattern",
    relative: bool = False,
    stable_band: float = 5.0,
    suppressed_above: float = 20.0,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    max_length: int = 128,
    batch_size: int = 16,
    fast: bool = True,
) -> ProbeResult:
    """SI response to Gaussian noise (sigma) at ``site`` in ``layers``, over ``seeds``.

    The response is the ratio of means: (mean over seeds of SI under noise - clean SI) / clean SI
    x 100. Its interval resamples prompts (each carrying its clean and all-seed noised statistics).

    >>> p = perturbation_probe(model, STANDARD_10, sigma=0.05, layers="late")  # doctest: +SKIP
    """
    prompt_list = _validate(model, prompts, method, site, seeds, [sigma], max_length, batch_size)
    check_stats_options(confidence, n_resamples, len(prompt_list))
    facts = describe(model, seq_len=max_length)
    layer_list = resolve_layers(layers, facts.n_layers)
    tokenized = tokenize(model, prompt_list, max_length=max_length)
    conds = [NoiseCondition(tuple(layer_list), float(sigma), int(s), site) for s in seeds]
    sweep = run_sweep(model, tokenized, conds, stats=(_STAT[method],), relative=relative,
                      batch_size=batch_size, fast=fast)
    lengths = np.array(tokenized.lengths)
    clean = prompt_summary(method, sweep.clean, lengths)
    noised = np.stack([prompt_summary(method, r, lengths) for r in sweep.noised])  # [S, P, ...]
    si_clean = float(si_value_from_prompts(method, clean))
    si_noised = np.array([float(si_value_from_prompts(method, x)) for x in noised])
    response = float(relative_change(si_clean, si_noised.mean()))

    def stat(idx: np.ndarray) -> np.ndarray:
        c = si_value_from_prompts(method, clean[idx])
        n = np.mean([si_value_from_prompts(method, x[idx]) for x in noised], axis=0)
        return relative_change(c, n)

    interval = paired_bootstrap(stat, len(prompt_list), confidence=confidence,
                                n_resamples=n_resamples, seed=int(seeds[0]))
    per_layer = None, None
    if method != "entropy_profile":
        per_layer = (np.nanmean(clean, axis=0), np.nanmean(noised, axis=(0, 1)))
    settings = dict(method=method, sigma=sigma, layers=layer_list, site=site, seeds=list(seeds),
                    relative=relative, site_rms=sweep.rms, confidence=confidence,
                    n_resamples=n_resamples, max_length=max_length, batch_size=batch_size,
                    fast=fast, forwards=sweep.forwards, n_truncated=tokenized.n_truncated,
                    response="ratio of means over seeds; interval resamples prompts")
    bands = {"stable_within": stable_band, "suppressed_above": suppressed_above}
    return ProbeResult(
        method=method, sigma=float(sigma), layers=layer_list, site=site, seeds=list(seeds),
        si_clean=si_clean, si_noised=si_noised, response_pct=response,
        response_per_seed=relative_change(si_clean, si_noised), interval=interval,
        verdict=verdict(response, stable=stable_band, suppressed=suppressed_above), bands=bands,
        per_layer_clean=per_layer[0], per_layer_noised=per_layer[1], settings=settings,
        provenance=provenance(model, prompts=as_prompt_set(prompt_list).hashes(),
                              architecture=facts.to_dict(), options=settings),
    )


@dataclass
class SweepResult(Result):
    """The E11-T grid: SI per (region, sigma, seed), its change from clean, recovery to a target."""

    kind = "probe_sweep"
    decoders = {"si": array, "change_pct": array}
    method: str
    regions: list[str]
    region_layers: dict[str, list[int]]
    sigmas: list[float]
    seeds: list[int]
    si_clean: float
    si: Float[np.ndarray, "n_regions n_sigmas n_seeds"]
    change_pct: Float[np.ndarray, "n_regions n_sigmas n_seeds"]
    target_si: float | None
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def to_frame(self) -> Any:
        """Tidy table: region, sigma, seed, SI, change (%), recovery towards ``target_si``."""
        import pandas as pd

        rows = []
        for i, region in enumerate(self.regions):
            for j, sigma in enumerate(self.sigmas):
                for k, seed in enumerate(self.seeds):
                    si = float(self.si[i, j, k])
                    rec = None
                    if self.target_si is not None and self.target_si != self.si_clean:
                        rec = (si - self.si_clean) / (self.target_si - self.si_clean)
                    rows.append({"region": region, "sigma": sigma, "seed": seed, "si": si,
                                 "change_pct": float(self.change_pct[i, j, k]),
                                 "recovery": rec})
        return pd.DataFrame(rows)


def probe_sweep(
    model: Any,
    prompts: Sequence[str],
    *,
    sigmas: Sequence[float] = (0, 0.01, 0.02, 0.05, 0.1, 0.2),
    regions: Sequence[LayerSpec] = ("early", "middle", "late", "all"),
    seeds: Sequence[int] = (42, 123, 456),
    site: str = "attn_out",
    method: str = "entropy_profile",
    target_si: float | None = None,
    relative: bool = False,
    max_length: int = 128,
    batch_size: int = 16,
    fast: bool = True,
    progress: bool = False,
) -> SweepResult:
    """Run the E11-T grid (regions x sigmas x seeds) with one clean run and prefix reuse.

    ``target_si`` (e.g. the base twin's SI) adds a recovery ratio
    (SI_noised - SI_clean) / (target - SI_clean) to the table.

    >>> sweep = probe_sweep(model, STANDARD_10, target_si=0.71)  # doctest: +SKIP
    >>> sweep.to_frame().groupby(["region", "sigma"]).si.mean()  # doctest: +SKIP
    """
    prompt_list = _validate(model, prompts, method, site, seeds, sigmas, max_length, batch_size)
    facts = describe(model, seq_len=max_length)
    names = [r if isinstance(r, str) else str(tuple(r)) for r in regions]
    layer_sets = {n: resolve_layers(r, facts.n_layers) for n, r in zip(names, regions)}
    tokenized = tokenize(model, prompt_list, max_length=max_length)
    conds = [NoiseCondition(tuple(layer_sets[n]), float(s), int(seed), site, n)
             for n in names for s in sigmas for seed in seeds]
    sweep = run_sweep(model, tokenized, conds, stats=(_STAT[method],), relative=relative,
                      batch_size=batch_size, fast=fast, progress=progress)
    lengths = np.array(tokenized.lengths)
    si_clean = float(si_value_from_prompts(method, prompt_summary(method, sweep.clean, lengths)))
    values = np.array([float(si_value_from_prompts(method, prompt_summary(method, r, lengths)))
                       for r in sweep.noised]).reshape(len(names), len(sigmas), len(seeds))
    settings = dict(method=method, site=site, relative=relative, site_rms=sweep.rms,
                    max_length=max_length, batch_size=batch_size, fast=fast,
                    forwards=sweep.forwards, n_truncated=tokenized.n_truncated)
    return SweepResult(
        method=method, regions=names, region_layers=layer_sets, sigmas=[float(s) for s in sigmas],
        seeds=[int(s) for s in seeds], si_clean=si_clean, si=values,
        change_pct=relative_change(si_clean, values), target_si=target_si, settings=settings,
        provenance=provenance(model, prompts=as_prompt_set(prompt_list).hashes(),
                              architecture=facts.to_dict(), options=settings),
    )
