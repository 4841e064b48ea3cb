"""ΔSI cost: delta_si with 10,000 resamples vs two SI runs on the same benchmark model.

Target (issue: ΔSI): at most 1.2x two ``specialization_index`` runs, because the bootstrap and
permutation tests work on per-prompt statistics and never re-run a model. The tuned twin is the
benchmark model with heads 1-3 of layers 0 and 2 given head 0's query/key weights (MHA variant,
so the copy is possible). Conditions are interleaved; medians of ``--repeats`` runs.

    python benchmarks/bench_delta.py [--repeats 5] [--method pattern] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import tl_spec
from tl_spec.prompts import STANDARD_10
from tl_spec.results import atomic_write_text, versions
from tl_spec.zoo.tiny import build_random_checkpoint, build_twin_with_shared_heads

MODEL = dict(arch="llama-mha", num_hidden_layers=8, hidden_size=512, intermediate_size=1408,
             num_attention_heads=8, max_position_embeddings=4096)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--method", default="pattern",
                   choices=("pattern", "entropy_profile", "normalized_entropy"))
    p.add_argument("--n-resamples", type=int, default=10_000)
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tl_spec_bench_delta_"))
    base_dir = build_random_checkpoint(root / "base", **MODEL)
    tuned_dir = build_twin_with_shared_heads(base_dir, root / "tuned", layers=[0, 2],
                                             heads=[1, 2, 3])
    base, tuned = tl_spec.load_model(base_dir), tl_spec.load_model(tuned_dir)

    def two_si() -> None:
        tl_spec.specialization_index(base, STANDARD_10, method=args.method)
        tl_spec.specialization_index(tuned, STANDARD_10, method=args.method)

    def delta() -> None:
        tl_spec.delta_si(base, tuned, STANDARD_10, method=args.method,
                         n_resamples=args.n_resamples)

    conds = {"two_si": two_si, "delta_si": delta}
    for f in conds.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in conds}
    for _ in range(args.repeats):
        for name, f in conds.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["delta_si"] / med["two_si"]
    table = "\n".join([
        "| condition | median s | / two SI runs |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.4f} | {v / med['two_si']:.2f}x |" for k, v in med.items()),
        "",
        f"delta_si / two SI runs = {ratio:.2f}x (target <= 1.2x: {'OK' if ratio <= 1.2 else 'MISSED'});"
        f" method {args.method}, {args.n_resamples} resamples, {args.repeats} repeats, "
        f"backend {tl_spec.describe(base).backend}, 8 layers x 8 heads, d_model 512",
    ])
    print(table)
    out = Path(args.out)
    atomic_write_text(out / "bench_delta.md", table + "\n")
    atomic_write_text(out / "bench_delta.json", json.dumps(
        {"versions": versions(), "model": MODEL, "method": args.method,
         "n_resamples": args.n_resamples, "times": times, "median": med, "ratio": ratio},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
