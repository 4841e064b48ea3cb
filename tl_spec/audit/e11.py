"""Audit result files in the paper's E11 format: recompute every SI that has a stored matrix.

For each file: the stored SI of base and instruct, the SI recomputed with
:func:`~tl_spec.metrics.specialization.si_from_entropy_profile` from the stored ``entropies``
(max abs difference), stored and recomputed Delta SI (the paper's Eq. 2, relative, in %), and flags for
the pitfalls of the published material: per-seed SI values that are identical (the 3-seed protocol
repeated a deterministic forward pass), stored intervals of zero width, files with no matrix.
``audit_files(..., paper_table=True)`` compares the recomputed Delta SI with the paper's Table 4.

>>> E = [[0.2, 0.9, 0.5], [0.6, 0.4, 0.5], [0.9, 0.1, 0.7]]          # [layers, heads]
>>> v = {"entropies": E, "specialization": {"specialization_index": 1.32},
...      "seed_results": [{"si": 1.32}] * 3}
>>> row = audit_record({"model": "toy", "results": {"base": v, "instruct": v}})
>>> round(row.variants["base"].max_abs_diff, 4), row.delta_recomputed, row.flags
(0.0006, 0.0, ['identical_seeds'])
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_spec.audit.common import paper_rows
from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.metrics.specialization import si_from_entropy_profile
from tl_spec.stats import check_seeds

__all__ = [
    "AGREE_PP",
    "PAPER_ROW_OF_MODEL",
    "PAPER_TABLE_4",
    "AuditReport",
    "AuditRow",
    "PaperComparison",
    "VariantAudit",
    "audit_file",
    "audit_files",
    "audit_record",
]

VARIANTS = ("base", "instruct")
AGREE_PP = 0.1  # |paper - recomputed| below this many percentage points counts as agreement

# Paper Table 4 (Sec. 3.1): Delta SI under alignment, in % (from tl_spec/data/paper4_tables.json).
PAPER_TABLE_4: dict[str, float] = {r["row"]: r["value"] for r in paper_rows("4")}

# Model names as stored in the E11 files (``model``, ``config.base/instruct``,
# ``results.*.model_name``) -> Table 4 row. Qwen2 has no E11 file in the reproduction package.
PAPER_ROW_OF_MODEL: dict[str, str] = {
    "meta-llama/Llama-2-7b-hf": "LLaMA-2-7B", "meta-llama/Llama-2-7b-chat-hf": "LLaMA-2-7B",
    "LLaMA-3.1-8B": "LLaMA-3.1-8B", "meta-llama/Llama-3.1-8B": "LLaMA-3.1-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "LLaMA-3.1-8B",
    "01-ai/Yi-1.5-9B": "Yi-1.5-9B", "01-ai/Yi-1.5-9B-Chat": "Yi-1.5-9B",
    "mistralai/Mistral-7B-v0.3": "Mistral-7B", "mistralai/Mistral-7B-Instruct-v0.3": "Mistral-7B",
    "google/gemma-2-9b": "Gemma-2-9B", "google/gemma-2-9b-it": "Gemma-2-9B",
    "Qwen/Qwen2-7B": "Qwen2-7B", "Qwen/Qwen2-7B-Instruct": "Qwen2-7B",
}


@dataclass
class VariantAudit:
    """One variant (base or instruct) of one file: stored vs recomputed SI."""

    model: str | None = None
    si_stored: float | None = None
    si_recomputed: float | None = None  # mean over the variant's stored matrices
    max_abs_diff: float | None = None  # over every (stored SI, matrix) pair, seeds included
    n_matrices: int = 0


@dataclass
class AuditRow:
    """The audit of one result file (see :func:`audit_record`)."""

    file: str
    model: str | None = None
    experiment: str | None = None
    variants: dict[str, VariantAudit] = field(default_factory=dict)
    delta_stored_pct: float | None = None  # a stored relative Delta SI (%), where the file has one
    delta_stored_abs: float | None = None  # a stored SI_instruct - SI_base
    delta_recomputed: float | None = None  # Eq. 2 from the recomputed SIs, in %
    delta_recomputed_abs: float | None = None
    identical_seeds: bool = False
    zero_width_intervals: bool = False
    no_matrix: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        """Names of the raised flags."""
        return [f for f in ("identical_seeds", "zero_width_intervals", "no_matrix") if getattr(self, f)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict, flags included."""
        return _clean({**asdict(self), "flags": self.flags})


@dataclass
class PaperComparison:
    """One row of Table 4 next to the Delta SI recomputed from the stored matrices."""

    row: str
    paper_delta: float
    file: str | None
    delta_recomputed: float | None
    diff_pp: float | None
    status: str  # "agree", "DIFFERS" or "no matrix"
    note: str = ""


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None


def _seed_si(rec: Any) -> float | None:
    if not isinstance(rec, dict):
        return None
    spec = rec.get("specialization")
    return _num(spec.get("specialization_index")) if isinstance(spec, dict) else _num(rec.get("si"))


def _stored_si(node: dict) -> float | None:
    for key in ("specialization", "baseline_global"):
        if isinstance(node.get(key), dict) and "specialization_index" in node[key]:
            return _num(node[key]["specialization_index"])
    return _num(node.get("specialization_index"))


def _is_variant(node: Any) -> bool:
    keys = ("specialization", "entropies", "seed_results", "baseline_global", "specialization_index")
    return isinstance(node, dict) and any(k in node for k in keys)


def _variant_nodes(doc: dict, model: str | None) -> dict[str, dict]:
    """``{"base": node, "instruct": node}`` of a pair file, or the one variant of a single-model file."""
    for container in (doc.get("results"), doc):
        if isinstance(container, dict):
            found = {v: container[v] for v in VARIANTS if _is_variant(container.get(v))}
            if found:
                return found
    res = doc.get("results")
    for key in ("baseline", "baseline_global"):
        if isinstance(res, dict) and _is_variant(res.get(key)):
            tuned = bool(model and re.search(r"instruct|chat|-it$", model, re.IGNORECASE))
            return {"instruct" if tuned else "base": res[key]}
    return {}


def _audit_variant(node: dict, name: str, notes: list[str]) -> VariantAudit:
    va = VariantAudit(model=_str(node.get("model_name")), si_stored=_stored_si(node))
    pairs = [(name, node["entropies"], va.si_stored)] if "entropies" in node else []
    seeds = node.get("seed_results") if isinstance(node.get("seed_results"), list) else []
    pairs += [(f"{name}/seed_results[{i}]", r["entropies"], _seed_si(r))
              for i, r in enumerate(seeds) if isinstance(r, dict) and "entropies" in r]
    values, diffs = [], []
    for where, matrix, stored in pairs:
        try:
            si = si_from_entropy_profile(np.asarray(matrix, dtype=np.float64))
        except (TLSpecError, TypeError, ValueError) as exc:
            notes.append(f"{where}: entropies not usable ({exc})")
            continue
        values.append(si)
        diffs += [abs(si - stored)] if stored is not None else []
    if values:
        va.n_matrices, va.si_recomputed = len(values), float(np.mean(values))
        diffs += [abs(va.si_recomputed - va.si_stored)] if va.si_stored is not None else []
        va.max_abs_diff = max(diffs) if diffs else None
    return va


def _dicts(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every dict in a parsed JSON tree, with its path."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _dicts(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _dicts(v, f"{path}[{i}]")


def _seed_groups(doc: Any) -> Iterator[tuple[float | None, list]]:
    """Every stored set of per-seed SI values: (noise sigma or None, values)."""
    for _, node in _dicts(doc):
        noise = next((_num(node[k]) for k in ("noise_std", "noise") if _num(node.get(k)) is not None), None)
        if isinstance(node.get("seed_results"), list):
            yield noise, [_seed_si(r) for r in node["seed_results"]]
        if isinstance(node.get("seed_values"), dict):
            yield noise, [_num(v) for v in node["seed_values"].values()]
        if isinstance(node.get("all_seed_results"), dict):  # {seed: {method: [{region, tests: [...]}]}}
            regrouped: dict[tuple, list] = defaultdict(list)
            for per_seed in node["all_seed_results"].values():
                for method, regions in per_seed.items() if isinstance(per_seed, dict) else ():
                    for reg in regions if isinstance(regions, list) else ():
                        for t in reg.get("tests", []) if isinstance(reg, dict) else ():
                            key = (method, reg.get("region"), _num(t.get("noise")))
                            regrouped[key].append(_num(t.get("si")))
            yield from ((key[2], vals) for key, vals in regrouped.items())


def _identical(values: list[float]) -> str | None:
    """``tl_spec.stats.check_seeds``' text when all seeds are exactly equal, else None (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TLSpecWarning)
        return check_seeds(values, name="SI")


def _intervals(doc: Any) -> Iterator[tuple[str, float, float, Any]]:
    """Every stored interval: (where, low, high, n_samples)."""
    for path, node in _dicts(doc):
        for lo_key, hi_key in (("ci_lower", "ci_upper"), ("lower", "upper"), ("low", "high")):
            lo, hi = _num(node.get(lo_key)), _num(node.get(hi_key))
            if lo is not None and hi is not None:
                yield path, lo, hi, node.get("n_samples")


def _stored_delta(doc: dict) -> tuple[float | None, float | None]:
    """(relative %, absolute) Delta SI from the file's verdict, where it stores one."""
    res = doc.get("results") if isinstance(doc.get("results"), dict) else {}
    for verdict in (res.get("verdict"), doc.get("verdict")):
        if isinstance(verdict, dict):
            pct = _num(verdict.get("delta_si_pct"))
            ab = _num(verdict.get("delta_specialization", verdict.get("delta_si")))
            if pct is not None or ab is not None:
                return pct, ab
    return None, None


def _model_of(doc: dict) -> str | None:
    if _str(doc.get("model")):
        return doc["model"]
    for container in (doc.get("config"), doc.get("results"), doc):
        base = container.get("base") if isinstance(container, dict) else None
        if _str(base) or (isinstance(base, dict) and _str(base.get("model_name"))):
            return base if isinstance(base, str) else base["model_name"]
    return None


def audit_record(doc: Any, file: str = "<record>") -> AuditRow:
    """Audit one parsed E11 record (a dict, or a list of dicts); see the module docstring."""
    row = AuditRow(file=file)
    entries = [d for d in (doc if isinstance(doc, list) else [doc]) if isinstance(d, dict)]
    for d in entries:
        model = _model_of(d)
        row.model, row.experiment = row.model or model, row.experiment or _str(d.get("experiment"))
        config = d.get("config") if isinstance(d.get("config"), dict) else {}
        for name, node in _variant_nodes(d, model).items():
            va = row.variants.setdefault(name, _audit_variant(node, name, row.notes))
            va.model = va.model or _str(config.get(name))
        if _str(d.get("source_file")):
            row.notes.append(f"derived from {d['source_file']}")
        pct, ab = _stored_delta(d)
        row.delta_stored_pct = row.delta_stored_pct if pct is None else pct
        row.delta_stored_abs = row.delta_stored_abs if ab is None else ab
    if entries and not row.model:
        row.notes.append("the file names no model")
    if len(row.variants) == 1 and row.model:
        (only, va), = row.variants.items()
        va.model = va.model or row.model
        row.notes.append(f"single-model file: variant {only!r} inferred from the model name")

    groups = [(s, [v for v in vals if v is not None and math.isfinite(v)])
              for d in entries for s, vals in _seed_groups(d)]
    groups = [(s, vals) for s, vals in groups if len(vals) >= 2]
    clean = [_identical(vals) for s, vals in groups if not s]
    noisy = [_identical(vals) for s, vals in groups if s]
    if clean:
        same = sum(m is not None for m in clean)
        row.identical_seeds = same == len(clean)
        why = f": {clean[0]}; the 3-seed protocol repeated a deterministic forward pass"
        row.notes.append(f"per-seed SI without noise identical in {same} of {len(clean)} groups"
                         + (why if row.identical_seeds else ""))
    if noisy:
        row.notes.append(f"with noise sigma > 0, seeds differ in {sum(m is None for m in noisy)} of "
                         f"{len(noisy)} groups (the noise is random)")

    ivals = [iv for d in entries for iv in _intervals(d)]
    zero = [iv for iv in ivals if iv[1] == iv[2]]
    if zero:
        row.zero_width_intervals = True
        ns = ", ".join(sorted({str(iv[3]) for iv in ivals if iv[3] is not None})) or "?"
        row.notes.append(f"{len(zero)} of {len(ivals)} stored intervals have low == high (e.g. {zero[0][0]}); "
                         f"n_samples = {ns}: resampling identical seed values gives no interval")

    base, inst = row.variants.get("base"), row.variants.get("instruct")
    row.no_matrix = not any(v.n_matrices for v in row.variants.values())
    if row.no_matrix and row.variants:
        row.notes.append("no stored entropy matrix: stored SI cannot be recomputed")
    if base and inst and base.si_recomputed is not None and inst.si_recomputed is not None:
        row.delta_recomputed_abs = inst.si_recomputed - base.si_recomputed
        row.delta_recomputed = row.delta_recomputed_abs / base.si_recomputed * 100.0
        if row.delta_stored_abs is not None and abs(row.delta_stored_abs - row.delta_recomputed_abs) > 1e-9:
            row.notes.append(f"stored absolute Delta SI {row.delta_stored_abs:+.6f} != recomputed "
                             f"{row.delta_recomputed_abs:+.6f}")
    elif base and inst and base.si_stored and inst.si_stored is not None:
        eq2 = (inst.si_stored - base.si_stored) / base.si_stored * 100
        row.notes.append(f"Eq. 2 on the stored SIs: {eq2:+.2f} %")
    for name, va in row.variants.items():
        if va.max_abs_diff is not None and va.max_abs_diff > 1e-9:
            row.notes.append(f"{name}: stored SI differs from the recomputed one by {va.max_abs_diff:.3g}")
    if not row.variants and not groups and not ivals:
        row.no_matrix = True
        row.notes.append("nothing auditable: no SI, entropy matrix, per-seed values or intervals found")
    return row


def audit_file(path: str | Path) -> AuditRow:
    """Audit one E11 result file; a missing file raises :class:`TLSpecError`, a non-JSON one gets a note.

    >>> audit_file("no/such/file.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: result file 'no/such/file.json' does not exist ...
    """
    path = Path(path)
    if not path.is_file():
        raise TLSpecError(f"result file {str(path)!r} does not exist (or is not a file); "
                          "pass an E11 JSON file.")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise TLSpecError(f"cannot read result file {str(path)!r}: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        row = AuditRow(file=path.name, no_matrix=True)
        row.notes.append(f"not a JSON file ({exc}); nothing audited")
        return row
    return audit_record(doc, path.name)


def _compare_with_paper(rows: list[AuditRow]) -> list[PaperComparison]:
    out = []
    for paper_row, paper_delta in PAPER_TABLE_4.items():
        mapped = [r for r in rows if paper_row in {PAPER_ROW_OF_MODEL.get(m) for m in
                                                   [r.model, *(v.model for v in r.variants.values())]}]
        with_delta = [r for r in mapped if r.delta_recomputed is not None]
        if not with_delta:
            why = (f"{len(mapped)} audited file(s) name this model, none with base and instruct matrices"
                   if mapped else "no audited file holds this model's matrices")
            out.append(PaperComparison(paper_row, paper_delta, mapped[0].file if mapped else None,
                                       None, None, "no matrix", why))
            continue
        r = with_delta[0]
        diff = r.delta_recomputed - paper_delta
        agree = abs(diff) < AGREE_PP
        note = f"{len(with_delta)} files; the first is used" if len(with_delta) > 1 else ""
        if not agree and abs(r.delta_recomputed_abs * 100 - paper_delta) < AGREE_PP:
            note = (f"table value = absolute SI difference x 100 ({r.delta_recomputed_abs:+.4f}), "
                    "not the relative Delta SI of Eq. 2")
        out.append(PaperComparison(paper_row, paper_delta, r.file, r.delta_recomputed, diff,
                                   "agree" if agree else "DIFFERS", note))
    return out


def _fmt(x: float | None, spec: str = ".6f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def _grid(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body])


@dataclass
class AuditReport:
    """Audit rows of several files, and optionally the Table 4 comparison (``.paper``)."""

    rows: list[AuditRow]
    paper: list[PaperComparison] | None = None

    def table(self) -> str:
        """One line per file, then the notes, then the Table 4 comparison (if requested)."""
        body = []
        for r in self.rows:
            b, i = r.variants.get("base", VariantAudit()), r.variants.get("instruct", VariantAudit())
            stored = (f"{r.delta_stored_pct:+.2f}%" if r.delta_stored_pct is not None
                      else f"abs {r.delta_stored_abs:+.4f}" if r.delta_stored_abs is not None else "-")
            body.append([r.file, r.model or "?", _fmt(b.si_stored), _fmt(b.si_recomputed),
                         _fmt(i.si_stored), _fmt(i.si_recomputed), stored,
                         _fmt(r.delta_recomputed, "+.2f"), ",".join(r.flags) or "-"])
        header = ["file", "model", "SI base stored", "recomputed", "SI instruct stored", "recomputed",
                  "dSI stored", "dSI % (Eq.2)", "flags"]
        parts = [_grid(header, body), "", "notes:", *(f"  {r.file}: {n}" for r in self.rows for n in r.notes)]
        if self.paper is not None:
            pbody = [[c.row, f"{c.paper_delta:+.2f}", _fmt(c.delta_recomputed, "+.2f"),
                      _fmt(c.diff_pp, "+.2f"), c.status, c.file or "-", c.note] for c in self.paper]
            pheader = ["paper row", "paper dSI %", "matrices dSI %", "diff pp", "status", "file", "note"]
            parts += ["", f"Table 4 vs stored matrices (agree: |diff| < {AGREE_PP} pp):", _grid(pheader, pbody)]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (non-finite numbers as None)."""
        return _clean({"rows": [r.to_dict() for r in self.rows], "agree_pp": AGREE_PP,
                       "paper_table": None if self.paper is None else [asdict(c) for c in self.paper]})


def audit_files(paths: Iterable[str | Path], *, paper_table: bool = False) -> AuditReport:
    """Audit several files; a missing path raises :class:`TLSpecError` before any is audited.

    >>> audit_files([], paper_table=True).paper[-1].status      # Qwen2: no E11 file anywhere
    'no matrix'
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TLSpecError(f"result file(s) not found: {', '.join(missing)}; pass existing E11 JSON files.")
    rows = [audit_file(p) for p in paths]
    return AuditReport(rows, _compare_with_paper(rows) if paper_table else None)
