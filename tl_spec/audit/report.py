"""The claims audit as a result: :func:`claims_audit` and :class:`ClaimsAudit`.

:func:`claims_audit` reads every file (never raising on content: a file that is no paper result
is listed as such), runs each family's recomputations, the paper-table comparison and the claims
of ``claims.yaml``, and returns a :class:`ClaimsAudit` that follows the result protocol (one-line
repr, ``summary()``, ``headline()``, ``to_frame()``, ``_repr_html_``, JSON round trip).

>>> a = claims_audit([], paper_table=False)
>>> a.headline()["files"], a.n_auditable
(0, 0)
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tl_spec.audit.claims import claim_checks, load_claims
from tl_spec.audit.common import VERDICTS, Check, Flag, PaperFile, load_paper_file
from tl_spec.audit.e04 import audit_e04
from tl_spec.audit.e06 import audit_e06
from tl_spec.audit.e08 import audit_e08
from tl_spec.audit.e11 import AuditRow, _compare_with_paper, _grid, audit_record
from tl_spec.audit.e21 import audit_e21, rho_definitions
from tl_spec.audit.eiso import audit_eiso
from tl_spec.audit.tables import table_checks
from tl_spec.errors import TLSpecError
from tl_spec.records import Result, versions

__all__ = ["ClaimsAudit", "claims_audit"]


@dataclass(repr=False)
class ClaimsAudit(Result):
    """The audit of a set of the paper's result files: per file, per table row, per claim."""

    kind: ClassVar[str] = "claims_audit"

    files: list[dict[str, Any]]  # {name, family, status}
    checks: list[dict[str, Any]]  # Check.to_dict(): source, item, published, artifact, verdict
    flags: list[dict[str, Any]]  # Flag.to_dict(): kind, file, message
    rows: list[dict[str, Any]] = field(default_factory=list)  # E11 rows (AuditRow.to_dict())
    paper_table: list[dict[str, Any]] | None = None  # Table 4 comparison (legacy layout)
    rho_definitions: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_auditable(self) -> int:
        """How many files were paper results with something to audit."""
        return sum(f["status"] == "audited" for f in self.files)

    def verdicts(self) -> Counter:
        """How many checks got each verdict."""
        return Counter(c["verdict"] for c in self.checks)

    def headline(self) -> dict[str, Any]:
        """Files, auditable files, checks by verdict, flags."""
        v = self.verdicts()
        return {"files": len(self.files), "auditable": self.n_auditable,
                **{k: v.get(k, 0) for k in VERDICTS}, "flags": len(self.flags)}

    def model_names(self) -> list[str]:
        """The result families audited (E04, E11, ...), as the 'models' of this result."""
        fams = sorted({f["family"].upper().replace("EISO", "E-ISO") for f in self.files
                       if f.get("family") and f["status"] == "audited"})
        return fams or ["no paper result"]

    def tags(self) -> list[str]:
        """``claims`` / ``tables`` when those parts were run."""
        return [t for t, on in (("claims", self.settings.get("claims")),
                                ("tables", self.settings.get("paper_table"))) if on]

    def check_objects(self) -> list[Check]:
        """The checks as :class:`~tl_spec.audit.common.Check` objects."""
        return [Check(**{k: v for k, v in c.items() if k != "diff"}) for c in self.checks]

    def summary(self) -> str:
        """The printed audit: files, then checks grouped by source, then flags."""
        lines = [f"ClaimsAudit: {len(self.files)} files, {self.n_auditable} auditable; "
                 + ", ".join(f"{k} {n}" for k, n in self.headline().items()
                             if k in VERDICTS), "", "files:"]
        lines += [f"  {f['name']}: {f['family'] or '-'}: {f['status']}" for f in self.files]
        groups: dict[str, list[dict[str, Any]]] = {}
        for c in self.checks:
            groups.setdefault(c["source"], []).append(c)
        for source, cs in groups.items():
            lines += ["", f"{source}:"]
            body = [[c["item"], c["published_text"] or "-",
                     "-" if c["artifact"] is None else f"{c['artifact']:.6g}", c["verdict"],
                     "-" if c["diff"] is None else f"{c['diff']:+.4g}"] for c in cs]
            lines += ["  " + x for x in _grid(["item", "published", "artifacts", "verdict", "diff"],
                                              body).splitlines()]
            for c in cs:
                detail = c["artifact_text"] + (f" -- cause: {c['cause']}" if c["cause"] else "")
                lines.append(f"    {c['item']}: {detail}")
        if self.rho_definitions:
            lines += ["", "rho definitions found:"]
            lines += [f"  {k}: {len(v)} value(s), e.g. {v[0]}" for k, v in self.rho_definitions.items()]
        lines += ["", f"flags ({len(self.flags)}):"]
        lines += [f"  [{f['kind']}] {f['file']}: {f['message']}" for f in self.flags]
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """One row per check: source, item, published, artifact, diff, verdict, cause, files."""
        import pandas as pd

        cols = ["source", "item", "published", "published_text", "artifact", "artifact_text",
                "diff", "verdict", "cause", "files"]
        return pd.DataFrame([{**{k: c.get(k) for k in cols}, "files": ", ".join(c["files"])}
                             for c in self.checks], columns=cols)


def _safe(stage: str, fn: Callable[[], Any], empty: Any) -> tuple[Any, list[Flag]]:
    """Run one stage; content this audit did not foresee becomes a flag, never a traceback."""
    try:
        return fn(), []
    except Exception as exc:  # noqa: BLE001 - the audit reports what it cannot read
        return empty, [Flag("audit_error", stage, f"this part of the audit was skipped: "
                                                  f"{type(exc).__name__}: {exc}")]


def _family_results(files: list[PaperFile]) -> tuple[list[Check], list[Flag]]:
    checks: list[Check] = []
    flags: list[Flag] = []
    for fn in (audit_e04, audit_e06, audit_e21, audit_eiso):
        (c, fl), err = _safe(fn.__name__, lambda fn=fn: fn(files), ([], []))
        checks += c
        flags += fl + err
    fl, err = _safe("audit_e08", lambda: audit_e08(files), [])
    return checks, flags + fl + err


def _e11_flags(rows: list[AuditRow]) -> list[Flag]:
    out = []
    for r in rows:
        if r.identical_seeds:
            out.append(Flag("identical_seeds", r.file, next(
                (n for n in r.notes if n.startswith("per-seed SI without noise")), "identical")))
        if r.zero_width_intervals:
            out.append(Flag("zero_width_intervals", r.file,
                            next((n for n in r.notes if "low == high" in n), "")))
    return out


def claims_audit(paths: Iterable[str | Path], *, claims: str | Path | dict | None = None,
                 paper_table: bool = True) -> ClaimsAudit:
    """Audit result files of the paper's reproduction package against its tables and claims.

    Args:
        paths: result files (JSON); a missing path raises :class:`TLSpecError` before any is
            read, a file that is no paper result is listed as such.
        claims: the package's ``claims.yaml`` (optional; or its parsed dict, see
            :func:`~tl_spec.audit.claims.load_claims`): one or more checks per claim.
        paper_table: compare with the paper's Tables 4, 5, 7, 8, 9 and 11.

    Returns:
        The :class:`ClaimsAudit`.

    >>> claims_audit(["missing.json"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: result file(s) not found: missing.json; ...
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TLSpecError(f"result file(s) not found: {', '.join(missing)}; pass existing result "
                          "files of the paper's reproduction package.")
    parsed = claims if isinstance(claims, dict) or claims is None else load_claims(claims)
    files = [load_paper_file(p) for p in paths]
    rows, flags = [], []
    for f in files:
        if f.family == "e11":
            row, err = _safe(f.name, lambda f=f: audit_record(f.doc, f.name), None)
            rows += [row] if row is not None else []
            flags += err
    checks, fflags = _family_results(files)
    flags = _e11_flags(rows) + flags + fflags
    table_rows: list[Check] = []
    if paper_table:
        (table_rows, tflags), err = _safe("paper tables", lambda: table_checks(files, rows), ([], []))
        flags += tflags + err
    claim_rows: list[Check] = []
    if parsed is not None:
        (claim_rows, cflags), err = _safe("claims", lambda: claim_checks(parsed, files, rows),
                                          ([], []))
        flags += cflags + err
    (defs, dflags), err = _safe("rho definitions", lambda: rho_definitions(files), ({}, []))
    flags += dflags + err
    with_content = {n for part in (checks, table_rows, claim_rows) for c in part for n in c.files}
    with_content |= {r.file for r in rows if not r.no_matrix or r.identical_seeds
                     or r.zero_width_intervals or r.variants}
    with_content |= {fl.file for fl in flags} & {f.name for f in files}
    listing = [{"name": f.name, "family": f.family,
                "status": f.problem or ("audited" if f.name in with_content
                                        else "not a paper result: nothing auditable found")}
               for f in files]
    return ClaimsAudit(
        files=listing, checks=[c.to_dict() for c in table_rows + claim_rows + checks],
        flags=[f.to_dict() for f in flags], rows=[r.to_dict() for r in rows],
        paper_table=[vars(c) for c in _compare_with_paper(rows)] if paper_table else None,
        rho_definitions=defs,
        settings={"files": [p.name for p in paths],
                  "claims": None if claims is None else "(parsed)" if isinstance(claims, dict)
                  else str(claims),
                  "paper_table": bool(paper_table)},
        provenance={"versions": versions(), "argv": list(sys.argv),
                    "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
