"""E11T / E11 Indra files (perturbation probe, Table 8, claim A2): responses recomputed.

A probe response is the relative SI change under noise (Eq. 2 applied to noise):
``(SI at sigma - SI without noise) / SI without noise x 100``. The audit recomputes it per region
and sigma from the stored SI values of each Indra file (averaged over the stored seeds).

>>> doc = {"results": {"baseline": {"specialization_index": 0.5}, "treatments": [
...     {"region": "all", "noise_tests": [{"noise_std": 0.05, "specialization_index": 0.6}]}]}}
>>> probe_responses(doc)
({('all', 0.05): 19.999999999999996}, 0.5)
"""

from __future__ import annotations

from typing import Any

from tl_spec.audit.common import PaperFile, num, pct_change

__all__ = ["indra_file", "probe_responses", "seed_responses"]


def indra_file(files: list[PaperFile], prefix: str) -> PaperFile | None:
    """The first readable file whose name starts with ``prefix``.

    >>> indra_file([], "E11T_indra_recovery") is None
    True
    """
    return next((f for f in files if f.name.startswith(prefix) and f.problem is None), None)


def probe_responses(doc: Any) -> tuple[dict[tuple[str, float], float], float | None]:
    """``{(region, sigma): response %}`` and the noise-free SI, from ``results.treatments``.

    Returns:
        The responses and the baseline SI (``({}, None)`` when the file has no such layout).
    """
    res = doc.get("results") if isinstance(doc, dict) else None
    base = num((res.get("baseline") or {}).get("specialization_index")) \
        if isinstance(res, dict) and isinstance(res.get("baseline"), dict) else None
    out: dict[tuple[str, float], float] = {}
    if base is None or not base:
        return out, base
    for t in res.get("treatments", []) if isinstance(res.get("treatments"), list) else []:
        tests = t.get("noise_tests") if isinstance(t, dict) else None
        for test in tests if isinstance(tests, list) else []:
            if not isinstance(test, dict):
                continue
            sigma, si = num(test.get("noise_std")), num(test.get("specialization_index"))
            if sigma is not None and si is not None:
                out[(str(t.get("region")), sigma)] = pct_change(si, base)
    return out, base


def seed_responses(doc: Any, variant: str, method: str = "global") -> dict[tuple[str, float], list[float]]:
    """``{(region, sigma): [change % per seed]}`` from ``results.<variant>.all_seed_results``.

    >>> seed_responses({}, "base")
    {}
    """
    res = doc.get("results") if isinstance(doc, dict) else None
    node = res.get(variant) if isinstance(res, dict) else None
    seeds = node.get("all_seed_results") if isinstance(node, dict) else None
    out: dict[tuple[str, float], list[float]] = {}
    for per_seed in seeds.values() if isinstance(seeds, dict) else ():
        regs = per_seed.get(method) if isinstance(per_seed, dict) else None
        for reg in regs if isinstance(regs, list) else []:
            tests = reg.get("tests") if isinstance(reg, dict) else None
            for t in tests if isinstance(tests, list) else []:
                if not isinstance(t, dict):
                    continue
                sigma, change = num(t.get("noise")), num(t.get("change_pct"))
                if sigma is not None and change is not None:
                    out.setdefault((str(reg.get("region")), sigma), []).append(change)
    return out
