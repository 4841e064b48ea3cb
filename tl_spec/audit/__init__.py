"""Audit the paper's reproduction package: recompute what its files allow, compare with its
tables and claims, flag what the material itself gets wrong.

``tl-spec audit FILES... [--claims claims.yaml] [--paper-table]`` reads every result kind of the
package (E04, E06, E08, E11/E11T, E21/E22, E-ISO) and prints, per claim and per paper table row
(Tables 4, 5, 7, 8, 9, 11), the published number, what the artifacts give and a verdict:
reproduced / differs (by how much, likely cause) / no artifact. The Python entry point is
:func:`claims_audit`; the E11-only audit of earlier versions (:func:`audit_files`,
:class:`AuditReport`) is unchanged.

Modules: :mod:`~tl_spec.audit.common` (checks, flags, recomputations), one module per result
family (:mod:`~tl_spec.audit.e04`, :mod:`~tl_spec.audit.e06`, :mod:`~tl_spec.audit.e08`,
:mod:`~tl_spec.audit.e11`, :mod:`~tl_spec.audit.indra`, :mod:`~tl_spec.audit.e21`,
:mod:`~tl_spec.audit.eiso`), :mod:`~tl_spec.audit.tables`, :mod:`~tl_spec.audit.claims`,
:mod:`~tl_spec.audit.report` (the result) and :mod:`~tl_spec.audit.cli`. The package sits
below :mod:`tl_spec.results` (it needs only the result protocol and the metrics), so
``tl_spec.load_result`` knows the ``claims_audit`` kind like any other.

>>> audit = claims_audit([], paper_table=True)   # no files: every table row lacks an artifact
>>> audit.headline()["files"], audit.headline()["no artifact"] > 20
(0, True)
"""

from __future__ import annotations

from tl_spec.audit.claims import load_claims
from tl_spec.audit.cli import add_audit_parser, run_audit
from tl_spec.audit.common import Check, Flag, ppl_slope, rho_eff, seed_ratios
from tl_spec.audit.e11 import (
    AGREE_PP,
    PAPER_ROW_OF_MODEL,
    PAPER_TABLE_4,
    AuditReport,
    AuditRow,
    PaperComparison,
    VariantAudit,
    audit_file,
    audit_files,
    audit_record,
)
from tl_spec.audit.report import ClaimsAudit, claims_audit

__all__ = [
    "AGREE_PP",
    "PAPER_ROW_OF_MODEL",
    "PAPER_TABLE_4",
    "AuditReport",
    "AuditRow",
    "Check",
    "ClaimsAudit",
    "Flag",
    "PaperComparison",
    "VariantAudit",
    "add_audit_parser",
    "audit_file",
    "audit_files",
    "audit_record",
    "claims_audit",
    "load_claims",
    "ppl_slope",
    "rho_eff",
    "run_audit",
    "seed_ratios",
]
