"""The perturbation probe (paper Sec. 2.4, Table 2) and the E11-T sweep over regions and sigmas.

Gaussian noise is added at the attention output of a layer range; the response is the relative
change of SI. The paper's reading: > +20 % suppressed capacity (pathological), within +-5 %
stable (healthy), a decrease optimized (noise-sensitive); +5..+20 % it leaves unnamed
("indeterminate" here). Band edges are options.

Prompts are text (a list of strings or a PromptSet) or token ids (a ``[batch, pos]`` tensor with
an optional ``attention_mask``, or a list of 1-D tensors). Options are the fields of
:class:`~tl_spec.options.noise.ProbeOptions` / :class:`~tl_spec.options.noise.SweepOptions`,
:class:`~tl_spec.options.SIOptions` (how SI is measured) and, for the probe's interval,
:class:`~tl_spec.options.StatsOptions`, given as keywords or as options objects.

>>> probe = perturbation_probe(model, STANDARD_10, sigma=0.05)   # doctest: +SKIP
>>> probe.response_pct, probe.verdict                             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.experiments.delta import relative_change
from tl_spec.experiments.sweep import NoiseCondition, SweepStats, run_sweep
from tl_spec.metrics.specialization import prompt_summary, si_value_from_prompts
from tl_spec.models import ModelFacts, describe, require_pattern_hooks
from tl_spec.names import parse_layers, resolve_layers
from tl_spec.options.base import split_options
from tl_spec.options.noise import ProbeOptions, SweepOptions
from tl_spec.options.si import SIOptions, StatsOptions
from tl_spec.records import Result, array, provenance
from tl_spec.stats import Interval, paired_bootstrap
from tl_spec.tokens import Inputs, PromptInput, prepare_inputs

__all__ = ["ProbeOptions", "ProbeResult", "SweepOptions", "SweepResult", "perturbation_probe",
           "probe_sweep", "verdict"]

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


def _per_prompt_only(si: SIOptions, what: str) -> None:
    if si.aggregate != "prompt":
        raise TLSpecError(f"the {what} keeps per-prompt statistics, so it needs "
                          f"aggregate='prompt' (got {si.aggregate!r})")


def _layers(text: str, n_layers: int) -> list[int]:
    return resolve_layers(parse_layers(text), n_layers)


def _run(model: Any, inputs: Inputs, conds: list[NoiseCondition], si: SIOptions, *,
         relative: bool, fast: bool, progress: bool) -> SweepStats:
    return run_sweep(model, inputs.tokenized, conds, stats=(_STAT[si.method],), region=si.region,
                     relative=relative, batch_size=si.batch_size, padding_side=si.padding_side,
                     stat_dtype=si.torch_dtype, fast=fast, progress=progress)


def _settings(inputs: Inputs, sweep: SweepStats, *parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    out.update(prepend_bos=inputs.tokenized.prepend_bos, n_prompts=len(inputs),
               n_truncated=inputs.tokenized.n_truncated,
               input="token ids" if inputs.from_tokens else "text", site_rms=sweep.rms,
               forwards=sweep.forwards)
    return out


def _provenance(model: Any, inputs: Inputs, facts: ModelFacts,
                settings: dict[str, Any]) -> dict[str, Any]:
    return provenance(model, prompts=inputs.info, architecture=facts.to_dict(), options=settings)


@dataclass(repr=False)
class ProbeResult(Result):
    """Clean SI, SI under noise per seed, the response (%) with a prompt-bootstrap interval, verdict.

    ``per_layer_clean`` / ``per_layer_noised`` hold the SI of each layer (clean, and under noise
    averaged over seeds) for the methods that have one (not ``entropy_profile``).
    """

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

    def headline(self) -> dict[str, Any]:
        """Response (%), its interval, the verdict and sigma."""
        return {"response %": self.response_pct, f"{self.interval.level:.0%} CI": self.interval,
                "verdict": self.verdict, "sigma": self.sigma}

    def tags(self) -> list[str]:
        return [self.method, self.site]

    def summary(self) -> str:
        """The probe in a few lines."""
        iv = self.interval
        return "\n".join([
            f"perturbation probe of {', '.join(self.model_names())}: sigma={self.sigma} at "
            f"{self.site}, layers {self.layers[0]}..{self.layers[-1]}, seeds {self.seeds}, "
            f"SI method {self.method}",
            f"SI clean = {self.si_clean:.6f}; under noise (per seed) = "
            + ", ".join(f"{x:.6f}" for x in self.si_noised),
            f"response = {self.response_pct:+.2f} %  ({iv.level:.0%} CI [{iv.low:+.2f}, "
            f"{iv.high:+.2f}], {iv.method}; per seed "
            + ", ".join(f"{x:+.2f}" for x in self.response_per_seed) + ")",
            f"verdict: {self.verdict}",
        ])

    def to_frame(self) -> Any:
        """Tidy table, one row per noise seed: SI clean and under noise, response (%).

        >>> probe.to_frame()[["seed", "si_noised", "response_pct"]]  # doctest: +SKIP
        """
        import pandas as pd

        model = (self.model_names() or [None])[0]
        return pd.DataFrame({"model": model, "method": self.method, "site": self.site,
                             "sigma": self.sigma, "seed": self.seeds, "si_clean": self.si_clean,
                             "si_noised": np.asarray(self.si_noised, dtype=np.float64),
                             "response_pct": np.asarray(self.response_per_seed, dtype=np.float64),
                             "verdict": self.verdict})

    def layer_frame(self) -> Any:
        """One row per layer: SI clean, under noise (mean of seeds), change (%); empty for
        ``entropy_profile`` (it has no per-layer SI).

        >>> probe.layer_frame().set_index("layer").change_pct  # doctest: +SKIP
        """
        import pandas as pd

        if self.per_layer_clean is None or self.per_layer_noised is None:
            return pd.DataFrame(columns=["layer", "noised", "si_clean", "si_noised", "change_pct"])
        clean = np.asarray(self.per_layer_clean, dtype=np.float64)
        noised = np.asarray(self.per_layer_noised, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = relative_change(clean, noised)
        return pd.DataFrame({"layer": np.arange(len(clean)),
                             "noised": np.isin(np.arange(len(clean)), self.layers),
                             "si_clean": clean, "si_noised": noised, "change_pct": change})


def perturbation_probe(
    model: Any,
    prompts: PromptInput,
    *,
    attention_mask: Any = None,
    options: ProbeOptions | None = None,
    si_options: SIOptions | None = None,
    stats: StatsOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> ProbeResult:
    """SI response to Gaussian noise (sigma) at ``site`` in ``layers``, over ``seeds``.

    The response is the ratio of means: (mean over seeds of SI under noise - clean SI) / clean SI
    x 100. Its interval resamples prompts (each carrying its clean and all-seed noised
    statistics); the bootstrap's seed is ``seed`` when given (as a keyword or in
    ``stats``), else the first noise seed.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: a list of strings, a PromptSet, a ``[batch, pos]`` token tensor or a list of
            1-D token tensors (token ids need no tokenizer).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: a :class:`~tl_spec.options.noise.ProbeOptions` (sigma, seeds, layers, site, ...).
        si_options: a :class:`~tl_spec.options.SIOptions` (method, max_length, batch_size, ...).
        stats: a :class:`~tl_spec.options.StatsOptions` (confidence, n_resamples, seed).
        progress: show a progress bar over noise conditions.
        **option_values: any field of those three classes; keywords override the objects.

    Returns:
        :class:`ProbeResult`.

    >>> p = perturbation_probe(model, STANDARD_10, sigma=0.05, layers="late")  # doctest: +SKIP
    >>> p.response_pct, p.interval, p.verdict  # doctest: +SKIP
    """
    opts, si, st = split_options(option_values, (ProbeOptions, options), (SIOptions, si_options),
                                 (StatsOptions, stats))
    _per_prompt_only(si, "perturbation probe")
    boot_seed = st.seed if ("seed" in option_values or stats is not None) else opts.seeds[0]
    require_pattern_hooks(model)
    inputs = prepare_inputs(model, prompts, attention_mask=attention_mask,
                            max_length=si.max_length, prepend_bos=si.prepend_bos,
                            route=si.route)
    st.check_units(len(inputs))
    facts = describe(model, seq_len=si.max_length)
    layer_list = _layers(opts.layers, facts.n_layers)
    method = si.method
    conds = [NoiseCondition(tuple(layer_list), opts.sigma, s, opts.site) for s in opts.seeds]
    sweep = _run(model, inputs, conds, si, relative=opts.relative, fast=opts.fast,
                 progress=progress)
    lengths = np.array(inputs.tokenized.norm_lengths)
    clean = prompt_summary(method, sweep.clean, lengths)
    noised = np.stack([prompt_summary(method, r, lengths) for r in sweep.noised])  # [S, P, ...]
    si_clean = float(si_value_from_prompts(method, clean))
    si_noised = np.array([float(si_value_from_prompts(method, x)) for x in noised])
    response = float(relative_change(si_clean, si_noised.mean()))

    def stat(idx: np.ndarray) -> np.ndarray:
        c = si_value_from_prompts(method, clean[idx])
        n = np.mean([si_value_from_prompts(method, x[idx]) for x in noised], axis=0)
        return relative_change(c, n)

    interval = paired_bootstrap(stat, len(inputs), confidence=st.confidence,
                                n_resamples=st.n_resamples, seed=int(boot_seed))
    per_layer = None, None
    if method != "entropy_profile":
        per_layer = (np.nanmean(clean, axis=0), np.nanmean(noised, axis=(0, 1)))
    settings = _settings(inputs, sweep, opts.to_dict(), si.to_dict(), st.to_dict())
    settings.update(layer_spec=opts.layers, layers=layer_list, seed=int(boot_seed),
                    response="ratio of means over seeds; interval resamples prompts")
    bands = {"stable_within": opts.stable_band, "suppressed_above": opts.suppressed_above}
    return ProbeResult(
        method=method, sigma=opts.sigma, layers=layer_list, site=opts.site,
        seeds=list(opts.seeds), si_clean=si_clean, si_noised=si_noised, response_pct=response,
        response_per_seed=relative_change(si_clean, si_noised), interval=interval,
        verdict=verdict(response, stable=opts.stable_band, suppressed=opts.suppressed_above),
        bands=bands, per_layer_clean=per_layer[0], per_layer_noised=per_layer[1],
        settings=settings, provenance=_provenance(model, inputs, facts, settings),
    )


@dataclass(repr=False)
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

    def _largest(self) -> tuple[float | None, str]:
        """The largest |mean change over seeds| of any (region, sigma), and where."""
        mean = np.asarray(self.change_pct, dtype=np.float64).mean(axis=-1)
        if not np.isfinite(mean).any():
            return None, "–"
        i, j = np.unravel_index(np.nanargmax(np.abs(mean)), mean.shape)
        return float(mean[i, j]), f"{self.regions[i]}, sigma {self.sigmas[j]:g}"

    def headline(self) -> dict[str, Any]:
        """Clean SI, the number of conditions, the largest mean change (%) and where."""
        largest, where = self._largest()
        return {"SI clean": self.si_clean,
                "conditions": len(self.regions) * len(self.sigmas) * len(self.seeds),
                "largest change %": largest, "at": where}

    def tags(self) -> list[str]:
        return [self.method, str(self.settings.get("site", ""))]

    def summary(self) -> str:
        """Clean SI and a region x sigma table of SI under noise (mean of seeds, change %)."""
        mean = np.asarray(self.si, dtype=np.float64).mean(axis=-1)
        change = np.asarray(self.change_pct, dtype=np.float64).mean(axis=-1)
        width = max(8, *(len(r) for r in self.regions))
        lines = [f"probe sweep of {', '.join(self.model_names())}: SI method {self.method}, noise "
                 f"at {self.settings.get('site', '?')}, seeds {self.seeds}",
                 f"SI clean = {self.si_clean:.6f}; SI under noise, mean of seeds (change %):",
                 f"{'region':<{width}}  " + "  ".join(f"{'sigma ' + format(s, 'g'):>18}"
                                                     for s in self.sigmas)]
        for i, region in enumerate(self.regions):
            lines.append(f"{region:<{width}}  " + "  ".join(
                f"{mean[i, j]:9.4f} ({change[i, j]:+6.1f})" for j in range(len(self.sigmas))))
        largest, where = self._largest()
        if largest is not None:
            lines.append(f"largest mean change: {largest:+.2f} % ({where})")
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """Tidy table: region, sigma, seed, SI, change (%), recovery towards ``target_si``."""
        import pandas as pd

        model = (self.model_names() or [None])[0]
        rows = []
        for i, region in enumerate(self.regions):
            for j, sigma in enumerate(self.sigmas):
                for k, seed in enumerate(self.seeds):
                    si = float(self.si[i, j, k])
                    rec = None
                    if self.target_si is not None and self.target_si != self.si_clean:
                        rec = (si - self.si_clean) / (self.target_si - self.si_clean)
                    rows.append({"model": model, "method": self.method, "region": region,
                                 "sigma": sigma, "seed": seed, "si": si,
                                 "change_pct": float(self.change_pct[i, j, k]),
                                 "recovery": rec})
        return pd.DataFrame(rows)


def probe_sweep(
    model: Any,
    prompts: PromptInput,
    *,
    attention_mask: Any = None,
    options: SweepOptions | None = None,
    si_options: SIOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> SweepResult:
    """Run the E11-T grid (regions x sigmas x seeds) with one clean run and prefix reuse.

    ``target_si`` (e.g. the base twin's SI) adds a recovery ratio
    (SI_noised - SI_clean) / (target - SI_clean) to the table. The SI method defaults to
    ``"entropy_profile"`` (the E11-T route) unless ``method`` or ``si_options`` is given.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: strings, a PromptSet, a ``[batch, pos]`` token tensor or 1-D token tensors.
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: a :class:`~tl_spec.options.noise.SweepOptions` (sigmas, regions, seeds, ...).
        si_options: a :class:`~tl_spec.options.SIOptions` (method, max_length, batch_size, ...).
        progress: show a progress bar over noise conditions.
        **option_values: any field of those two classes; keywords override the objects.

    Returns:
        :class:`SweepResult`.

    >>> sweep = probe_sweep(model, STANDARD_10, target_si=0.71)  # doctest: +SKIP
    >>> sweep.to_frame().groupby(["region", "sigma"]).si.mean()  # doctest: +SKIP
    """
    values = dict(option_values)
    if si_options is None:
        values.setdefault("method", SweepOptions.default_method)
    opts, si = split_options(values, (SweepOptions, options), (SIOptions, si_options))
    _per_prompt_only(si, "sweep")
    require_pattern_hooks(model)
    inputs = prepare_inputs(model, prompts, attention_mask=attention_mask,
                            max_length=si.max_length, prepend_bos=si.prepend_bos,
                            route=si.route)
    facts = describe(model, seq_len=si.max_length)
    method, names = si.method, list(opts.regions)
    layer_sets = {n: _layers(n, facts.n_layers) for n in names}
    conds = [NoiseCondition(tuple(layer_sets[n]), s, seed, opts.site, n)
             for n in names for s in opts.sigmas for seed in opts.seeds]
    sweep = _run(model, inputs, conds, si, relative=opts.relative, fast=opts.fast,
                 progress=progress)
    lengths = np.array(inputs.tokenized.norm_lengths)
    si_clean = float(si_value_from_prompts(method, prompt_summary(method, sweep.clean, lengths)))
    flat = np.array([float(si_value_from_prompts(method, prompt_summary(method, r, lengths)))
                        for r in sweep.noised])
    grid = flat.reshape(len(names), len(opts.sigmas), len(opts.seeds))
    settings = _settings(inputs, sweep, opts.to_dict(), si.to_dict())
    return SweepResult(
        method=method, regions=names, region_layers=layer_sets, sigmas=list(opts.sigmas),
        seeds=list(opts.seeds), si_clean=si_clean, si=grid,
        change_pct=relative_change(si_clean, grid), target_si=opts.target_si, settings=settings,
        provenance=_provenance(model, inputs, facts, settings),
    )
