"""``tl-spec controlled``: the controlled alignment study on the zoo's twins (parser and runner).

``tl-spec controlled [--archs mha,gqa,swa] [--seeds 1,2,3] [--lengths 128,24]
[--methods pattern,entropy_profile] [--routes tl_spec] [--n-prompts 32] [--json PATH|-]
[--report DIR]``

>>> main(["controlled", "--n-prompts", "16", "--json", "controlled.json"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tl_spec.cli.inputs import check_creatable, check_output, check_text_file, progress
from tl_spec.errors import TLSpecError
from tl_spec.options import SIOptions
from tl_spec.options.controlled import ControlledOptions, ControlledStatsOptions, parse_names

__all__ = ["add_controlled_parser", "run_controlled"]

_SI_FLAGS = ("region", "batch_size", "prepend_bos")


def add_controlled_parser(sub: Any) -> None:
    """Add the ``controlled`` sub-command and its flags (from the options classes)."""
    p = sub.add_parser("controlled")
    p.add_argument("--archs", default="mha,gqa,swa",
                   help="zoo attention types, in the order of the differences (later minus "
                        "earlier) (default: mha,gqa,swa)")
    p.add_argument("--seeds", default="1,2,3", help="twin seeds (default: 1,2,3)")
    p.add_argument("--n-prompts", type=int, default=32,
                   help="held-out zoo documents used as prompts (default: 32)")
    p.add_argument("--prompts", default=None,
                   help="prompt file instead (numbered 'N. text' or one per line)")
    ControlledOptions.add_arguments(p)
    ControlledStatsOptions.add_arguments(p)
    SIOptions.add_arguments(p, only=_SI_FLAGS)
    p.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"),
                   help="TransformerLens backend (default: auto)")
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the result as JSON (atomically) to PATH, or to stdout with -")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write an offline HTML report into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in parse_names(text))
    except ValueError:
        raise TLSpecError(f"--seeds must be comma-separated integers, got {text!r}") from None


def run_controlled(args: argparse.Namespace) -> None:
    """Check every input, load the twins, run the study, print, write JSON and the report."""
    from tl_spec.experiments.controlled import controlled_alignment_study, zoo_prompts
    from tl_spec.zoo.registry import twin_families

    options = ControlledOptions.from_namespace(args)
    stats = ControlledStatsOptions.from_namespace(args)
    si = SIOptions.from_namespace(args)
    check_output(args.json)
    if args.report:
        report = Path(args.report).expanduser()
        if report.is_file():
            raise TLSpecError(f"--report {report}: is a file; give a directory")
        check_creatable(report / "report.html", "--report")
    if args.prompts:
        prompts = check_text_file(args.prompts, "--prompts")
    else:
        if args.n_prompts < 2:
            raise TLSpecError(f"--n-prompts must be at least 2 (the prompt is the bootstrap's "
                              f"unit), got {args.n_prompts}")
        prompts = zoo_prompts(args.n_prompts)
    stats.check_units(len(prompts))
    families = twin_families(parse_names(args.archs), seeds=_seeds(args.seeds),
                             backend=args.backend)
    result = controlled_alignment_study(families, prompts, options=options, stats=stats,
                                        si_options=si, progress=progress(args))
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"families: {args.archs}  seeds: {args.seeds}  prompts: {len(prompts)}", file=out)
    print(result.summary(), file=out)
    if args.json:
        text = result.to_json()
        if args.json == "-":
            sys.stdout.write(text)
        else:
            from tl_spec.fileio import atomic_write_text

            atomic_write_text(args.json, text)
    if args.report:
        from tl_spec.viz.report import write_report

        path = write_report([result], args.report, title="Controlled alignment study")
        print(f"HTML report: {path}", file=out)
