"""E04 family (heritage twins, claim A3): repetition-score fragility, not SI.

The E04 files measure a repetition score under noise ("metric": "repetition-score (not SI)");
the audit recomputes the stored aggregates (mean fragility over seeds, the GQA delta) and flags
stored errors (E04b's Falcon pair failed with a traceback while the summary counts the claim).

>>> doc = {"results": {"base": {"aggregated": {"early": {"mean_fragility": 2.0, "values": [1, 3]}}}}}
>>> [c.verdict for c in audit_e04([PaperFile("E04_x.json", doc, None, "e04")])[0]]
['reproduced']
"""

from __future__ import annotations

from tl_spec.audit.common import Check, Flag, PaperFile, check, dicts, dig, num

__all__ = ["audit_e04", "e04_metric"]


def e04_metric(files: list[PaperFile], model: str) -> tuple[str, str] | None:
    """``(metric, file)`` of the first E04 file about ``model`` (e.g. ``"Qwen/Qwen2-7B"``).

    >>> e04_metric([], "Qwen/Qwen2-7B") is None
    True
    """
    for f in files:
        if f.family == "e04" and f.problem is None and isinstance(f.doc, dict) \
                and model in (f.doc.get("base_model"), f.doc.get("instruct_model")):
            return str(f.doc.get("metric", "fragility (no 'metric' field)")), f.name
    return None


def audit_e04(files: list[PaperFile]) -> tuple[list[Check], list[Flag]]:
    """Recomputed fragility aggregates and stored-error flags of the E04 files.

    >>> audit_e04([])
    ([], [])
    """
    checks: list[Check] = []
    flags: list[Flag] = []
    for f in files:
        if f.family != "e04" or f.problem is not None:
            continue
        for path, node in dicts(f.doc):
            values = node.get("values")
            stored = num(node.get("mean_fragility"))
            if stored is not None and isinstance(values, list) and values \
                    and all(num(v) is not None for v in values):
                mean = sum(values) / len(values)
                checks.append(check(f.name, f"{path.lstrip('/')}: mean fragility", stored,
                                    f"{stored:.6g}", mean, f"mean of {len(values)} seed values",
                                    tol=1e-9, files=[f.name]))
            if isinstance(node.get("traceback"), str) or node.get("status") == "error":
                flags.append(Flag("stored_error", f.name, (
                    f"{path.lstrip('/')}: status {node.get('status')!r}, error "
                    f"{node.get('error')!r}: this pair was not measured")))
            base, inst = node.get("base"), node.get("instruct")
            if isinstance(node.get("verdict"), dict) and "gqa_delta" in node["verdict"] \
                    and isinstance(base, dict) and isinstance(inst, dict):
                b = num(dig(base, "fragility", "fragility_score"))
                i = num(dig(inst, "fragility", "fragility_score"))
                stored = num(node["verdict"]["gqa_delta"])
                if None not in (b, i, stored):
                    checks.append(check(f.name, "gqa_delta (instruct - base fragility)", stored,
                                        f"{stored:.6g}", i - b, f"{i:.4g} - ({b:.4g})", tol=1e-9,
                                        files=[f.name]))
        if isinstance(f.doc, dict) and isinstance(f.doc.get("metric"), str):
            flags.append(Flag("note", f.name, f"metric: {f.doc['metric']!r}"))
    return checks, flags
