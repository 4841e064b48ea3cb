"""Cost of the deconstruct study against the forward passes it needs.

Model: the benchmark checkpoint (``common.MODEL``: Llama-style, 8 layers, d_model 512, GQA 8:2);
texts: Standard-10 + the E06 texts (15); 5 variants x 3 placements (all, hybrid:2, single = one
condition per layer) = 5 x (2 + 8) = 50 conditions. Compared, interleaved, medians:

- ``needed``: bare forwards (no hooks, ``inference_mode``) over the same batches: one clean pass
  plus one over the reference texts for ``static`` (here the texts themselves), plus, per
  condition, the layers it must run: from its first changed layer on (what prefix reuse
  needs where the model can resume mid-way, ``tl_spec.resume.can_start_at_layer``; the full
  model elsewhere). Measured as full forwards and
  scaled by the fraction of layers each condition runs, since a partial forward costs its layers
  (embedding and unembedding counted once per pass, which favours the baseline).
- ``deconstruct``: ``tl_spec.deconstruct`` with the same conditions (``n_resamples=1000``).

Target (issue 8): deconstruct <= 1.1x needed.

    python benchmarks/bench_deconstruct.py [--backend hooked|bridge] [--device cpu|cuda]
                                           [--dtype float32|bfloat16] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import tl_spec
from common import MODEL, default_backend, load, time_interleaved
from tl_spec.experiments.deconstruct import expand_placements
from tl_spec.hooks.variants import VARIANTS
from tl_spec.resume import can_start_at_layer
from tl_spec.prompts import E06_TEXTS, STANDARD_10
from tl_spec.results import atomic_write_text, versions
from tl_spec.tokens import pad_batch, pad_id, tokenize
from tl_spec.zoo.tiny import build_random_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default=default_backend(), choices=("hooked", "bridge"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 repeat, 2 variants")
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args()
    variants = ("uniform", "decoupled") if args.quick else VARIANTS
    repeats = 1 if args.quick else args.repeats
    root = Path(tempfile.mkdtemp(prefix="tl_spec_bench_dec_"))
    model = load(build_random_checkpoint(root / "model", **MODEL), args)
    texts = list(STANDARD_10) + list(E06_TEXTS)
    n_layers = int(model.cfg.n_layers)
    placements = ("all", "hybrid:2", "single")
    conditions = [(v, label, layers) for v in variants
                  for label, layers in expand_placements(placements, n_layers)]
    reuse = can_start_at_layer(model)  # what deconstruct itself decides
    def start(variant: str, layers: list[int]) -> int:
        first = 0 if variant == "decoupled" else min(layers)  # decoupled reads resid_pre 0
        return first if reuse else 0

    # the clean pass, one pass over the reference texts for "static", then each condition
    fraction = 1.0 + ("static" in variants) + sum((n_layers - start(v, layers)) / n_layers
                                                  for v, _, layers in conditions)
    tok = tokenize(model, texts, max_length=128)
    batches = [tok.ids[i:i + 8] for i in range(0, len(texts), 8)]
    padded = [pad_batch(list(b), pad_id=pad_id(model), padding_side="right", device=args.device)
              for b in batches]

    def one_pass() -> None:
        with torch.inference_mode():
            for tokens, _ in padded:
                model(tokens, return_type="logits")

    def run() -> None:
        tl_spec.deconstruct(model, texts, variants=variants, placements=placements,
                            n_resamples=1000, reference_texts=texts)

    times = time_interleaved({"one_pass": one_pass, "deconstruct": run}, args.device,
                             warmup=args.warmup, repeats=repeats)
    med = {k: statistics.median(v["wall"]) for k, v in times.items()}
    needed = med["one_pass"] * fraction
    ratio = med["deconstruct"] / needed
    report = {"backend": args.backend, "device": args.device, "dtype": args.dtype,
              "conditions": len(conditions), "pass_equivalents_needed": fraction,
              "one_pass_s": med["one_pass"], "needed_s": needed,
              "deconstruct_s": med["deconstruct"], "ratio": ratio, "versions": versions()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"bench_deconstruct_{args.backend}.json", json.dumps(report, indent=1))
    print(f"{len(conditions)} conditions, {fraction:.2f} forward-pass equivalents needed "
          f"({'prefix reuse' if reuse else 'full forwards'})")
    print(f"one pass {med['one_pass']:.3f} s -> needed {needed:.2f} s; deconstruct "
          f"{med['deconstruct']:.2f} s = {ratio:.2f}x needed (target <= 1.1x)")


if __name__ == "__main__":
    main()
