"""``tl-spec demo``: the main job on the embedded zoo, offline, in a few minutes on a laptop CPU.

SI of the GQA base by each definition; ΔSI base vs its DPO twin with an interval; the
perturbation probe on both; a short noise-sensitivity comparison of the MHA and GQA bases; the
controlled alignment comparison (ΔSI of the MHA, GQA and SWA bases' seed-1 SFT and DPO twins,
with the window binding and not); head stability when the refit set is cached. It prints a summary table and writes every result (JSON,
with provenance) and an offline HTML report into ``out``.

>>> run_demo("tl_spec_demo")  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.controlled import TwinFamily, controlled_alignment_study, zoo_prompts
from tl_spec.experiments.delta import delta_si
from tl_spec.experiments.probe import perturbation_probe
from tl_spec.experiments.sensitivity import compare_sensitivity, noise_sensitivity
from tl_spec.experiments.si import specialization_index
from tl_spec.experiments.stability import head_stability
from tl_spec.fileio import atomic_write_text
from tl_spec.options import SensitivityOptions
from tl_spec.prompts import E06_TEXTS, STANDARD_10
from tl_spec.viz.report import write_report
from tl_spec.zoo import available, load
from tl_spec.corpus import heldout_texts

__all__ = ["CONTROLLED", "SENSITIVITY", "run_demo"]

CONTROLLED = dict(lengths=(128, 24), methods=("pattern",), n_resamples=2000)
"""The demo's controlled comparison: seed 1 of each family, 16 held-out prompts, pattern SI
(``tl-spec controlled`` runs all three seeds and both definitions)."""

SENSITIVITY = SensitivityOptions()
"""The demo's noise-sensitivity settings: ``noise_sensitivity``'s defaults (the summary names
any setting that differs, should this ever change)."""


def _differences(options: SensitivityOptions) -> list[str]:
    """``name=value (default D)`` for every setting of ``options`` off the defaults."""
    default = SensitivityOptions()
    return [f"{n}={getattr(options, n)!r} (default {getattr(default, n)!r})"
            for n in SensitivityOptions.names() if getattr(options, n) != getattr(default, n)]


def _steps() -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    def models(state: dict[str, Any]) -> None:
        for name in ("base-gqa", "gqa-dpo-1", "base-mha"):
            state[name] = load(name)

    def si(state: dict[str, Any]) -> list[Any]:
        return [specialization_index(state["base-gqa"], STANDARD_10, method=m)
                for m in ("pattern", "entropy_profile", "normalized_entropy")]

    def delta(state: dict[str, Any]) -> Any:
        return delta_si(state["base-gqa"], state["gqa-dpo-1"], STANDARD_10, n_resamples=10_000)

    def probe(state: dict[str, Any]) -> list[Any]:
        return [perturbation_probe(state[n], STANDARD_10, sigma=0.05)
                for n in ("base-gqa", "gqa-dpo-1")]

    def sensitivity(state: dict[str, Any]) -> list[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TLSpecWarning)  # fit quality is in the result
            a, b = (noise_sensitivity(state[n], E06_TEXTS, options=SENSITIVITY)
                    for n in ("base-mha", "base-gqa"))
        return [a, b, compare_sensitivity(a, b)]

    def controlled(state: dict[str, Any]) -> Any:
        families = []
        for arch in ("mha", "gqa", "swa"):
            base, sft, dpo = (state[n] if n in state else load(n)
                              for n in (f"base-{arch}", f"{arch}-sft-1", f"{arch}-dpo-1"))
            families.append(TwinFamily(arch, base, [sft], [dpo], seeds=(1,)))
        return controlled_alignment_study(families, zoo_prompts(16), **CONTROLLED)

    def stability(state: dict[str, Any]) -> Any:
        ready = [e.name for e in available() if e.ready and e.name.startswith("refit-L2-wd0-s")]
        if len(ready) < 2:
            return None  # the summary says how to get the refits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TLSpecWarning)  # texts cut at 128 tokens, by design
            return head_stability([load(n) for n in ready[:5]], heldout_texts(32),
                                  measure="output", null=2, n_blocks=16)

    return [("load the embedded zoo", models), ("SI, three definitions", si),
            ("ΔSI base vs DPO twin", delta), ("perturbation probe", probe),
            ("noise sensitivity MHA vs GQA", sensitivity),
            ("controlled twins MHA/GQA/SWA", controlled), ("head stability (refits)", stability)]


def _summary(results: dict[str, Any]) -> str:
    si = results["SI, three definitions"]
    d = results["ΔSI base vs DPO twin"]
    probes = results["perturbation probe"]
    sens = results["noise sensitivity MHA vs GQA"]
    rows = [("model", "measurement", "value")]
    for r in si:
        rows.append(("base-gqa", f"SI ({r.method})", f"{r.value:.4f}"))
    iv = d.interval
    rows.append(("base-gqa -> gqa-dpo-1", "ΔSI (pattern)",
                 f"{d.delta_pct:+.2f} %  CI [{iv.low:+.2f}, {iv.high:+.2f}]  p = {d.pvalue:.3g}"))
    rows.append(("", "layers changed (Holm)", str(d.changed_layers)))
    for name, p in zip(("base-gqa", "gqa-dpo-1"), probes):
        rows.append((name, "probe sigma=0.05", f"{p.response_pct:+.2f} % -> {p.verdict}"))
    for name, s in zip(("base-mha", "base-gqa"), sens[:2]):
        rows.append((name, "PPL slope / log-PPL slope", f"{s.slope:.4g} / {s.log_slope:.4g}"))
    rows.append(("GQA / MHA", "slope ratio (ratio of means)",
                 f"{sens[2].ratio_of_means:.3g}x  (p = {sens[2].pvalue:.2g}, "
                 f"{len(SENSITIVITY.seeds)} seeds)"))
    changed = _differences(SENSITIVITY)
    rows.append(("", "noise settings", "; ".join(changed) if changed
                 else "noise_sensitivity's defaults (SensitivityOptions)"))
    ctl = results["controlled twins MHA/GQA/SWA"]
    binding = {r["length"]: r["window_binds"] for r in ctl.rows if r["family"] == "swa"}
    for d in ctl.differences:
        if d["a"] == "swa":
            iv = d["interval"]
            binds = "window binds" if binding[d["length"]] else "window does not bind"
            rows.append((f"{d['label']} (seed 1)", f"ΔSI {d['stage'].upper()} at {d['length']} "
                         f"tokens", f"{d['diff_pp']:+.2f} pp  CI [{iv.low:+.2f}, {iv.high:+.2f}]"
                         f"  ({binds})"))
    stab = results.get("head stability (refits)")
    if stab is None:
        refits = [e for e in available() if e.set == "refits"]
        ready = sum(e.ready for e in refits)
        rows.append(("refits", "head stability",
                     f"not measured: {ready}/{len(refits)} refits cached; run `tl-spec zoo build "
                     "refits` (about 20 min on 2 cores), then `tl-spec demo` again"))
    else:
        for layer, value in enumerate(stab.stability):
            ci = stab.intervals["stability"][layer]
            rows.append((f"refit-L2-wd0 x{len(stab.models)}" if layer == 0 else "",
                         f"head stability L{layer} (output CKA)",
                         f"{value:.3f}  CI [{ci.low:.3f}, {ci.high:.3f}]  null {stab.null[layer]:.3f}"
                         f"  resid CKA {stab.resid_cka[layer]:.3f}"))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, without trailing spaces.

    >>> _table([("a", "bb"), ("ccc", "")]).splitlines()
    ['a    bb', 'ccc']
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run_demo(out: str | Path = "tl_spec_demo", *, progress: bool = True) -> dict[str, Any]:
    """Run the demo, write results into ``out``, return them (and print the summary)."""
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TLSpecError(f"cannot create the report directory {out_dir} ({exc.strerror})") from None
    state: dict[str, Any] = {}
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    steps = _steps()
    bar = tqdm(steps, desc="tl-spec demo", unit="step",
               disable=not progress or not sys.stderr.isatty())
    for label, fn in bar:
        bar.set_postfix_str(label)
        start = time.perf_counter()
        got = fn(state)
        timings[label] = time.perf_counter() - start
        if got is not None:
            results[label] = got
    files = []
    for label, got in results.items():
        for i, r in enumerate(got if isinstance(got, list) else [got]):
            path = out_dir / f"{r.kind}_{i}.json"
            r.to_json(path)
            files.append(path)
    text = _summary(results)
    text += "\n\nstep times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    report = _report(results, out_dir, state)
    text += f"\nHTML report: {report}"
    text += f"\nresult files: {out_dir}/ ({len(files)} JSON files, load with tl_spec.load_result)"
    atomic_write_text(out_dir / "summary.txt", text + "\n")
    print(text)
    return {"results": results, "files": files, "timings": timings, "report": report}


def _report(results: dict[str, Any], out_dir: Path, state: dict[str, Any]) -> Path:
    flat = [r for got in results.values() for r in (got if isinstance(got, list) else [got])]
    return write_report(flat, out_dir, model=state.get("base-gqa"))
