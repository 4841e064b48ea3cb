"""E21 / E22 family (dimensional crowding, Table 9): rho_eff by Eq. 3, the stage-1 ratio, and the
"rho" definitions used across the package.

From each stored model config (``n_heads``, ``n_kv_heads``, ``d_head``) the audit recomputes
``rho_standard = n_heads / d_head`` and ``rho_eff`` (Eq. 3), flags ``data_verified: false``
entries, recomputes the stage-1 GQA/MHA ratio from the stored slopes and says what it divides,
and lists every "rho" of the package with the formula its value follows.

>>> doc = {"model_analysis": [{"model_id": "m", "n_heads": 32, "n_kv_heads": 8, "kv_ratio": 4,
...        "d_head": 128, "rho_standard": 0.25, "rho_effective": 1.0, "data_verified": False,
...        "ppl_slope": 1000.0}]}
>>> checks, flags = audit_e21([PaperFile("E21_x.json", doc, None, "e21")])
>>> [c.verdict for c in checks], [f.kind for f in flags]
(['reproduced', 'reproduced'], ['data_verified_false', 'note'])
"""

from __future__ import annotations

import math
from typing import Any

from tl_spec.audit.common import Check, Flag, PaperFile, check, dicts, num, rho_eff

__all__ = ["RHO_FORMULAS", "audit_e21", "model_table", "rho_definitions"]

#: The "rho" formulas found in the package, by name.
RHO_FORMULAS = {
    "H/d_head": "n_heads / d_head (E21 'rho_standard', the Paper-3 rho)",
    "Eq. 3": "(n_heads / n_kv_heads) x n_heads / d_head (E21/E22 'rho_effective', paper Eq. 3)",
    "H/sqrt(d_model)": "n_heads / sqrt(d_model) (E04 'rho', E11 'rho_head', 'head_density_rho')",
    "kv/layers": "n_kv_heads / n_layers (E11 'rho_kv')",
}


def model_table(files: list[PaperFile]) -> tuple[list[dict[str, Any]], str | None]:
    """The ``model_analysis`` entries of the first E21 file, and its name.

    >>> model_table([])
    ([], None)
    """
    for f in files:
        if f.family == "e21" and f.problem is None and isinstance(f.doc, dict) \
                and isinstance(f.doc.get("model_analysis"), list):
            return [m for m in f.doc["model_analysis"] if isinstance(m, dict)], f.name
    return [], None


def _config_checks(f: PaperFile, m: dict[str, Any]) -> tuple[list[Check], list[Flag]]:
    checks, flags = [], []
    h, kv, dh = (m.get(k) for k in ("n_heads", "n_kv_heads", "d_head"))
    name = str(m.get("model_id", "?"))
    if all(isinstance(v, int) and v > 0 for v in (h, kv, dh)):
        for key, value, formula in (("rho_standard", h / dh, "n_heads / d_head"),
                                    ("rho_effective", rho_eff(h, kv, dh), "Eq. 3")):
            stored = num(m.get(key))
            if stored is not None:
                checks.append(check(f.name, f"{name}: {key}", stored, f"{stored:.6g}", value,
                                    f"{formula} from n_heads={h}, n_kv_heads={kv}, d_head={dh}: "
                                    f"{value:.6g}", tol=1e-9, files=[f.name]))
        if m.get("architecture") == "GQA" and h == kv:
            flags.append(Flag("config_contradiction", f.name, (
                f"{name} is labelled GQA but has n_kv_heads == n_heads = {h} (that is MHA)")))
    if m.get("data_verified") is False:
        flags.append(Flag("data_verified_false", f.name, (
            f"{name}: data_verified false; ppl_slope {m.get('ppl_slope')} and failure mode "
            f"{m.get('failure_mode')!r} are not measured values, yet enter the correlations")))
    return checks, flags


def _stage1(f: PaperFile, table: list[dict[str, Any]]) -> list[Check | Flag]:
    doc = f.doc
    s1 = doc.get("stage1_results") if isinstance(doc.get("stage1_results"), dict) else {}
    slope = {m.get("model_id"): num(m.get("ppl_slope")) for m in table}
    mha = [slope.get(k) for k in s1.get("mha_models", [])]
    gqa = [slope.get(k) for k in s1.get("gqa_models", [])]
    if not mha or not gqa or None in mha or None in gqa:
        return []
    m_mean, g_mean = sum(mha) / len(mha), sum(gqa) / len(gqa)
    out: list[Check | Flag] = []
    stored = num(s1.get("ratio_gqa_mha"))
    if stored is not None:
        out.append(check(f.name, "stage-1 GQA/MHA PPL-slope ratio (stored)", stored,
                         f"{stored:,.1f}x", g_mean / m_mean,
                         f"mean of {len(gqa)} GQA slopes {g_mean:,.0f} / mean of {len(mha)} MHA "
                         f"slope(s) {m_mean:,.2f} = {g_mean / m_mean:,.1f}x", tol=1e-6 * stored,
                         files=[f.name]))
    if len(mha) == 1:
        out.append(Flag("ratio_definition", f.name, (
            f"the stage-1 ratio {g_mean / m_mean:,.0f}x divides a {len(gqa)}-model mean "
            f"({', '.join(s1.get('gqa_models', []))}: {g_mean:,.0f}) by ONE MHA slope "
            f"({s1['mha_models'][0]}: {m_mean:g}, a single seed's value); Cohen's d = "
            f"{s1.get('cohens_d')} is computed with n_mha = 1")))
    return out


def rho_definitions(files: list[PaperFile]) -> tuple[dict[str, list[str]], list[Flag]]:
    """Every stored "rho" value, matched to the formula that reproduces it, per formula.

    Returns:
        ``{formula name: ["file: key = value", ...]}`` and one ``definitions_differ`` flag when
        more than one formula is in use.

    >>> rho_definitions([])
    ({}, [])
    """
    found: dict[str, list[str]] = {}
    for f in files:
        if f.problem is not None:
            continue
        for path, node in dicts(f.doc):
            h = node.get("num_query_heads", node.get("n_heads", node.get("num_attention_heads")))
            dh, kv = node.get("d_head"), node.get("num_kv_heads", node.get("n_kv_heads"))
            for key in ("rho", "rho_head", "head_density_rho", "rho_kv", "rho_standard",
                        "rho_effective"):
                value = num(node.get(key))
                if value is None:
                    continue
                where = f"{f.name}:{path}/{key} = {value:.4g}"
                if key == "rho_effective":
                    found.setdefault("Eq. 3", []).append(where)
                elif key == "rho_standard":
                    found.setdefault("H/d_head", []).append(where)
                elif key == "rho_kv":
                    found.setdefault("kv/layers", []).append(where)
                elif isinstance(h, int) and isinstance(dh, int) and \
                        math.isclose(value, h / math.sqrt(h * dh), rel_tol=1e-6):
                    found.setdefault("H/sqrt(d_model)", []).append(where + " (d_model = H x d_head)")
                elif key in ("rho_head", "head_density_rho") or isinstance(kv, int):
                    found.setdefault("H/sqrt(d_model)", []).append(where)
            for key in ("rho_formula", "rho_eff_formula", "rho_head_formula", "rho_kv_formula"):
                if isinstance(node.get(key), str):
                    found.setdefault("stated formulas", []).append(f"{f.name}: {key} = {node[key]!r}")
    names = [k for k in found if k != "stated formulas"]
    flags = []
    if len(names) > 1:
        flags.append(Flag("definitions_differ", ", ".join(sorted({w.split(":")[0] for k in names
                                                                   for w in found[k]})), (
            f"{len(names)} different 'rho' definitions are in use: "
            + "; ".join(f"{k} [{RHO_FORMULAS.get(k, k)}] in {len(found[k])} value(s)" for k in names))))
    return found, flags


def audit_e21(files: list[PaperFile]) -> tuple[list[Check], list[Flag]]:
    """Checks and flags of the E21/E22 files among ``files`` (configs, stage 1, E22 levels).

    >>> audit_e21([])
    ([], [])
    """
    checks: list[Check] = []
    flags: list[Flag] = []
    for f in files:
        if f.family != "e21" or f.problem is not None or not isinstance(f.doc, dict):
            continue
        table = [m for m in f.doc.get("model_analysis", []) if isinstance(m, dict)] \
            if isinstance(f.doc.get("model_analysis"), list) else []
        for m in table:
            c, fl = _config_checks(f, m)
            checks += c
            flags += fl
        if table:
            top = max(table, key=lambda m: num(m.get("rho_effective")) or -1.0)
            sig = (f.doc.get("v21_update") or {}).get("significance") \
                if isinstance(f.doc.get("v21_update"), dict) else None
            flags.append(Flag("note", f.name, (
                f"highest rho_eff in the file: {top.get('model_id')} = {top.get('rho_effective')}"
                + (f" (the file says: {sig!r})" if sig else ""))))
        for item in _stage1(f, table):
            (checks if isinstance(item, Check) else flags).append(item)
        levels = f.doc.get("results") if isinstance(f.doc.get("results"), dict) else {}
        for level, node in levels.items():
            kv, stored = node.get("kv_heads") if isinstance(node, dict) else None, None
            if isinstance(kv, int) and kv > 0:
                stored = num(node.get("rho_effective"))
                value = rho_eff(32, kv, 128)  # Meta-Llama-3-8B: 32 query heads, d_head 128
                if stored is not None:
                    checks.append(check(f.name, f"{level}: rho_effective (kv_heads={kv})", stored,
                                        f"{stored:g}", value, f"Eq. 3 with n_heads=32, d_head=128: "
                                        f"{value:g}", tol=1e-9, files=[f.name]))
    return checks, flags
