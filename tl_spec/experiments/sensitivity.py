"""Noise sensitivity (paper E06, Table 5, Appendix B): perplexity against noise sigma.

Perplexity of each text (exp of the mean next-token NLL) at each sigma and seed; per seed, the
slope of the mean perplexity over texts against sigma (``scipy.stats.linregress``, as E06) and
the slope of mean log-perplexity (more stable: the stored E06 curves are non-monotonic with r^2
as low as 0.15), each with r^2 and p. :func:`compare_sensitivity` gives slope ratios aggregated
over seeds (ratio of means, median of ratios, mean of ratios) with a permutation test.

>>> s = noise_sensitivity(model, E06_TEXTS)   # doctest: +SKIP
>>> s.slope, s.log_slope, s.fits[0].r2         # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.sweep import NoiseCondition, run_sweep
from tl_spec.hooks.noising import LayerSpec, check_noise_options, resolve_layers
from tl_spec.models import describe
from tl_spec.prompts import as_prompt_set
from tl_spec.records import Result, array, provenance
from tl_spec.stats import LinearFit, linear_fit, seed_aggregates
from tl_spec.tokens import tokenize, validate_prompts

__all__ = ["SensitivityComparison", "SensitivityResult", "compare_sensitivity",
           "noise_sensitivity"]


def _fits(records: list[dict[str, Any]] | None) -> list[LinearFit]:
    return [LinearFit(**r) for r in records or []]


@dataclass
class SensitivityResult(Result):
    """Perplexity curves and their slopes against sigma, per seed.

    ``ppl`` is [sigmas, seeds, texts]; ``fits``/``log_fits`` hold one linear fit per seed of
    the mean PPL / mean log-PPL over texts against sigma; ``slope``/``log_slope`` their means
    over seeds.
    """

    kind = "noise_sensitivity"
    decoders = {"ppl": array, "fits": _fits, "log_fits": _fits}
    sigmas: list[float]
    seeds: list[int]
    layers: list[int]
    site: str
    ppl: Float[np.ndarray, "n_sigmas n_seeds n_texts"]
    fits: list[LinearFit]
    log_fits: list[LinearFit]
    slope: float
    log_slope: float
    min_r2: float
    warnings: list[str]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    @property
    def curve(self) -> Float[np.ndarray, "n_sigmas n_seeds"]:
        """Mean perplexity over texts, per sigma and seed."""
        return self.ppl.mean(axis=-1)

    def summary(self) -> str:
        """The curve and the slopes in a few lines."""
        lines = [f"noise sensitivity at {self.site}, layers {self.layers[0]}..{self.layers[-1]}, "
                 f"seeds {self.seeds}",
                 f"{'sigma':>7}  " + "  ".join(f"{'seed ' + str(s):>12}" for s in self.seeds)]
        for i, sigma in enumerate(self.sigmas):
            lines.append(f"{sigma:7.3f}  " + "  ".join(f"{x:12.4f}" for x in self.curve[i]))
        lines.append("PPL slope per seed: " + ", ".join(
            f"{f.slope:.4g} (r2 {f.r2:.2f})" for f in self.fits) + f"; mean {self.slope:.4g}")
        lines.append("log-PPL slope per seed: " + ", ".join(
            f"{f.slope:.4g} (r2 {f.r2:.2f})" for f in self.log_fits) + f"; mean {self.log_slope:.4g}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """Tidy table: sigma, seed, text index, perplexity."""
        import pandas as pd

        s, k, t = np.meshgrid(range(len(self.sigmas)), range(len(self.seeds)),
                              range(self.ppl.shape[-1]), indexing="ij")
        return pd.DataFrame({"sigma": np.array(self.sigmas)[s.ravel()],
                             "seed": np.array(self.seeds)[k.ravel()], "text": t.ravel(),
                             "ppl": self.ppl.ravel()})


def noise_sensitivity(
    model: Any,
    texts: Sequence[str],
    *,
    sigmas: Sequence[float] = (0, 0.01, 0.02, 0.05, 0.1, 0.2),
    seeds: Sequence[int] = (42, 123, 456),
    layers: LayerSpec = "all",
    site: str = "attn_out",
    relative: bool = False,
    min_r2: float = 0.5,
    max_length: int = 128,
    batch_size: int = 16,
    fast: bool = True,
    progress: bool = False,
) -> SensitivityResult:
    """Perplexity on ``texts`` under noise at each sigma and seed, and its slopes against sigma.

    A fit with r^2 below ``min_r2`` is reported and warned about (the log-PPL slope is the more
    stable figure).

    >>> from tl_spec.prompts import E06_TEXTS
    >>> s = noise_sensitivity(model, E06_TEXTS, seeds=(42, 123, 456))  # doctest: +SKIP
    """
    text_list = validate_prompts(as_prompt_set(texts).prompts)
    if len(set(sigmas)) < 3:
        raise TLSpecError(f"a slope needs at least 3 distinct sigmas, got {list(sigmas)}")
    check_noise_options(site=site, sigmas=sigmas, seeds=seeds)
    facts = describe(model, seq_len=max_length)
    layer_list = resolve_layers(layers, facts.n_layers)
    tokenized = tokenize(model, text_list, max_length=max_length)
    conds = [NoiseCondition(tuple(layer_list), float(s), int(seed), site)
             for s in sigmas for seed in seeds]
    sweep = run_sweep(model, tokenized, conds, loss=True, relative=relative,
                      batch_size=batch_size, fast=fast, progress=progress)
    ppl = np.array([np.exp(r["nll_sum"] / r["n_predicted"]) for r in sweep.noised])
    ppl = ppl.reshape(len(sigmas), len(seeds), len(text_list))
    x = np.array(sigmas, dtype=np.float64)
    fits = [linear_fit(x, ppl[:, k].mean(-1)) for k in range(len(seeds))]
    log_fits = [linear_fit(x, np.log(ppl[:, k]).mean(-1)) for k in range(len(seeds))]
    notes = []
    low = [(seed, f.r2) for seed, f in zip(seeds, fits) if not f.r2 >= min_r2]
    if low:
        notes.append(
            "PPL-vs-sigma fits with r^2 < {:.2f} for seeds {}: the linear slope describes these "
            "curves poorly; prefer the log-PPL slope and look at the curve".format(
                min_r2, ", ".join(f"{s} (r2 {r:.2f})" for s, r in low)))
        warnings.warn(notes[-1], TLSpecWarning, stacklevel=2)
    settings = dict(relative=relative, site_rms=sweep.rms, max_length=max_length,
                    batch_size=batch_size, fast=fast, forwards=sweep.forwards,
                    n_truncated=tokenized.n_truncated,
                    perplexity="exp(mean next-token NLL over each text's predicted tokens)",
                    slope="linregress of the mean over texts against sigma, per seed")
    return SensitivityResult(
        sigmas=[float(s) for s in sigmas], seeds=[int(s) for s in seeds], layers=layer_list,
        site=site, ppl=ppl, fits=fits, log_fits=log_fits,
        slope=float(np.mean([f.slope for f in fits])),
        log_slope=float(np.mean([f.slope for f in log_fits])), min_r2=min_r2, warnings=notes,
        settings=settings,
        provenance=provenance(model, prompts=as_prompt_set(text_list).hashes(),
                              architecture=facts.to_dict(), options=settings),
    )


@dataclass
class SensitivityComparison(Result):
    """Slope ratio b / a aggregated over seeds, with a permutation test over seeds."""

    kind = "sensitivity_comparison"
    decoders = {"slopes_a": array, "slopes_b": array, "log_slopes_a": array,
                "log_slopes_b": array, "a": SensitivityResult.from_dict,
                "b": SensitivityResult.from_dict}
    models: list[str]
    a: SensitivityResult
    b: SensitivityResult
    slopes_a: Float[np.ndarray, "n_seeds"]
    slopes_b: Float[np.ndarray, "n_seeds"]
    log_slopes_a: Float[np.ndarray, "n_seeds"]
    log_slopes_b: Float[np.ndarray, "n_seeds"]
    ratio_of_means: float
    median_of_ratios: float
    mean_of_ratios: float
    per_seed_ratios: list[float]
    pvalue: float
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        """The three aggregates and the test."""
        return (f"PPL-slope ratio {self.models[1]} / {self.models[0]}: ratio of means "
                f"{self.ratio_of_means:,.1f}x, median of ratios {self.median_of_ratios:,.1f}x, "
                f"mean of ratios {self.mean_of_ratios:,.1f}x (per seed "
                + ", ".join(f"{r:,.1f}x" for r in self.per_seed_ratios)
                + f"); permutation test over seeds p = {self.pvalue:.3g}")


def compare_sensitivity(a: SensitivityResult, b: SensitivityResult) -> SensitivityComparison:
    """Compare two models' PPL slopes seed by seed (Appendix B aggregates; b relative to a).

    The permutation test exchanges the two models' per-seed slopes (log scale) over all
    C(2n, n) splits: with three seeds each, p cannot be below 0.1.

    >>> compare_sensitivity(mha, gqa).ratio_of_means  # doctest: +SKIP
    """
    from scipy.stats import permutation_test

    if a.seeds != b.seeds or a.sigmas != b.sigmas:
        raise TLSpecError("compare results measured with the same seeds and sigmas "
                          f"(got seeds {a.seeds} vs {b.seeds}, sigmas {a.sigmas} vs {b.sigmas})")
    sa = np.array([f.slope for f in a.fits])
    sb = np.array([f.slope for f in b.fits])
    agg = seed_aggregates(sa, sb)
    with np.errstate(invalid="ignore", divide="ignore"):
        la, lb = np.log(np.abs(sa)), np.log(np.abs(sb))
    test = permutation_test((la, lb), lambda x, y, axis: np.mean(y, axis) - np.mean(x, axis),
                            permutation_type="independent", vectorized=True,
                            n_resamples=np.inf, alternative="two-sided")
    return SensitivityComparison(
        models=[str(a.provenance.get("model")), str(b.provenance.get("model"))], a=a, b=b,
        slopes_a=sa, slopes_b=sb, log_slopes_a=np.array([f.slope for f in a.log_fits]),
        log_slopes_b=np.array([f.slope for f in b.log_fits]),
        ratio_of_means=float(agg["ratio_of_means"]), median_of_ratios=float(agg["median_of_ratios"]),
        mean_of_ratios=float(agg["mean_of_ratios"]),
        per_seed_ratios=[float(x) for x in agg["per_seed_ratios"]], pvalue=float(test.pvalue),
        settings={"test": "exact permutation of log|slope| between models over seeds"},
        provenance={"versions": a.provenance["versions"], "timestamp": b.provenance["timestamp"],
                    "a": a.provenance.get("model"), "b": b.provenance.get("model")},
    )
