"""The claims of ``claims.yaml`` (the package's machine-readable claim map) against its files.

Each claim names a key metric, an expected range and its result files; the audit reads the
numbers of those files (recomputed where possible) and says whether they fall in the range.
Supporting evidence entries name one file and a key finding; where the finding is a ratio
("~5,800x") it is compared with the ratio the file stores and the refit; otherwise the file's own
verdict is reported.

>>> claims = parse_claims("claims:\\n  A9: {name: toy, expected_range: 'SI: 0.1 to 0.2'}\\n")
>>> claims["claims"]["A9"]["name"], ranges("SI: 0.30 to 0.36"), ranges("Healing: +80% to +140%")
('toy', [(0.3, 0.36)], [(80.0, 140.0)])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tl_spec.audit.common import Check, Flag, PaperFile, check, dicts, dig, num, pct_change
from tl_spec.audit.e06 import find_fit
from tl_spec.audit.e08 import phi_index
from tl_spec.audit.e11 import AuditRow
from tl_spec.audit.indra import indra_file, seed_responses
from tl_spec.errors import TLSpecError

__all__ = ["claim_checks", "load_claims", "parse_claims", "ranges"]

_RANGE = re.compile(r"([+-]?\d[\d,]*\.?\d*)\s*%?\s*to\s*([+-]?\d[\d,]*\.?\d*)")
_RATIO = re.compile(r"~?\s*([\d,]+)\s*[x×]")


def parse_claims(text: str) -> dict[str, Any]:
    """Parse the YAML text of a claims file (PyYAML's ``safe_load``); a clear error without PyYAML.

    >>> parse_claims("claims: {}")
    {'claims': {}}
    """
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a core dependency
        raise TLSpecError("reading claims.yaml needs PyYAML, a dependency of tl_spec that is "
                          "missing here: pip install 'pyyaml>=6'") from exc
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe either way
    except yaml.YAMLError as exc:
        raise TLSpecError(f"the claims file is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims", {}), dict):
        raise TLSpecError("the claims file holds no 'claims:' mapping (is it the package's "
                          "claims.yaml?)")
    return doc


def load_claims(path: str | Path) -> dict[str, Any]:
    """Read and parse a claims file; a missing or unreadable file raises :class:`TLSpecError`.

    >>> load_claims("no/claims.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: claims file 'no/claims.yaml' does not exist...
    """
    path = Path(path)
    if not path.is_file():
        raise TLSpecError(f"claims file {str(path)!r} does not exist; pass the package's "
                          "claims.yaml to --claims")
    try:
        return parse_claims(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TLSpecError(f"cannot read claims file {str(path)!r}: {exc}") from None


def ranges(text: str) -> list[tuple[float, float]]:
    """Every "a to b" range in an ``expected_range`` string (low, high sorted)."""
    out = []
    for a, b in _RANGE.findall(text or ""):
        lo, hi = float(a.replace(",", "")), float(b.replace(",", ""))
        out.append((min(lo, hi), max(lo, hi)))
    return out


def _base(path: str) -> str:
    return str(path).rsplit("/", 1)[-1]


def _range_check(cid: str, claim: dict[str, Any], values: list[tuple[str, float]],
                 rng: tuple[float, float] | None, files: list[str], what: str) -> Check:
    text = str(claim.get("expected_range", ""))
    if not values or rng is None:
        return Check(f"claim {cid}", f"{claim.get('name', '')}: {what}", None, text, None,
                     "no numeric artifact", "no artifact", "", files)
    lo, hi = rng
    outside = [(n, v) for n, v in values if not lo <= v <= hi]
    shown = ", ".join(f"{n} {v:+.4g}" for n, v in values)
    c = Check(f"claim {cid}", f"{claim.get('name', '')}: {what}", None, text,
              min(values, key=lambda nv: abs(nv[1]))[1] if not outside else outside[0][1], shown,
              "differs" if outside else "reproduced",
              ("outside the expected range: " + ", ".join(f"{n} {v:+.4g}" for n, v in outside))
              if outside else "", files)
    return c


def _a1(claim: dict[str, Any], rows: list[AuditRow]) -> list[Check]:
    wanted = {_base(r) for r in claim.get("results", [])}
    vals = [(r.model or r.file, r.delta_recomputed) for r in rows
            if r.file in wanted and r.delta_recomputed is not None]
    rng = (ranges(str(claim.get("expected_range")))[:1] or [None])[0]
    return [_range_check("A1", claim, [(n, v) for n, v in vals], rng, sorted(wanted & {r.file for r in rows}),
                         "Delta SI (Eq. 2, recomputed from matrices), %")]


def _a2(claim: dict[str, Any], files: list[PaperFile]) -> list[Check]:
    rng = ranges(str(claim.get("expected_range")))
    out = []
    ll2 = indra_file(files, "E11T_indra_llama2")
    if ll2 is not None:
        per = seed_responses(ll2.doc, "base")
        sigmas = sorted(s for reg, s in per if reg == "all")
        n = min((len(per[("all", s)]) for s in sigmas), default=0)
        best = [max(per[("all", s)][i] for s in sigmas) for i in range(n)]
        heal = sum(best) / len(best) if best else None
        out.append(_range_check("A2", claim, [("LLaMA-2-7B base, all layers, best sigma per seed",
                                               heal)] if heal is not None else [],
                                rng[0] if rng else None, [ll2.name], "healing % (MHA)"))
    ctl = indra_file(files, "E11T_indra_B_base_control")
    if ctl is not None:
        base = num(dig(ctl.doc, "results", "baseline", "specialization_index"))
        val = None
        treatments = dig(ctl.doc, "results", "treatments")
        for t in treatments if isinstance(treatments, list) else []:
            tests = dig(t, "noise_tests") if dig(t, "region") == "early" else None
            for test in tests if isinstance(tests, list) else []:
                sv = dig(test, "seed_values")
                seeds = [num(v) for v in sv.values()] if isinstance(sv, dict) else []
                if num(test.get("noise_std")) == 0.02 and seeds and None not in seeds and base:
                    val = pct_change(sum(seeds) / len(seeds), base)
        out.append(_range_check("A2", claim, [("LLaMA-3.1-8B base, early, sigma 0.02", val)]
                                if val is not None else [], rng[1] if len(rng) > 1 else None,
                                [ctl.name], "damage % (base control)"))
    return out


def _a4(claim: dict[str, Any], files: list[PaperFile]) -> list[Check]:
    index = phi_index(files)
    rng = (ranges(str(claim.get("expected_range")))[:1] or [None])[0]
    return [_range_check("A4", claim, [(k.split("/")[-1], v) for k, (v, _) in index.items()], rng,
                         sorted({f for _, f in index.values()}), "SI (E08 index values, no matrix)")]


def _a5(claim: dict[str, Any], files: list[PaperFile],
        rows: list[AuditRow]) -> tuple[list[Check], list[Flag]]:
    rng = (ranges(str(claim.get("expected_range")))[:1] or [None])[0]
    vals, used, flags = [], [], []
    canon = next((f for f in files if f.name == _base(claim.get("canonical_result", ""))
                  and f.problem is None), None)
    if canon is not None and isinstance(dig(canon.doc, "summary"), dict):
        for size, node in canon.doc["summary"].items():
            if isinstance(node, dict) and "base_si" in node:
                vals += [(f"{size} {k} (stored)", num(node.get(k))) for k in ("base_si", "instruct_si")]
        used.append(canon.name)
    for r in rows:
        if r.model == "tiiuae/falcon-7b":
            for v, va in r.variants.items():
                if va.si_recomputed is not None:
                    vals.append((f"falcon-7b {v} (recomputed, {r.file})", va.si_recomputed))
            used.append(r.file)
            stored7 = [v for n, v in vals if n.startswith("falcon_7b")]
            if stored7 and r.variants.get("base") and r.variants["base"].si_recomputed:
                flags.append(Flag("files_contradict", f"{canon.name if canon else '?'}, {r.file}", (
                    f"Falcon-7B base SI: {stored7[0]:.4f} in the 40B file's reference (8-bit) vs "
                    f"{r.variants['base'].si_recomputed:.4f} recomputed from {r.file}'s matrix")))
    vals = [(n, v) for n, v in vals if v is not None]
    return [_range_check("A5", claim, vals, rng, used, "SI of Falcon 7B and 40B")], flags


def _supporting(name: str, entry: dict[str, Any], files: list[PaperFile]) -> Check:
    finding = str(entry.get("key_finding", ""))
    wanted = {_base(r) for r in entry.get("results", [])}
    f = next((x for x in files if x.name in wanted), None)
    if f is None or f.problem is not None:
        return Check(name, finding, None, finding, None, "result file not given or unreadable",
                     "no artifact", "", sorted(wanted))
    m = _RATIO.search(finding)
    doc = f.doc
    if m:
        published = float(m.group(1).replace(",", ""))
        stored = None
        for _, node in dicts(doc):
            for key in ("ppl_ratio", "ratio_gqa_mha"):
                stored = stored if stored is not None else num(node.get(key))
        cause = ""
        if name.startswith("E06"):
            seed = doc.get("seed") if isinstance(doc, dict) else None
            cause = f"the file holds one seed ({seed}); the finding is a 3-seed ratio of means"
            fit_a = find_fit([f], f.name[:5], "llama3_8b") or find_fit([f], f.name[:5], "mistral_7b")
            fit_b = find_fit([f], f.name[:5], "llama2_7b")
            if fit_a and fit_b:
                stored = fit_a[0].fit.slope / fit_b[0].fit.slope
        return check(name, finding, published, finding, stored,
                     f"{stored:,.1f}x in {f.name}" if stored is not None else "no stored ratio",
                     tol=0.01 * published, cause=cause, files=[f.name])
    verdict = doc.get("verdict") if isinstance(doc, dict) else None
    if isinstance(verdict, dict):
        verdict = verdict.get("status", verdict.get("verdict"))
    if verdict is None and isinstance(doc, dict) and isinstance(doc.get("analysis"), dict):
        verdict = doc["analysis"].get("verdict")
    validation = doc.get("validation") if isinstance(doc, dict) else None
    failed = isinstance(validation, dict) and validation.get("all_pass") is False
    text = (f"file verdict: {verdict!r}" if verdict is not None else "the file stores no verdict")
    if failed:
        text += f"; its own validation: {validation.get('pass_count')} criteria passed, all_pass false"
    bad = failed or any(w in str(verdict).upper() for w in ("FAIL", "INCONCLUSIVE", "PARTIAL"))
    p_values = [k for _, node in dicts(doc) for k in node if "p_value" in k or k == "p"]
    if "p <" in finding and not p_values:
        return Check(name, finding, None, finding, None, "no p-value stored in the file",
                     "no artifact", "the file stores BCa intervals over n = 3 seeds, no test",
                     [f.name])
    return Check(name, finding, None, finding, None, text, "differs" if bad else "no artifact",
                 "the file's own verdict does not support the finding" if bad else
                 "qualitative finding; no number to compare", [f.name])


def claim_checks(claims: dict[str, Any], files: list[PaperFile],
                 rows: list[AuditRow]) -> tuple[list[Check], list[Flag]]:
    """One or more checks per claim (A1-A5) and per supporting-evidence entry.

    Args:
        claims: the parsed claims file (:func:`load_claims`).
        files: the loaded input files.
        rows: their E11 audit rows.

    Returns:
        The checks and flags (files that contradict each other).

    >>> claim_checks({"claims": {}}, [], [])
    ([], [])
    """
    checks: list[Check] = []
    flags: list[Flag] = []
    handlers = {"A1": lambda c: _a1(c, rows), "A2": lambda c: _a2(c, files),
                "A4": lambda c: _a4(c, files)}
    for cid, claim in (dig(claims, "claims") if isinstance(dig(claims, "claims"), dict) else {}).items():
        if not isinstance(claim, dict):
            continue
        if cid in handlers:
            checks += handlers[cid](claim)
        elif cid == "A5":
            c, fl = _a5(claim, files, rows)
            checks += c
            flags += fl
        else:
            checks.append(Check(f"claim {cid}", f"{claim.get('name', '')}: "
                                f"{claim.get('key_metric', '')}", None,
                                str(claim.get("expected_range", "")), None,
                                "no numeric artifact for this claim", "no artifact",
                                "qualitative claim" + (" (E04 stores repetition-score fragility, "
                                                       "not SI)" if "E04" in str(claim) else ""),
                                [_base(r) for r in claim.get("results", [])]))
    evidence = dig(claims, "supporting_evidence")
    for name, entry in (evidence if isinstance(evidence, dict) else {}).items():
        if isinstance(entry, dict):
            checks.append(_supporting(str(name), entry, files))
    return checks, flags
