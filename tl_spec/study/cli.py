"""``tl-spec study plan|run|collect FILE``: parse, call :mod:`tl_spec.study`, print.

Wired into ``tl-spec`` by :func:`add_parser` (the sub-command) and :func:`run` (its handler);
``python -m tl_spec.study ...`` runs the same without the main command.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="tl-spec"); sub = parser.add_subparsers(dest="command")
>>> add_parser(sub)
>>> parser.parse_args(["study", "run", "zoo.toml", "--workers", "2"]).workers
2
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``study`` (with ``plan``, ``run``, ``collect``) on an argparse subparsers."""
    st = subparsers.add_parser("study", help="declarative studies over many models: plan, run "
                               "(resumable; local, Dask or Ray), collect")
    sub = st.add_subparsers(dest="study_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", metavar="FILE", help="study file (.toml, or .yaml with PyYAML)")
        p.add_argument("--store", default=None, metavar="DIR",
                       help="result store (default: the file's store = ..., else FILE's "
                            "directory/<name>.store)")

    pl = sub.add_parser("plan", help="expand the study into cells and show what is done")
    common(pl)
    pl.add_argument("--json", default=None, metavar="PATH|-", help="write the plan as JSON")

    rn = sub.add_parser("run", help="compute the cells without a stored result")
    common(rn)
    rn.add_argument("--executor", default="local", choices=("local", "dask", "ray"),
                    help="local: this process (--workers 1) or a process pool; dask: a "
                         "LocalCluster or --scheduler; ray: a local Ray or --scheduler")
    rn.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    rn.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker (default: CPU cores / workers)")
    rn.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="an existing cluster: Dask scheduler (tcp://host:8786) or Ray address")
    rn.add_argument("--gpus-per-task", type=float, default=0.0,
                    help="GPUs each task requests (Dask resource GPU / Ray num_gpus)")
    rn.add_argument("--chunk", type=int, default=None,
                    help="cells per task (default: about eight tasks per worker)")
    rn.add_argument("--max-cells", type=int, default=None,
                    help="stop after this many cells (the rest wait for the next run)")
    rn.add_argument("--retries", type=int, default=None,
                    help="retries of a failing cell (default: the study's retries, else 2)")
    rn.add_argument("--retry-delay", type=float, default=0.5,
                    help="seconds before a retry (times the attempt number)")
    rn.add_argument("--cache-size", type=int, default=2, help="models a worker keeps loaded")
    rn.add_argument("--quiet", action="store_true", help="no progress lines")

    co = sub.add_parser("collect", help="one tidy table (CSV, Parquet), summaries and a report")
    common(co)
    co.add_argument("--out", default=None, metavar="DIR",
                    help="output directory (default: <store>/collected)")
    co.add_argument("--no-report", action="store_true", help="tables only, no report.html")
    co.add_argument("--report-cells", type=int, default=50,
                    help="per-cell result sections in the report (default 50)")


def _study(args: argparse.Namespace) -> Any:
    from tl_spec.study.spec import load_study

    return load_study(args.file).with_store(args.store)


def _plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tl_spec.study.plan import plan

    if args.json not in (None, "-") and Path(args.json).is_dir():
        raise TLSpecError(f"--json {args.json}: is a directory; give a file path")
    p = plan(_study(args))
    if args.json == "-":
        sys.stdout.write(p.to_json())
        print(p.table(), file=sys.stderr)
        return 0
    print(p.table())
    if args.json:
        from tl_spec.fileio import atomic_write_text

        atomic_write_text(args.json, p.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _check_run_flags(args: argparse.Namespace) -> None:
    """Refuse impossible ``study run`` numbers before the study file is even read."""
    at_least = {"--workers": (args.workers, 1), "--threads": (args.threads, 1),
                "--chunk": (args.chunk, 1), "--max-cells": (args.max_cells, 1),
                "--retries": (args.retries, 0), "--cache-size": (args.cache_size, 1),
                "--retry-delay": (args.retry_delay, 0), "--gpus-per-task": (args.gpus_per_task, 0)}
    for flag, (value, low) in at_least.items():
        if value is not None and not value >= low:  # also refuses NaN
            raise TLSpecError(f"{flag} must be at least {low}, got {value}")


def _run(args: argparse.Namespace) -> int:
    from tl_spec.study.runner import print_progress, run_study

    _check_run_flags(args)
    study = _study(args)
    summary = run_study(study, executor=args.executor, workers=args.workers, threads=args.threads,
                        address=args.scheduler, gpus_per_task=args.gpus_per_task,
                        chunk=args.chunk, max_cells=args.max_cells, retries=args.retries,
                        retry_delay=args.retry_delay,
                        cache_size=args.cache_size,
                        on_progress=None if args.quiet else print_progress)
    print(summary.text())
    if summary.failed:
        print(f"{len(summary.failed)} cells failed (recorded in the store with their errors); "
              "fix the cause and run again to retry only those", file=sys.stderr)
        return 1
    return 0


def _collect(args: argparse.Namespace) -> int:
    from tl_spec.study.collect import collect

    result = collect(_study(args), out=args.out, report=not args.no_report,
                     report_cells=args.report_cells)
    print(result.text())
    return 0


def run(args: argparse.Namespace) -> int:
    """Handle ``tl-spec study ...``; bad input raises :class:`TLSpecError` (exit status 2)."""
    handlers = {"plan": _plan, "run": _run, "collect": _collect}
    return handlers[args.study_command](args)


def main(argv: list[str] | None = None) -> int:
    """``python -m tl_spec.study ...``: the ``study`` sub-command on its own."""
    import warnings

    parser = argparse.ArgumentParser(prog="python -m tl_spec")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return run(args)
    except TLSpecError as exc:
        print(f"tl-spec study: error: {exc}", file=sys.stderr)
        return 2
