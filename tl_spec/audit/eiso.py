"""E-ISO family (KV-cache redundancy, W_o decompression): identical per-seed values.

Each model stores a ``per_seed`` list for seeds 42/123/456 and a mean/std over them; the audit
compares the per-seed records field by field and recomputes the stored ratio of means.

>>> rec = {"seed": 42, "x": 0.5}
>>> doc = {"results": {"m": {"per_seed": [rec, {**rec, "seed": 123}, {**rec, "seed": 456}]}}}
>>> [f.kind for f in audit_eiso([PaperFile("E-ISO-x.json", doc, None, "eiso")])[1]]
['identical_seeds']
"""

from __future__ import annotations

from tl_spec.audit.common import Check, Flag, PaperFile, check, num

__all__ = ["audit_eiso"]


def audit_eiso(files: list[PaperFile]) -> tuple[list[Check], list[Flag]]:
    """Identical-seed flags and the recomputed composite ratio of the E-ISO files.

    >>> audit_eiso([])
    ([], [])
    """
    checks: list[Check] = []
    flags: list[Flag] = []
    for f in files:
        if f.family != "eiso" or f.problem is not None or not isinstance(f.doc, dict):
            continue
        results = f.doc.get("results") if isinstance(f.doc.get("results"), dict) else {}
        means = {}
        for key, node in results.items():
            seeds = [r for r in node.get("per_seed", []) if isinstance(r, dict)] \
                if isinstance(node, dict) and isinstance(node.get("per_seed"), list) else []
            if len(seeds) < 2:
                continue
            fields = sorted({k for r in seeds for k in r if k != "seed"})
            same = [k for k in fields if len({repr(r.get(k)) for r in seeds}) == 1]
            if same and len(same) == len(fields):
                flags.append(Flag("identical_seeds", f.name, (
                    f"{key}: all {len(fields)} metrics are bit-identical across the "
                    f"{len(seeds)} seeds {[r.get('seed') for r in seeds]} (one deterministic "
                    "measurement reported as 3 seeds; the stored std is 0 or rounding noise)")))
            comp = [num(r.get("composite_redundancy")) for r in seeds]
            if comp and None not in comp:
                means[key] = sum(comp) / len(comp)
        stored = num((f.doc.get("analysis") or {}).get("composite_ratio")) \
            if isinstance(f.doc.get("analysis"), dict) else None
        if stored is not None and len(means) == 2 and "qwen2_7b" in means and "llama3_8b" in means:
            ratio = means["qwen2_7b"] / means["llama3_8b"]
            checks.append(check(f.name, "composite_ratio (Qwen2 / LLaMA-3)", stored, f"{stored:.6g}",
                                ratio, f"ratio of the per-seed means {ratio:.6g}", tol=1e-9,
                                files=[f.name]))
    return checks, flags
