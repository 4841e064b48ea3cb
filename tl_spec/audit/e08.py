"""E08 family (Phi, Table 7, claim A4): the stored index values of SI.

The E08 files are indices ("Full results available in original ZIP files"): one rounded
``si_mean`` per model, no matrix, no per-prompt or per-seed values. The audit reads them so the
tables and claims can be compared with what is stored.

>>> doc = {"models": [{"name": "microsoft/phi-2", "si_mean": 0.34}]}
>>> phi_index([PaperFile("E08_x.json", doc, None, "e08")])
{'microsoft/phi-2': (0.34, 'E08_x.json')}
"""

from __future__ import annotations

from tl_spec.audit.common import Flag, PaperFile, dicts, num

__all__ = ["audit_e08", "phi_index"]


def phi_index(files: list[PaperFile]) -> dict[str, tuple[float, str]]:
    """``{model name: (si_mean, file)}`` over the E08 files (the first file naming a model wins).

    >>> phi_index([])
    {}
    """
    out: dict[str, tuple[float, str]] = {}
    for f in files:
        if f.family != "e08" or f.problem is not None:
            continue
        for _, node in dicts(f.doc):
            name = node.get("name", node.get("model"))
            si = num(node.get("si_mean"))
            if si is None and isinstance(node.get("key_findings"), dict):
                si = num(node["key_findings"].get("si_mean"))
            if isinstance(name, str) and si is not None:
                out.setdefault(name, (si, f.name))
    return out


def audit_e08(files: list[PaperFile]) -> list[Flag]:
    """One flag per E08 index: summary values only, nothing to recompute.

    >>> audit_e08([])
    []
    """
    flags = []
    for f in files:
        if f.family == "e08" and f.problem is None and isinstance(f.doc, dict):
            values = [f"{k.split('/')[-1]} {v[0]:g}" for k, v in phi_index([f]).items()]
            flags.append(Flag("summary_only", f.name, (
                "index file: SI rounded to 2 decimals (" + ", ".join(values) + "); "
                f"note: {f.doc.get('note', '')!r}; no matrix or seed values to recompute")))
    return flags
