"""``tl-spec audit FILES... [--claims claims.yaml] [--paper-table] [--json PATH|-]``.

The text audit goes to stdout (to stderr with ``--json -``). Exit status: 2 for bad arguments (a
missing file, an unreadable claims file; nothing is audited), 1 when no file held anything
auditable, else 0. No file content makes it print a traceback.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="tl-spec")
>>> add_audit_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["audit", "a.json", "--claims", "claims.yaml"])
>>> args.claims, args.paper_table, args.func is run_audit
('claims.yaml', False, True)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["add_audit_parser", "run_audit"]


def add_audit_parser(subparsers: Any) -> None:
    """Register the ``audit`` sub-command on an argparse subparsers object.

    >>> parser = argparse.ArgumentParser(prog="tl-spec")
    >>> add_audit_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["audit", "x.json", "--paper-table"]).paper_table
    True
    """
    p = subparsers.add_parser(
        "audit", help="audit the paper's result files: recompute, compare with its tables and claims")
    p.add_argument("files", nargs="+", metavar="FILE.json")
    p.add_argument("--claims", default=None, metavar="claims.yaml",
                   help="the package's claims.yaml: check each claim against its result files")
    p.add_argument("--paper-table", action="store_true",
                   help="compare with the paper's Tables 4, 5, 7, 8, 9 and 11, row by row")
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the audit (a claims_audit result) as JSON, atomically, to PATH or "
                        "to stdout with -")
    p.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    """Run the ``audit`` sub-command (see the module docstring for the exit status).

    Returns:
        The exit status.

    >>> run_audit(argparse.Namespace(files=["missing.json"], claims=None, paper_table=False,
    ...                              json=None))
    2
    """
    from tl_spec.audit.e11 import AuditReport
    from tl_spec.audit.report import claims_audit

    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        if args.json not in (None, "-") and Path(args.json).is_dir():
            raise TLSpecError(f"--json {args.json}: is a directory; give a file path")
        audit = claims_audit(args.files, claims=getattr(args, "claims", None),
                             paper_table=args.paper_table)
    except TLSpecError as exc:
        print(f"tl-spec audit: error: {exc}", file=sys.stderr)
        return 2
    if audit.rows:
        legacy = AuditReport([_row(r) for r in audit.rows])
        print("E11 files (SI recomputed from the stored matrices):", file=out)
        print(legacy.table(), file=out)
        print("", file=out)
    print(audit.summary(), file=out)
    status = 0
    if audit.n_auditable == 0:
        print("tl-spec audit: nothing auditable in " + ", ".join(f["name"] for f in audit.files)
              + ": not a paper result (no E04/E06/E08/E11/E21/E22/E-ISO content found)",
              file=sys.stderr)
        status = 1
    if args.json == "-":
        sys.stdout.write(audit.to_json())
    elif args.json:
        audit.to_json(args.json)  # validated against the result schema, written atomically
        print(f"wrote {args.json}", file=sys.stderr)
    return status


def _row(d: dict[str, Any]) -> Any:
    from tl_spec.audit.e11 import AuditRow, VariantAudit

    fields = {k: v for k, v in d.items() if k != "flags"}
    fields["variants"] = {k: VariantAudit(**v) for k, v in d.get("variants", {}).items()}
    return AuditRow(**fields)
