"""``tl-spec length MODEL``: SI at several prompt lengths, with where sliding windows bind.

Flags come from :class:`~tl_spec.options.LengthOptions` (``--lengths 16,24,...``, ``--no-reuse``),
:class:`~tl_spec.options.SIOptions` and :class:`~tl_spec.options.StatsOptions`; ``--json`` writes
the result, ``--report DIR`` an offline HTML report with its chart. Everything is checked before
the model loads.

>>> from tl_spec.cli import main
>>> main(["length", "base-swa", "--lengths", "16,32,64", "--method", "pattern"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tl_spec.cli.inputs import add_json_arg, add_model_args, add_prompt_args, add_quiet_arg
from tl_spec.cli.inputs import check_creatable, check_models, check_output, check_text_file
from tl_spec.cli.inputs import load_resolved, progress
from tl_spec.options import LengthOptions, SIOptions, StatsOptions

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``length`` on an argparse subparsers object; returns its parser.

    >>> p = argparse.ArgumentParser(); _ = add_parser(p.add_subparsers(dest="command"))
    >>> p.parse_args(["length", "base-gqa", "--lengths", "32,16"]).lengths
    (32, 16)
    """
    p = subparsers.add_parser("length", help="SI at several prompt lengths; marks where "
                              "sliding windows start to bind")
    add_model_args(p)
    LengthOptions.add_arguments(p)
    SIOptions.add_arguments(p, exclude=("stat_dtype", "aggregate"))
    StatsOptions.add_arguments(p)
    add_prompt_args(p)
    add_quiet_arg(p)
    add_json_arg(p)
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write DIR/report.html with the chart and table (default: not written)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``tl-spec length``: check every input, measure, print, write ``--json``/``--report``.

    >>> run(args)  # doctest: +SKIP
    0
    """
    from tl_spec.experiments.length import length_profile
    from tl_spec.fileio import atomic_write_text
    from tl_spec.prompts import STANDARD_10_SET, load_prompts

    options = LengthOptions.from_namespace(args)
    si_options = SIOptions.from_namespace(args)
    stats = StatsOptions.from_namespace(args)
    check_output(args.json)
    if args.report:
        check_output(str(Path(args.report) / "report.html"), "--report")
        check_creatable(Path(args.report), args.report)
    if args.prompts:
        check_text_file(args.prompts, "--prompts")
        pset = load_prompts(args.prompts, md5=args.prompts_md5, sha256=args.prompts_sha256)
    else:
        pset = STANDARD_10_SET
    stats.check_units(len(pset))
    model = load_resolved(check_models(args, [args.model])[0], args)
    result = length_profile(model, pset, options=options, si_options=si_options, stats=stats,
                            progress=progress(args))
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"model: {args.model}  prompts: {pset.name} ({len(pset)})", file=out)
    print(result.summary(), file=out)
    if args.json == "-":
        sys.stdout.write(result.to_json())
    elif args.json:
        Path(args.json).expanduser().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, result.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        from tl_spec.viz.report import write_report

        path = write_report([result], args.report, model=model)
        print(f"wrote {path}", file=sys.stderr)
    return 0
