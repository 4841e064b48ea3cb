"""Benchmark tl_spec's head stability and head importance against the forward passes they need.

Models: five random-init copies (seeds 0-4) of the benchmark checkpoint (``tl_spec.zoo.tiny``,
GQA 8:2, d_model 512, 8 layers; random init is enough for timing). Prompts: the stability
study's default, 32 held-out documents of the zoo corpus (``max_length`` 128, so most are
truncated to full 128-token rows); importance texts: the next 16 documents. Compared:

1. ``head_stability(models, prompts, measure=m, null=0, resid=False, n_resamples=100)`` for
   ``m`` in pattern / output vs the *floor*: the k = 5 bare forward passes (no hooks,
   ``inference_mode``) over exactly the batches head_stability feeds each model. The prompt-block
   bootstrap is timed inside each run and reported on its own (``- bootstrap`` column), and once
   more alone at ``--full-resamples`` (default 200) on the pooled statistics of the last run.
2. ``head_importance(model, texts, ablations=("mean",))`` (all heads of a layer in one forward
   call, the batch repeated once per head) vs the naive route: one clean pass for the means and
   the clean loss, then one full pass over the texts per head with a hook mean-ablating only that
   head. The naive per-head pass is timed on a subset of heads (``--naive-heads``) and scaled to
   all heads; its loss increases are asserted equal to head_importance's (1e-5 nats in float32).
   ``head_importance(heads_per_pass=1)`` (one head per forward call, inside tl_spec) is shown too.
3. Memory, for context (common.py has no peak-memory helper): the float64 per-block sums each
   measure pools (from the engine), and each condition's peak RSS over its start, measured in
   this process on its first (warm-up) call (Linux ``clear_refs``; CUDA:
   ``max_memory_allocated``).

Conditions are interleaved (A B C ... A B C ...) after warm-up rounds; medians are reported.
Results go to ``--out``/bench_stability.json and bench_stability.md.

    python benchmarks/bench_stability.py [--device cpu|cuda] [--dtype float32|bfloat16] [--quick]

``--bounded``: peak RSS and time of ``head_stability(measure="output")`` by CKA estimator
(exact / minibatch), each condition alone in a fresh subprocess (``ru_maxrss``), on random-init
HookedTransformers of a Pythia-160M-like shape cut to 4 layers (d_model 768, 12 heads of 64,
d_mlp 3072, rotary, parallel attention + MLP; vocabulary cut to 4096 so the weights stay
small), 32 random-token prompts of 128 tokens (``--n-tokens``), 16 blocks, 2 null models, 200
resamples; one JSON line per condition (time, CPU time, peak RSS, load average) is appended to
``--out``/bench_stability_bounded.jsonl:

    python benchmarks/bench_stability.py --bounded [--models 2 4 6 10] [--estimators minibatch]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import tl_spec
import tl_spec.experiments.stability as stability_mod
from tl_spec.experiments.importance import token_losses
from tl_spec.experiments.stability import PROFILES
from tl_spec.corpus import heldout_texts
from tl_spec.models import backend_name
from tl_spec.tokens import batches, pad_id, tokenize
from tl_spec.zoo.tiny import build_random_checkpoint

from common import MODEL, default_backend, load, setup_line, sync, time_interleaved  # noqa: E402

N_MODELS = 5
MEASURES = ("pattern", "output")
BATCH_SIZE, MAX_LENGTH = 8, 128  # head_stability's and head_importance's defaults
QUICK_MODEL = dict(MODEL, num_hidden_layers=2)
SMALL_RESAMPLES = 100  # head_stability's minimum


# ---- the floor and the naive importance route ----------------------------------------------------

def stability_batches(models, tokenized, device):
    """The (tokens, model mask) pairs head_stability feeds every model (same plan and padding)."""
    return [(tokens, torch.ones_like(mask))
            for _, tokens, mask in batches(tokenized, batch_size=BATCH_SIZE,
                                           pad_id=pad_id(models[0]), device=device)]


def floor(models, prepared) -> None:
    """k bare forward passes per batch: what head_stability cannot avoid."""
    with torch.inference_mode():
        for tokens, model_mask in prepared:
            for model in models:
                model(tokens, attention_mask=model_mask, return_type=None)


def naive_clean(model, plan) -> tuple[dict[int, torch.Tensor], float, float]:
    """One clean pass: every head's mean z over real tokens, clean loss total and token count."""
    n_layers = int(model.cfg.n_layers)
    z_sum: dict[int, torch.Tensor] = {}
    count, total, n = 0.0, 0.0, 0.0
    current: dict[str, torch.Tensor] = {}

    def collect(layer):
        def hook(z, *, hook=None):
            valid = current["mask"].to(z.device, torch.float64)
            z_sum[layer] = z_sum.get(layer, 0) + torch.einsum("bp,bphd->hd", valid,
                                                              z.to(torch.float64))
        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", collect(layer)) for layer in range(n_layers)]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        for tokens, mask in plan:
            current["mask"] = mask
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
            t, k = token_losses(logits, tokens, mask)
            total, n, count = total + float(t.sum()), n + float(k.sum()), count + float(mask.sum())
    return {layer: s / count for layer, s in z_sum.items()}, total, n


def naive_head(model, plan, means, layer: int, head: int) -> float:
    """One full pass over the texts with only (layer, head) mean-ablated: its loss total."""
    def ablate(z, *, hook=None):
        z = z.clone()
        z[:, :, head] = means[layer][head].to(z.dtype)
        return z

    total = 0.0
    with torch.inference_mode(), model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]):
        for tokens, mask in plan:
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
            total += float(token_losses(logits, tokens, mask)[0].sum())
    return total


# ---- memory (context only) -----------------------------------------------------------------------

def _proc_kib(field: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def peak_delta_mib(fn, device: str) -> float | None:
    """Peak memory of one call of ``fn`` over the memory in use when it starts (MiB)."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    rss0 = _proc_kib("VmRSS")
    fn()
    hwm = _proc_kib("VmHWM")
    return None if rss0 is None or hwm is None else max(hwm - rss0, 0) / 1024


def engine_mib(result) -> float:
    """Size of the float64 per-block sums a freshly computed StabilityResult pooled."""
    stats = result._engine.stats
    arrays = [*stats.sums.values(), *stats.counts.values(), *(stats.cross or {}).values(),
              *(stats.totals or {}).values()]
    return sum(a.nbytes for a in arrays) / 2**20


# ---- main ----------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--backend", choices=("hooked", "bridge"), default=default_backend())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--n-blocks", type=int, default=16)
    p.add_argument("--n-texts", type=int, default=16)
    p.add_argument("--naive-heads", type=int, default=4,
                   help="heads timed one full pass each (scaled to all heads)")
    p.add_argument("--full-resamples", type=int, default=200,
                   help="resamples of the separately timed bootstrap (head_stability's default "
                        "is 1000; the time grows linearly)")
    p.add_argument("--quick", action="store_true",
                   help="2 layers, 16 prompts in 4 blocks, 8 texts, 2 naive heads, 100 "
                        "resamples for the separate bootstrap, 1 repeat (checks the script)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.warmup = 1, 1
        args.n_prompts, args.n_blocks = min(args.n_prompts, 16), min(args.n_blocks, 4)
        args.n_texts, args.naive_heads = min(args.n_texts, 8), min(args.naive_heads, 2)
        args.full_resamples = min(args.full_resamples, 100)
    return args


def markdown(res: dict) -> str:
    t = res["timing"]
    fl, cfl = t["floor"]["median_s"], t["floor"]["cpu_median_s"]
    rows = [f"Head stability, {res['n_models']} models ({res['forwards']['floor']} forwards), "
            f"null=0, resid=False, n_resamples={res['n_resamples']}:", "",
            "| condition | median s | min s | / floor | CPU-time / floor | bootstrap s "
            "| - bootstrap / floor | pooled sums MiB | peak MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("floor",) + tuple(f"stability_{m}" for m in MEASURES):
        v, mem = t[name], res["memory"]["peak_delta_mib"].get(name)
        boot = res["bootstrap_s"].get(name)
        rest = "| | |" if boot is None else f"| {boot:.3f} | {(v['median_s'] - boot) / fl:.2f}x |"
        pooled = res["memory"]["pooled_sums_mib"].get(name)
        rows.append(f"| {name} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['median_s'] / fl:.2f}x "
                    f"| {v['cpu_median_s'] / cfl:.2f}x {rest} "
                    f"{'' if pooled is None else f'{pooled:.1f}'} | "
                    f"{'' if mem is None else f'{mem:.0f}'} |")
    rows.append("")
    for m in MEASURES:
        b = res["bootstrap_full"][m]
        rows.append(f"bootstrap alone, {m}, n_resamples={b['n_resamples']}: {b['s']:.3f} s "
                    f"({b['s'] / fl:.2f}x floor; {b['intervals']} intervals)")
    imp = res["importance"]
    ti, tn, th = (t["importance"]["median_s"], t["naive_clean"]["median_s"],
                  t["naive_heads"]["median_s"] / imp["naive_heads"])
    naive = tn + th * imp["n_heads_total"]
    rows += ["", f"Head importance (mean ablation, {imp['n_heads_total']} heads, "
             f"{imp['n_texts']} texts):", "",
             "| route | median s | / head_importance | peak MiB |", "|---|---:|---:|---:|",
             f"| head_importance (heads batched per layer) | {ti:.3f} | 1.00x | "
             f"{res['memory']['peak_delta_mib'].get('importance') or 0:.0f} |",
             f"| head_importance(heads_per_pass=1) | {t['importance_hpp1']['median_s']:.3f} | "
             f"{t['importance_hpp1']['median_s'] / ti:.2f}x | "
             f"{res['memory']['peak_delta_mib'].get('importance_hpp1') or 0:.0f} |",
             f"| naive: clean pass | {tn:.3f} | {tn / ti:.2f}x | |",
             f"| naive: one pass per head (median of {imp['naive_heads']}) | {th:.3f} | "
             f"{th / ti:.2f}x | |",
             f"| naive, all heads (clean + {imp['n_heads_total']} x per head) | {naive:.3f} | "
             f"{naive / ti:.2f}x | |",
             "", f"naive / head_importance = {naive / ti:.2f}x; naive loss increases equal "
             f"head_importance's to {imp['max_abs_diff']:.1e} nats on {imp['naive_heads']} heads"]
    c = res["config"]
    peak = res["memory"]["process_peak_after_load_mib"]
    rows.append(f"\n{setup_line(res)}, d_model {c['hidden_size']}, {res['n_prompts']} prompts "
                f"(mean length {np.mean(res['prompt_lengths']):.0f} tokens) in {res['n_blocks']} blocks, "
                f"{res['repeats']} repeats after {res['warmup']} warm-up; peak RSS after loading "
                f"{'n/a' if peak is None else f'{peak:.0f} MiB'}; peak MiB: {res['memory']['peak_method']}")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # prompt truncation at max_length is expected here
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench_stability_") as tmp:
        cfg = QUICK_MODEL if args.quick else MODEL
        dirs = [build_random_checkpoint(Path(tmp) / f"seed{s}", seed=s, **cfg)
                for s in range(N_MODELS)]
        config = json.loads((dirs[0] / "config.json").read_text())
        models = [load(d, args) for d in dirs]
    prompts = heldout_texts(args.n_prompts)
    texts = heldout_texts(args.n_texts, offset=args.n_prompts)
    tokenized = tokenize(models[0], prompts, max_length=MAX_LENGTH)
    prepared = stability_batches(models, tokenized, args.device)
    opts = dict(null=0, resid=False, n_blocks=args.n_blocks, n_resamples=SMALL_RESAMPLES)

    # the bootstrap's share of every head_stability call, measured inside the call
    boot_log: list[float] = []
    bootstrap = stability_mod._bootstrap

    def timed_bootstrap(*a, **k):
        t0 = time.perf_counter()
        out = bootstrap(*a, **k)
        boot_log.append(time.perf_counter() - t0)
        return out

    stability_mod._bootstrap = timed_bootstrap
    boot_by: dict[str, list[float]] = {f"stability_{m}": [] for m in MEASURES}
    last: dict[str, object] = {}

    def stability(measure: str) -> None:
        last[measure] = tl_spec.head_stability(models, prompts, measure=measure, **opts)
        boot_by[f"stability_{measure}"].append(boot_log[-1])

    # importance: tl_spec vs the naive route; equal values first, so the race is fair
    model = models[0]
    imp_tok = tokenize(model, texts, max_length=MAX_LENGTH)
    plan = [(tokens, mask) for _, tokens, mask in
            batches(imp_tok, batch_size=BATCH_SIZE, pad_id=pad_id(model), device=args.device)]
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    flat = np.linspace(0, n_layers * n_heads - 1, args.naive_heads).round().astype(int)
    subset = [(int(i) // n_heads, int(i) % n_heads) for i in flat]
    imp = tl_spec.head_importance(model, texts, ablations=("mean",))
    means, clean_total, clean_n = naive_clean(model, plan)
    diffs = [abs((naive_head(model, plan, means, layer, h) - clean_total) / clean_n
                 - imp.mean_ablation[layer, h]) for layer, h in subset]
    tol = 1e-5 if args.dtype == "float32" else 1e-2
    assert max(diffs) <= tol, ("naive vs head_importance", diffs)

    def naive_subset() -> None:
        for layer, h in subset:
            naive_head(model, plan, means, layer, h)

    conds = {"floor": lambda: floor(models, prepared)}
    for m in MEASURES:
        conds[f"stability_{m}"] = lambda m=m: stability(m)
    conds["importance"] = lambda: tl_spec.head_importance(model, texts, ablations=("mean",))
    conds["importance_hpp1"] = lambda: tl_spec.head_importance(model, texts, ablations=("mean",),
                                                               heads_per_pass=1)
    conds["naive_clean"] = lambda: naive_clean(model, plan)
    conds["naive_heads"] = naive_subset
    # peak memory: measured on each condition's first call (round 0), not in later rounds
    peaks: dict[str, float | None] = {}

    def first_call_peak(name, fn):
        def run():
            if name in peaks:
                return fn()
            peaks[name] = peak_delta_mib(fn, args.device)
        return run

    hwm = _proc_kib("VmHWM")  # models and checkpoints loaded (clear_refs below resets it)
    times = time_interleaved({k: first_call_peak(k, fn) for k, fn in conds.items()},
                             args.device, args.warmup, args.repeats, verbose=True)
    boot_runs = {k: v[args.warmup:] for k, v in boot_by.items()}  # the timed rounds only

    # the bootstrap alone at --full-resamples, on the pooled statistics of the last run
    bootstrap_full, pooled = {}, {"floor": None}
    for m in MEASURES:
        r = last[m]
        pooled[f"stability_{m}"] = engine_mib(r)
        names = [n for n in PROFILES if n not in ("resid_cka", "null", "margin")]
        t0 = time.perf_counter()
        bootstrap(r._engine, names, n_layers, confidence=0.95, n_resamples=args.full_resamples,
                  seed=0)
        bootstrap_full[m] = {"s": time.perf_counter() - t0, "intervals": len(names) * n_layers,
                             "n_resamples": args.full_resamples}
    stability_mod._bootstrap = bootstrap

    res = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "transformers": version("transformers"), "numpy": np.__version__,
                     "tl_spec": tl_spec.__version__},
        "device": args.device, "dtype": args.dtype, "backend": backend_name(model),
        "torch_threads": torch.get_num_threads(), "quick": args.quick,
        "platform": platform.platform(), "processor": platform.processor(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "config": config, "architecture": tl_spec.describe(model).to_dict(),
        "n_models": N_MODELS, "n_prompts": len(prompts), "n_blocks": args.n_blocks,
        "prompt_lengths": list(tokenized.lengths), "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH, "n_resamples": SMALL_RESAMPLES,
        "repeats": args.repeats, "warmup": args.warmup,
        "forwards": {"floor": N_MODELS * len(prepared)},
        "timing": {k: {"median_s": statistics.median(v["wall"]), "min_s": min(v["wall"]),
                       "cpu_median_s": statistics.median(v["cpu"]), "runs_s": v["wall"],
                       "cpu_runs_s": v["cpu"]} for k, v in times.items()},
        "bootstrap_s": {k: statistics.median(v) for k, v in boot_runs.items()},
        "bootstrap_runs_s": boot_runs,
        "bootstrap_full": bootstrap_full,
        "importance": {"n_texts": len(texts), "text_lengths": list(imp_tok.lengths),
                       "n_heads_total": n_layers * n_heads, "naive_heads": len(subset),
                       "naive_subset": subset, "max_abs_diff": float(max(diffs)),
                       "tolerance": tol, "ablation": "mean"},
        "memory": {"pooled_sums_mib": pooled, "peak_delta_mib": peaks,
                   "peak_method": ("cuda max_memory_allocated delta" if args.device == "cuda"
                                   else "VmHWM after clear_refs, in-process") +
                                  ", each condition's first call",
                   "process_peak_after_load_mib": None if hwm is None else hwm / 1024},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_stability.json").write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    (out / "bench_stability.md").write_text(table + "\n")
    print(table)


# ---- bounded memory: exact vs minibatch CKA, one fresh process per condition --------------------

PYTHIA_LIKE = dict(n_layers=4, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=4096,
                   n_ctx=2048, act_fn="gelu", normalization_type="LN",
                   positional_embedding_type="rotary", rotary_dim=16, parallel_attn_mlp=True)


def bounded_child(estimator: str, n_models: int, n_prompts: int, n_blocks: int,
                  n_resamples: int, n_tokens: int = 128) -> dict:
    """One condition in this process: build the models, run head_stability, report time + RSS."""
    import resource

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    models = []
    for seed in range(n_models):
        cfg = HookedTransformerConfig(**PYTHIA_LIKE, seed=seed, model_name=f"pythia-like-s{seed}")
        models.append(HookedTransformer(cfg).eval())
    tokens = torch.randint(0, PYTHIA_LIKE["d_vocab"], (n_prompts, n_tokens),
                           generator=torch.Generator().manual_seed(0))
    import os

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    r = tl_spec.head_stability(models, tokens, measure="output", null=2, n_blocks=n_blocks,
                               n_resamples=n_resamples, estimator=estimator)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"estimator": r.settings["estimator"], "models": n_models, "prompts": n_prompts,
            "tokens": n_tokens,
            "blocks": n_blocks, "resamples": n_resamples, "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "rss_before_gib": round(rss0, 3), "threads": torch.get_num_threads(),
            "stability": [round(float(v), 4) for v in r.stability],
            "null": [round(float(v), 4) for v in r.null],
            "resid_cka": [round(float(v), 4) for v in r.resid_cka]}


def bounded_main(argv: list[str]) -> int:
    import subprocess

    p = argparse.ArgumentParser(description="head_stability peak RSS by CKA estimator")
    p.add_argument("--bounded", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models", type=int, nargs="+", default=[4])
    p.add_argument("--estimators", nargs="+", default=["minibatch"],
                   choices=("exact", "minibatch", "auto"))
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--n-blocks", type=int, default=16)
    p.add_argument("--n-resamples", type=int, default=200)
    p.add_argument("--n-tokens", type=int, default=128, help="tokens per prompt")
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args(argv)
    if args.child:
        warnings.simplefilter("ignore")
        print(json.dumps(bounded_child(args.estimators[0], args.models[0], args.n_prompts,
                                       args.n_blocks, args.n_resamples, args.n_tokens)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n_models in args.models:
        for est in args.estimators:
            cmd = [sys.executable, __file__, "--bounded", "--child", "--models", str(n_models),
                   "--estimators", est, "--n-prompts", str(args.n_prompts), "--n-blocks",
                   str(args.n_blocks), "--n-resamples", str(args.n_resamples),
                   "--n-tokens", str(args.n_tokens)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            row = dict(json.loads(done.stdout.strip().splitlines()[-1]),
                       command="python benchmarks/bench_stability.py " + " ".join(argv))
            print(json.dumps(row), flush=True)
            with open(out / "bench_stability_bounded.jsonl", "a") as f:  # one line per condition
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    if "--bounded" in sys.argv[1:]:
        sys.exit(bounded_main(sys.argv[1:]))
    sys.exit(main())
