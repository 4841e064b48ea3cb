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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.display import short_name
from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.sweep import NoiseCondition, run_sweep
from tl_spec.models import describe
from tl_spec.names import parse_layers, resolve_layers
from tl_spec.options.noise import SensitivityOptions
from tl_spec.prompts import E06_SET
from tl_spec.records import Result, array, provenance
from tl_spec.stats import LinearFit, linear_fit, seed_aggregates
from tl_spec.tokens import PromptInput, prepare_inputs

__all__ = ["SensitivityComparison", "SensitivityOptions", "SensitivityResult",
           "compare_sensitivity", "noise_sensitivity"]


def _fits(records: list[dict[str, Any]] | None) -> list[LinearFit]:
    return [LinearFit(**r) for r in records or []]


@dataclass(repr=False)
class SensitivityResult(Result):
    """Perplexity curves and their slopes against sigma, per seed.

    ``ppl`` is [sigmas, seeds, texts]; ``fits``/``log_fits`` hold one linear fit per seed of
    the mean PPL / mean log-PPL over texts against sigma; ``slope``/``log_slope`` their means
    over seeds (units: perplexity, or log-perplexity, per unit of sigma).
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
        return np.asarray(self.ppl, dtype=np.float64).mean(axis=-1)

    @property
    def sigma_unit(self) -> str:
        """``"sigma"``, or ``"sigma (RMS units)"`` when the noise was relative."""
        return "sigma (RMS units)" if self.settings.get("relative") else "sigma"

    def headline(self) -> dict[str, Any]:
        """PPL slope (per unit sigma) with its mean r^2 over seeds, and the log-PPL slope."""
        unit = f"per unit {self.sigma_unit}"
        return {f"PPL slope {unit}": self.slope,
                "r²": float(np.mean([f.r2 for f in self.fits])) if self.fits else None,
                f"log-PPL slope {unit}": self.log_slope}

    def tags(self) -> list[str]:
        return [self.site]

    def summary(self) -> str:
        """The curve and the slopes in a few lines."""
        lines = [f"noise sensitivity of {', '.join(self.model_names())} at {self.site}, layers "
                 f"{self.layers[0]}..{self.layers[-1]}, seeds {self.seeds}",
                 f"mean perplexity over texts against {self.sigma_unit}:",
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
        """Tidy table, one row per (sigma, seed, text): perplexity and log-perplexity.

        >>> s.to_frame().groupby(["sigma", "seed"]).ppl.mean()  # doctest: +SKIP
        """
        import pandas as pd

        ppl = np.asarray(self.ppl, dtype=np.float64)
        s, k, t = np.meshgrid(range(len(self.sigmas)), range(len(self.seeds)),
                              range(ppl.shape[-1]), indexing="ij")
        return pd.DataFrame({"model": (self.model_names() or [None])[0], "site": self.site,
                             "sigma": np.array(self.sigmas)[s.ravel()],
                             "seed": np.array(self.seeds)[k.ravel()], "text": t.ravel(),
                             "ppl": ppl.ravel(), "log_ppl": np.log(ppl.ravel())})


def noise_sensitivity(
    model: Any,
    texts: PromptInput = None,
    *,
    attention_mask: Any = None,
    options: SensitivityOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> SensitivityResult:
    """Perplexity on ``texts`` under noise at each sigma and seed, and its slopes against sigma.

    A fit with r^2 below ``min_r2`` is reported and warned about (the log-PPL slope is the more
    stable figure).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        texts: strings, a PromptSet, a ``[batch, pos]`` token tensor or 1-D token tensors;
            ``None``: the paper's E06 texts (:data:`tl_spec.prompts.E06_SET`).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: a :class:`~tl_spec.options.noise.SensitivityOptions` (sigmas, seeds, layers,
            site, max_length, ...).
        progress: show a progress bar over noise conditions.
        **option_values: any :class:`~tl_spec.options.noise.SensitivityOptions` field.

    Returns:
        :class:`SensitivityResult`.

    >>> from tl_spec.prompts import E06_TEXTS
    >>> s = noise_sensitivity(model, E06_TEXTS, seeds=(42, 123, 456))  # doctest: +SKIP
    >>> s.slope, s.log_slope, s.fits[0].r2  # doctest: +SKIP
    """
    opts = SensitivityOptions.build(options, **option_values)
    inputs = prepare_inputs(model, E06_SET if texts is None else texts,
                            attention_mask=attention_mask, max_length=opts.max_length,
                            prepend_bos=opts.prepend_bos)
    facts = describe(model, seq_len=opts.max_length)
    layer_list = resolve_layers(parse_layers(opts.layers), facts.n_layers)
    sigmas, seeds = opts.sigmas, opts.seeds
    conds = [NoiseCondition(tuple(layer_list), s, seed, opts.site)
             for s in sigmas for seed in seeds]
    sweep = run_sweep(model, inputs.tokenized, conds, loss=True, relative=opts.relative,
                      batch_size=opts.batch_size, padding_side=opts.padding_side, fast=opts.fast,
                      progress=progress)
    ppl = np.array([np.exp(r["nll_sum"] / r["n_predicted"]) for r in sweep.noised])
    ppl = ppl.reshape(len(sigmas), len(seeds), len(inputs))
    x = np.array(sigmas, dtype=np.float64)
    fits = [linear_fit(x, ppl[:, k].mean(-1)) for k in range(len(seeds))]
    log_fits = [linear_fit(x, np.log(ppl[:, k]).mean(-1)) for k in range(len(seeds))]
    notes = []
    low = [(seed, f.r2) for seed, f in zip(seeds, fits) if not f.r2 >= opts.min_r2]
    if low:
        notes.append(
            "PPL-vs-sigma fits with r^2 < {:.2f} for seeds {}: the linear slope describes these "
            "curves poorly; prefer the log-PPL slope and look at the curve".format(
                opts.min_r2, ", ".join(f"{s} (r2 {r:.2f})" for s, r in low)))
        warnings.warn(notes[-1], TLSpecWarning, stacklevel=2)
    settings = dict(opts.to_dict(), layer_spec=opts.layers, layers=layer_list,
                    prepend_bos=inputs.tokenized.prepend_bos, n_texts=len(inputs),
                    n_truncated=inputs.tokenized.n_truncated,
                    input="token ids" if inputs.from_tokens else "text", site_rms=sweep.rms,
                    forwards=sweep.forwards,
                    perplexity="exp(mean next-token NLL over each text's predicted tokens)",
                    slope="linregress of the mean over texts against sigma, per seed")
    return SensitivityResult(
        sigmas=list(sigmas), seeds=list(seeds), layers=layer_list, site=opts.site, ppl=ppl,
        fits=fits, log_fits=log_fits, slope=float(np.mean([f.slope for f in fits])),
        log_slope=float(np.mean([f.slope for f in log_fits])), min_r2=opts.min_r2,
        warnings=notes, settings=settings,
        provenance=provenance(model, prompts=inputs.info, architecture=facts.to_dict(),
                              options=settings),
    )


@dataclass(repr=False)
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

    def model_names(self) -> list[str]:
        """Short names of both models, ``[a, b]``."""
        return [short_name(m) for m in self.models]

    def headline(self) -> dict[str, Any]:
        """The three aggregates of the PPL-slope ratio b / a and the permutation p-value."""
        return {"ratio of means": self.ratio_of_means, "median of ratios": self.median_of_ratios,
                "mean of ratios": self.mean_of_ratios, "p": self.pvalue}

    def summary(self) -> str:
        """The three aggregates and the test."""
        a, b = self.model_names()
        return (f"PPL-slope ratio {b} / {a}: ratio of means "
                f"{self.ratio_of_means:,.1f}x, median of ratios {self.median_of_ratios:,.1f}x, "
                f"mean of ratios {self.mean_of_ratios:,.1f}x (per seed "
                + ", ".join(f"{r:,.1f}x" for r in self.per_seed_ratios)
                + f"); permutation test over seeds p = {self.pvalue:.3g}")

    def to_frame(self) -> Any:
        """Tidy table, one row per seed: both models' PPL and log-PPL slopes and their ratio.

        >>> compare_sensitivity(mha, gqa).to_frame()  # doctest: +SKIP
        """
        import pandas as pd

        a, b = self.model_names()
        return pd.DataFrame({"model_a": a, "model_b": b, "seed": list(self.a.seeds),
                             "slope_a": np.asarray(self.slopes_a, dtype=np.float64),
                             "slope_b": np.asarray(self.slopes_b, dtype=np.float64),
                             "ratio": np.asarray(self.per_seed_ratios, dtype=np.float64),
                             "log_slope_a": np.asarray(self.log_slopes_a, dtype=np.float64),
                             "log_slope_b": np.asarray(self.log_slopes_b, dtype=np.float64)})


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
    models = [str(a.provenance.get("model")), str(b.provenance.get("model"))]
    return SensitivityComparison(
        models=models, a=a, b=b,
        slopes_a=sa, slopes_b=sb, log_slopes_a=np.array([f.slope for f in a.log_fits]),
        log_slopes_b=np.array([f.slope for f in b.log_fits]),
        ratio_of_means=float(agg["ratio_of_means"]), median_of_ratios=float(agg["median_of_ratios"]),
        mean_of_ratios=float(agg["mean_of_ratios"]),
        per_seed_ratios=[float(x) for x in agg["per_seed_ratios"]], pvalue=float(test.pvalue),
        settings={"test": "exact permutation of log|slope| between models over seeds"},
        provenance={"versions": a.provenance["versions"], "timestamp": b.provenance["timestamp"],
                    "a": a.provenance.get("model"), "b": b.provenance.get("model"),
                    "models": models},
    )
