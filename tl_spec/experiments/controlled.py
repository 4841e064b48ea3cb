"""The paper's Table 4 under control: ΔSI of SFT and DPO twins of several attention types.

The paper's central claim ("sliding-window attention protects specialization under
alignment", D'Elia 2026, Table 4) compares models of different vendors, data and recipes, at a
prompt length where their 4,096-token windows never bind. Here every family is one base model
and its SFT and DPO twins trained by one recipe from several seeds, so families differ only in
their attention (e.g. the zoo's MHA, GQA and sliding-window bases).

Design (what enters each number):

- The prompt is the sampling unit. Each model runs once per condition (route, SI method, prompt
  length); every interval is a BCa bootstrap over prompts with the same seed, so the **same
  prompt resamples drive every model**: per-seed ΔSI, seed means and differences between
  families are all paired.
- Seeds are fixed effects: each seed's twin gives its own ΔSI (base -> twin, Eq. 2 of the
  paper, as :func:`~tl_spec.delta_si`); the family's ΔSI is the **mean over seeds**, with a
  prompt-bootstrap interval conditional on those seeds, and the spread between seeds (their
  SD and range) is reported beside it. A difference between families is "resolved" when its
  interval excludes 0; ``seeds_separate`` says whether every seed of one family lies beyond
  every seed of the other (a seed-level check the prompt interval does not make; never with
  a single seed).
- Each family has one base model, so a family difference also contains that base's own
  pretraining seed; the report says so.
- Lengths: at 128 tokens a window of 32 binds (a query at q sees keys k with 0 <= q - k < 32);
  at 24 tokens no window of 32 binds, so what differs between the two lengths is the window
  itself, not the rest of the architecture.

>>> study = controlled_alignment_study(tl_spec.zoo.twin_families(), prompts)  # doctest: +SKIP
>>> print(study.verdict)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tl_spec.corpus import heldout_texts
from tl_spec.display import short_name
from tl_spec.errors import TLSpecError
from tl_spec.experiments.delta import relative_change
from tl_spec.experiments.si import si_from_inputs
from tl_spec.metrics.specialization import si_value_from_prompts
from tl_spec.models import describe, layer_windows, model_id, require_pattern_hooks
from tl_spec.options.base import split_options
from tl_spec.options.controlled import DEFAULT_ROUTE, ControlledOptions, ControlledStatsOptions
from tl_spec.options.si import SIOptions, StatsOptions
from tl_spec.prompts import PromptSet
from tl_spec.records import Result, provenance
from tl_spec.sources import source
from tl_spec.stats import Interval, interval_records, paired_bootstrap
from tl_spec.tokens import prepare_inputs

__all__ = ["STAGES", "ControlledOptions", "ControlledResult", "TwinFamily",
           "controlled_alignment_study", "zoo_prompts"]

STAGES = ("sft", "dpo")
SEEDS_ENTER = ("per-seed ΔSI (base -> that seed's twin); the family's ΔSI is the mean over seeds, "
               "its interval a prompt bootstrap conditional on those seeds (fixed effects); the "
               "seed SD and range are reported beside it; differences between families compare "
               "seed means under the same prompt resamples")
_PROMPT_CHARS = 600  # 32 held-out documents cut here all exceed 128 tokens (min 144)


def zoo_prompts(n: int = 32) -> list[str]:
    """``n`` held-out zoo documents long enough for 128 tokens (the study's default prompts).

    >>> len(zoo_prompts(3))
    3
    """
    return heldout_texts(n, max_chars=_PROMPT_CHARS)


@dataclass
class TwinFamily:
    """One attention type: its ``base`` model and the ``sft`` and ``dpo`` twins, one per seed.

    >>> TwinFamily("gqa", base, [sft1, sft2], [dpo1, dpo2], seeds=(1, 2))  # doctest: +SKIP
    """

    name: str
    base: Any
    sft: list[Any]
    dpo: list[Any]
    seeds: Sequence[int] | None = None

    def seed_list(self) -> list[int]:
        """The seeds, ``1..n`` when none were given."""
        return list(self.seeds) if self.seeds is not None else list(range(1, len(self.sft) + 1))


def _fmt(iv: Interval, d: str = "+.2f") -> str:
    return f"[{iv.low:{d}}, {iv.high:{d}}]"


@dataclass(repr=False)
class ControlledResult(Result):
    """Per condition (route, method, length): ΔSI per family, stage and seed, seed means,
    differences between families, all with paired prompt-bootstrap intervals; a verdict."""

    kind = "controlled_alignment"
    decoders = {"rows": interval_records, "differences": interval_records}
    families: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    differences: list[dict[str, Any]]
    verdicts: list[str]
    verdict: str
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def tags(self) -> list[str]:
        """The SI methods and prompt lengths measured."""
        return ["/".join(self.settings.get("methods", [])),
                "/".join(str(n) for n in self.settings.get("lengths", [])) + " tokens"]

    def model_names(self) -> list[str]:
        """Short names of every model, family by family (base, SFT twins, DPO twins)."""
        return [m for f in self.families for m in [f["base"], *f["sft"], *f["dpo"]]]

    def _lead(self) -> dict[str, Any] | None:
        """The difference shown first: the windowed family minus another, DPO, first condition."""
        if not self.differences:
            return None
        first = (self.differences[0]["route"], self.differences[0]["method"],
                 self.differences[0]["length"])
        for d in self.differences:
            if (d["route"], d["method"], d["length"]) == first and d["stage"] == "dpo":
                return d
        return self.differences[0]

    def headline(self) -> dict[str, Any]:
        """Families, seeds, conditions and the first DPO difference between families."""
        out: dict[str, Any] = {"families": len(self.families),
                               "seeds": len(self.families[0]["seeds"]) if self.families else 0,
                               "conditions": len({(r["route"], r["method"], r["length"])
                                                  for r in self.rows})}
        lead = self._lead()
        if lead is not None:
            out[f"{lead['label']} ΔSI pp (dpo, {lead['length']} tok)"] = lead["diff_pp"]
            out["CI"] = lead["interval"]
        return out

    def to_frame(self) -> Any:
        """Tidy table, one row per condition, family, stage and seed (``seed`` ``None`` = the
        mean over seeds): SI of base and twin, ΔSI %, interval, window binding.

        >>> study.to_frame().query("seed.isna()")  # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "interval"}
                             | {"ci_low": r["interval"].low, "ci_high": r["interval"].high,
                                "ci_level": r["interval"].level} for r in self.rows])

    def differences_frame(self) -> Any:
        """One row per condition, stage and pair of families: difference of mean ΔSI (pp).

        >>> study.differences_frame()  # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in d.items() if k != "interval"}
                             | {"ci_low": d["interval"].low, "ci_high": d["interval"].high}
                             for d in self.differences])

    def summary(self) -> str:
        """Per condition: ΔSI per family and stage (seeds, mean [CI], SD), the differences
        between families [CI], then the verdict."""
        level = self.rows[0]["interval"].level if self.rows else 0.95
        lines = [f"Controlled alignment study: ΔSI (%) base -> twin, {level:.0%} paired prompt-"
                 f"bootstrap intervals, {self.settings.get('n_prompts')} prompts; seeds: "
                 + SEEDS_ENTER]
        conditions = list(dict.fromkeys((r["route"], r["method"], r["length"]) for r in self.rows))
        for route, method, length in conditions:
            lines.append(f"\n[{route} · {method} · {length} tokens]")
            for r in self.rows:
                if (r["route"], r["method"], r["length"], r["seed"]) != (route, method, length, None):
                    continue
                seeds = [x for x in self.rows if x["seed"] is not None and
                         (x["route"], x["method"], x["length"], x["family"], x["stage"])
                         == (route, method, length, r["family"], r["stage"])]
                per = ", ".join(f"{x['delta_pct']:+.2f}" for x in seeds)
                bind = "window binds" if r["window_binds"] else "no window binds"
                lines.append(f"  {r['family']:>5} {r['stage']}: mean {r['delta_pct']:+.2f} "
                             f"{_fmt(r['interval'])}  seeds ({per})  SD {r['seed_sd']:.2f}  "
                             f"SI base {r['si_base']:.4f}  ({bind})")
            for d in self.differences:
                if (d["route"], d["method"], d["length"]) == (route, method, length):
                    sep = "seeds separate" if d["seeds_separate"] else "seeds overlap"
                    lines.append(f"  {d['label']} ({d['stage']}): {d['diff_pp']:+.2f} pp "
                                 f"{_fmt(d['interval'])}  {sep}")
        lines.append("\nVerdict: " + self.verdict)
        lines += [f"- {v}" for v in self.verdicts]
        return "\n".join(lines)


def _check(families: Sequence[TwinFamily], prompts: Any) -> list[str]:
    """Refuse bad families or prompts before any model runs; the prompts as a list."""
    if isinstance(families, TwinFamily) or not isinstance(families, Sequence) or not families:
        raise TLSpecError("families must be a non-empty list of TwinFamily (e.g. "
                          "tl_spec.zoo.twin_families())")
    names = []
    for f in families:
        if not isinstance(f, TwinFamily):
            raise TLSpecError(f"families must hold TwinFamily objects, got {type(f).__name__}")
        seeds = f.seed_list()
        if not f.sft or len(f.sft) != len(f.dpo) or len(seeds) != len(f.sft):
            raise TLSpecError(
                f"family {f.name!r}: give one SFT and one DPO twin per seed (got {len(f.sft)} "
                f"SFT, {len(f.dpo)} DPO, {len(seeds)} seeds)")
        if len(set(seeds)) != len(seeds):
            raise TLSpecError(f"family {f.name!r}: seeds must be distinct, got {seeds}")
        models = [f.base, *f.sft, *f.dpo]
        for m in models:
            require_pattern_hooks(m)
        shapes = {(d.n_layers, d.n_heads, d.n_kv_heads) for d in map(describe, models)}
        if len(shapes) != 1:
            raise TLSpecError(f"family {f.name!r}: its models differ in (layers, heads, KV heads) "
                              f"{sorted(shapes)}; a family is one base and its twins")
        names.append(f.name)
    if len(set(names)) != len(names):
        raise TLSpecError(f"family names must be distinct, got {names}")
    if isinstance(prompts, PromptSet):
        prompts = list(prompts.prompts)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or \
            not all(isinstance(p, str) for p in prompts):
        raise TLSpecError("prompts must be a list of texts (or a PromptSet); each is cut to "
                          "every length of the study")
    return list(prompts)


def _values(si: Any, method: str) -> np.ndarray:
    arr = si.per_prompt_heads if method == "entropy_profile" else si.per_prompt
    if arr is None:  # pragma: no cover - aggregate is checked before
        raise TLSpecError("the SI result keeps no per-prompt statistics (aggregate='prompt')")
    return np.asarray(arr, dtype=np.float64)


def _delta_stat(method: str, b: np.ndarray, t: np.ndarray) -> Any:
    """ΔSI % of one pair from resampled prompt indices (the statistic of delta_si)."""
    return lambda idx: relative_change(si_value_from_prompts(method, b[idx]),
                                       si_value_from_prompts(method, t[idx]))


def _mean_stat(stats: list[Any]) -> Any:
    return lambda idx: np.mean([s(idx) for s in stats], axis=0)


def _run_condition(families: Sequence[TwinFamily], prompts: list[str], opts: SIOptions,
                   progress: bool) -> dict[str, dict[str, Any]]:
    """Per family: SI results of base and twins, and the prompts past the window."""
    out: dict[str, dict[str, Any]] = {}
    for f in families:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*longer than max_length=.*")
            inputs = prepare_inputs(f.base, prompts, max_length=opts.max_length,
                                    prepend_bos=opts.prepend_bos)
        results = {"base": si_from_inputs(f.base, inputs, opts, progress=progress)}
        for stage in STAGES:
            results[stage] = [si_from_inputs(m, inputs, opts, progress=progress)
                              for m in getattr(f, stage)]
        windows = [w for w in layer_windows(f.base) if w is not None]
        lengths = inputs.tokenized.lengths
        past = sum(int(n > min(windows)) for n in lengths) if windows else 0
        out[f.name] = dict(results=results, past=past, max_tokens=int(max(lengths)),
                           min_tokens=int(min(lengths)))
    return out


def controlled_alignment_study(
    families: Sequence[TwinFamily] | None = None,
    prompts: Sequence[str] | PromptSet | None = None,
    *,
    options: ControlledOptions | None = None,
    stats: StatsOptions | None = None,
    si_options: SIOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> ControlledResult:
    """ΔSI base -> SFT and base -> DPO per attention type, paired intervals, family differences.

    Args:
        families: the attention types, each a :class:`TwinFamily` (base, SFT and DPO twins per
            seed); ``None`` loads the zoo's (``tl_spec.zoo.twin_families()``: MHA, GQA, SWA).
        prompts: texts (or a PromptSet), cut to each length; ``None`` takes 32 held-out zoo
            documents (:func:`zoo_prompts`).
        options: a :class:`~tl_spec.options.ControlledOptions` (``lengths``, ``methods``,
            ``routes``); keywords override its fields.
        stats: statistics options (``confidence``, ``n_resamples`` (2000 unless given),
            ``seed``); keywords override its fields.
        si_options: further SI options (``region``, ``batch_size``, ...); the study sets
            ``method``, ``max_length`` and ``route`` itself from ``options``.
        progress: show progress bars over the forward passes.
        **option_values: fields of any of the three options classes.

    Returns:
        :class:`ControlledResult`.

    >>> study = controlled_alignment_study(lengths=(128, 24), n_resamples=2000)  # doctest: +SKIP
    >>> print(study.summary())                                                   # doctest: +SKIP
    """
    for name, instead in (("method", "methods"), ("max_length", "lengths"), ("route", "routes")):
        if name in option_values:
            raise TLSpecError(f"the study sets {name} per condition; pass {instead}=... instead")
    opts, st, si = split_options(option_values, (ControlledOptions, options),
                                 (ControlledStatsOptions, stats.to_kwargs()
                                  if type(stats) is StatsOptions else stats),
                                 (SIOptions, si_options))
    if si.aggregate != "prompt":
        raise TLSpecError("the study resamples prompts, so it needs aggregate='prompt'")
    conditions = []
    for route, method, length in opts.conditions():
        extra = {} if route == DEFAULT_ROUTE else {"route": route}
        conditions.append((route, method, length,
                           SIOptions.build(si, method=method, max_length=length, **extra)))
    if prompts is None:
        prompts = zoo_prompts()
    if families is None:
        families = source("twin_families")()
    texts = _check(families, prompts)
    st.check_units(len(texts))
    windows = {f.name: layer_windows(f.base) for f in families}
    rows: list[dict[str, Any]] = []
    differences: list[dict[str, Any]] = []
    bootstrap = dict(confidence=st.confidence, n_resamples=st.n_resamples, seed=st.seed)
    n = len(texts)
    extent: dict[str, Any] = {}
    for route, method, length, si_opts in conditions:
        runs = _run_condition(families, texts, si_opts, progress)
        means: dict[tuple[str, str], Any] = {}
        seed_values: dict[tuple[str, str], list[float]] = {}
        for f in families:
            run = runs[f.name]
            extent[f"{f.name}@{length}"] = [run["min_tokens"], run["max_tokens"]]
            base = run["results"]["base"]
            b = _values(base, method)
            binds = any(w is not None and length > w for w in windows[f.name])
            common = dict(route=route, method=method, length=length, family=f.name,
                          window_binds=binds, prompts_past_window=run["past"])
            for stage in STAGES:
                stats_ = []
                for seed, tuned in zip(f.seed_list(), run["results"][stage]):
                    stat = _delta_stat(method, b, _values(tuned, method))
                    stats_.append(stat)
                    value = float(stat(np.arange(n)[None])[0])
                    rows.append(dict(common, stage=stage, seed=seed, si_base=base.value,
                                     si_tuned=tuned.value, delta_pct=value, seed_sd=None,
                                     interval=paired_bootstrap(stat, n, **bootstrap)))
                seed_values[(f.name, stage)] = [r["delta_pct"] for r in rows[-len(stats_):]]
                mean = _mean_stat(stats_)
                means[(f.name, stage)] = mean
                vals = seed_values[(f.name, stage)]
                rows.append(dict(common, stage=stage, seed=None, si_base=base.value,
                                 si_tuned=float(np.mean([t.value for t in run["results"][stage]])),
                                 delta_pct=float(np.mean(vals)),
                                 seed_sd=float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                 interval=paired_bootstrap(mean, n, **bootstrap)))
        for i, fa in enumerate(families):
            for fb in families[i + 1:]:
                for stage in STAGES:
                    a, b_ = means[(fb.name, stage)], means[(fa.name, stage)]
                    va, vb = seed_values[(fb.name, stage)], seed_values[(fa.name, stage)]
                    diff = (lambda a, b_: lambda idx: a(idx) - b_(idx))(a, b_)
                    differences.append(dict(
                        route=route, method=method, length=length, stage=stage, a=fb.name,
                        b=fa.name, label=f"{fb.name} - {fa.name}",
                        diff_pp=float(np.mean(va) - np.mean(vb)),
                        interval=paired_bootstrap(diff, n, **bootstrap),
                        seeds_separate=bool(min(len(va), len(vb)) > 1 and
                                            (min(va) > max(vb) or max(va) < min(vb)))))
    fams = [dict(name=f.name, base=short_name(model_id(f.base)),
                 sft=[short_name(model_id(m)) for m in f.sft],
                 dpo=[short_name(model_id(m)) for m in f.dpo], seeds=f.seed_list(),
                 windows=list(windows[f.name]), attention=describe(f.base).attention)
            for f in families]
    verdicts, verdict = _verdicts(fams, differences, opts.lengths)
    settings = dict(opts.to_dict(), **st.to_dict(), si_options=si.to_dict(), n_prompts=n,
                    sampling_unit="prompt", paired="one prompt resample drives every model",
                    seeds_enter=SEEDS_ENTER, conditions=[list(c[:3]) for c in conditions],
                    prompt_tokens=extent)
    models = [model_id(m) for f in families for m in [f.base, *f.sft, *f.dpo]]
    return ControlledResult(families=fams, rows=rows, differences=differences,
                            verdicts=verdicts, verdict=verdict, settings=settings,
                            provenance=provenance(families[0].base, models=models,
                                                  options=settings))


_PHRASE = {"higher": "lose less SI (ΔSI higher)", "lower": "lose more SI (ΔSI lower)",
           "not resolvably different": "not resolvably different",
           "mixed": "mixed across SFT and DPO"}


def _word(ivs: list[Interval]) -> str:
    if all(iv.low > 0 for iv in ivs):
        return "higher"
    if all(iv.high < 0 for iv in ivs):
        return "lower"
    if all(iv.low <= 0 <= iv.high for iv in ivs):
        return "not resolvably different"
    return "mixed"


def _verdicts(fams: list[dict[str, Any]], differences: list[dict[str, Any]],
              lengths: Sequence[int]) -> tuple[list[str], str]:
    """One sentence per condition about the windowed family against each other, and overall."""
    windowed = [f for f in fams if any(w is not None for w in f["windows"])]
    if not windowed or len(fams) < 2:
        return [], ("no family has a sliding window, so the study says nothing about windows; "
                    "the differences between families are in the table")
    w = windowed[0]
    window = min(x for x in w["windows"] if x is not None)
    others = [f["name"] for f in fams if f["name"] != w["name"]]
    conditions = list(dict.fromkeys((d["route"], d["method"], d["length"]) for d in differences))
    sentences: list[str] = []
    lead: dict[int, list[str]] = {}
    for route, method, length in conditions:
        parts, words = [], []
        for other in others:
            ivs, texts = [], []
            for d in differences:
                if (d["route"], d["method"], d["length"]) != (route, method, length) or \
                        {d["a"], d["b"]} != {w["name"], other}:
                    continue
                sign = 1.0 if d["a"] == w["name"] else -1.0
                iv = d["interval"]
                lo, hi = sorted((sign * iv.low, sign * iv.high))
                ivs.append(Interval(lo, hi, iv.level, iv.method, iv.fallback_reason,
                                    iv.n_resamples))
                texts.append(f"{d['stage'].upper()} {sign * d['diff_pp']:+.2f} pp [{lo:+.2f}, "
                             f"{hi:+.2f}]")
            word = _word(ivs)
            words.append(word)
            parts.append(f"vs {other} twins: {_PHRASE[word]} ({', '.join(texts)})")
        binds = "binding" if length > window else "not binding"
        sentence = (f"{route} route, {method} SI, {length} tokens (window {window} {binds}): "
                    f"{w['name']} "
                    "twins " + "; ".join(parts))
        sentences.append(sentence)
        if (route, method) == conditions[0][:2]:
            lead[length] = parts
    overall = []
    for length in lengths:
        binds = f"window {window} " + ("binding" if length > window else "not binding")
        overall.append(f"at {length} tokens ({binds}), {w['name']} twins "
                       + "; ".join(lead.get(length, ["(not measured)"])))
    level = differences[0]["interval"].level if differences else 0.95
    method = conditions[0][1] if conditions else ""
    return sentences, (f"{method} SI, seed-mean ΔSI of the {w['name']} (sliding-window) twins "
                       f"minus the others', {level:.0%} paired intervals: " + ". ".join(overall)
                       + ". One base per family: a family difference includes its base's "
                       "pretraining seed.")
