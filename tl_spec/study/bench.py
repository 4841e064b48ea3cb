"""Benchmark: how close a study of N independent cells comes to (sum of cell times) / workers.

``python -m tl_spec.study.bench --workers 2 --seeds 12`` writes a study of E11-T sweeps (one
noise seed per cell) over the zoo's three base models into a temporary directory, runs it on
the chosen executor, and reports the wall time against the ideal: the sum of the cells' own
times (measured inside the workers) divided by the workers, plus each worker's start-up and
model loads.

>>> figures = measure(workers=2, seeds=4)     # doctest: +SKIP
>>> figures["ratio_net"] <= 1.1               # doctest: +SKIP
True
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["figures", "main", "measure"]

MODELS = ("base-gqa", "base-mha", "base-swa")


def study_text(seeds: int, models: tuple[str, ...] = MODELS) -> str:
    """The benchmark study: one sweep cell per model and seed (all independent)."""
    listed = ", ".join(f'"zoo:{m}"' for m in models)
    return (f'name = "bench"\nseeds = {list(range(1, seeds + 1))}\nmodels = [{listed}]\n\n'
            "[experiments.sweep]\nsigmas = [0, 0.01, 0.02, 0.05, 0.1, 0.2]\n")


def figures(summary: Any) -> dict[str, Any]:
    """Wall time against the ideal, from a :class:`~tl_spec.study.runner.RunSummary`."""
    w = summary.workers
    ideal = summary.cell_seconds / w
    overhead = {name: (v.get("first_start", summary.started) - summary.started) + v["load_seconds"]
                for name, v in summary.per_worker.items()}
    worst = max(overhead.values(), default=0.0)
    return {
        "executor": summary.executor, "workers": w, "cells": len(summary.done),
        "wall_s": round(summary.wall_seconds, 3),
        "teardown_s": round(summary.teardown_seconds, 3),
        "sum_cell_s": round(summary.cell_seconds, 3),
        "ideal_s": round(ideal, 3),
        "startup_and_loads_s": {k: round(v, 3) for k, v in overhead.items()},
        "bound_s": round(1.1 * ideal + worst, 3),
        "ratio_raw": round(summary.wall_seconds / ideal, 4) if ideal else None,
        "ratio_net": round((summary.wall_seconds - worst) / ideal, 4) if ideal else None,
        "within_bound": summary.wall_seconds <= 1.1 * ideal + worst,
        "per_worker_cells": {k: v["cells"] for k, v in summary.per_worker.items()},
        "per_worker_cell_s": {k: round(v["cell_seconds"], 3) for k, v in
                              summary.per_worker.items()},
        "per_worker_span_s": {k: round(v.get("last_end", 0) - v.get("first_start", 0), 3)
                              for k, v in summary.per_worker.items()},
    }


def measure(*, workers: int = 2, seeds: int = 12, executor: str = "local",
            threads: int | None = 1, root: str | None = None) -> dict[str, Any]:
    """Write the benchmark study, run it once on a fresh store, and return :func:`figures`."""
    from tl_spec.study.runner import run_study
    from tl_spec.study.spec import load_study

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(study_text(seeds), encoding="utf-8")
        summary = run_study(load_study(path), executor=executor, workers=workers,
                            threads=threads)
        if summary.failed:
            raise RuntimeError(f"benchmark cells failed: {summary.failed}")
        return figures(summary)


def main(argv: list[str] | None = None) -> int:
    """Command line: run :func:`measure` and print (or write) the figures as JSON."""
    p = argparse.ArgumentParser(prog="python -m tl_spec.study.bench", description=__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=12, help="cells per model (3 models)")
    p.add_argument("--executor", default="local", choices=("local", "dask"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    runs = [measure(workers=args.workers, seeds=args.seeds, executor=args.executor,
                    threads=args.threads) for _ in range(args.repeats)]
    text = json.dumps(runs if len(runs) > 1 else runs[0], indent=1)
    print(text)
    if args.json:
        from tl_spec.fileio import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
