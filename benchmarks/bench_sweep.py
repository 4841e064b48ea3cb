"""Benchmark the E11-T perturbation sweep (``tl_spec.probe_sweep``) against its floor and the
paper notebooks' route.

Grid: clean + 4 regions ("early", "middle", "late", "all") x 6 sigmas (0, .01, .02, .05, .1, .2)
x 3 seeds (42, 123, 456), Standard-10 prompts, method ``entropy_profile``, noise at ``attn_out``.
Model: the local random-init Llama-style checkpoint of ``bench_si.py`` (``tl_spec.zoo.tiny``,
GQA 8:2, d_model 512, 8 layers), loaded once per backend: every backend this TransformerLens has
(HookedTransformer and TransformerBridge on 3.x, the bridge on 4.x) in the same run, or those
given with ``--backend``. Conditions per backend, each timed end to end:

1. ``fast``: ``probe_sweep(model, STANDARD_10, method="entropy_profile")`` (the sweep engine:
   one clean run, seeds batched together, each noised forward starting at the region's first
   layer from the cached residual where ``tl_spec.resume.can_start_at_layer`` says the model
   can resume mid-way).
2. ``plain``: the same with ``fast=False`` (every cell from scratch; for information).
3. ``reference``: the notebooks' route. Hugging Face eager model, one prompt per forward,
   ``output_attentions=True``, a ``register_forward_hook`` on each noised ``self_attn`` adding
   ``randn(output[0].shape, generator) * sigma`` (generator seeded per cell), entropy profile with
   Python loops over layers and heads in numpy, SI = 1 - nanmean(triu(corrcoef(E.T), 1)). Every
   cell is run, sigma = 0 included, plus the clean run. Its noise comes from another generator,
   so only the clean SI and the sigma = 0 cells are checked against tl_spec's clean SI.
4. ``floor``: the bare forward passes the fast path runs, replayed with no hooks: the engine
   records every forward (kind, start layer, rows) in ``SweepStats.forward_plan``; the floor
   runs the same batches from the same layers (``tl_spec.resume.forward_from_layer``, residual
   of the right shape built outside the timed section). The number of forwards is asserted
   equal to ``SweepResult.settings["forwards"]``.

The reference route does not depend on the backend: it is timed once and every backend's fast
path is compared with it. All conditions of all backends are interleaved (A B C D A B C D ...)
after warm-up rounds; medians are reported.
Results go to ``--out``/bench_sweep.json and bench_sweep.md.

    python benchmarks/bench_sweep.py [--device cpu|cuda] [--dtype float32|bfloat16]
                                     [--backend hooked|bridge ...] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import tl_spec
from tl_spec.models import backend_name
from tl_spec.resume import can_start_at_layer, forward_from_layer
from tl_spec.prompts import STANDARD_10
from tl_spec.tokens import pad_batch, pad_id, tokenize
from tl_spec.zoo.tiny import build_random_checkpoint

from common import MODEL, available_backends, load, time_interleaved  # noqa: E402

REGIONS = ("early", "middle", "late", "all")
SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
SEEDS = (42, 123, 456)
METHOD, SITE = "entropy_profile", "attn_out"
BATCH_SIZE, MAX_LENGTH, PADDING = 16, 128, "right"  # probe_sweep's defaults
QUICK_MODEL = dict(MODEL, num_hidden_layers=3)  # 3 layers: "late" is the last layer alone
FLOOR_TARGET = 1.15
REF_TARGET = {"cpu": 2.2, "cuda": 20.0}


def sweep(model, fast: bool):
    return tl_spec.probe_sweep(model, STANDARD_10, sigmas=SIGMAS, regions=REGIONS, seeds=SEEDS,
                               site=SITE, method=METHOD, max_length=MAX_LENGTH,
                               batch_size=BATCH_SIZE, fast=fast)


# ---- the floor: the engine's batches, bare forwards -------------------------------------------

def floor_plan(model, tokenized, region_layers: dict[str, list[int]], device):
    """Every forward the fast path runs (recorded by the engine itself), as bare forwards:
    (tokens, all-ones mask, start layer, a residual of the right shape)."""
    from tl_spec.experiments.sweep import NoiseCondition, run_sweep

    ids, pad = tokenized.ids, pad_id(model)
    conds = [NoiseCondition(tuple(region_layers[r]), float(s), seed, "attn_out", r)
             for r in REGIONS for s in SIGMAS for seed in SEEDS]
    recorded = run_sweep(model, tokenized, conds, stats=("column_entropy",),
                         batch_size=BATCH_SIZE).forward_plan
    starts = sorted({start for _, start, _ in recorded if start > 0})
    tokens, mask = pad_batch([ids[p] for p in range(len(ids))], pad_id=pad, device=device)
    names = [f"blocks.{k}.hook_resid_pre" for k in starts]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, attention_mask=torch.ones_like(mask),
                                        names_filter=names, return_type=None)
    resid = {(p, k): cache[f"blocks.{k}.hook_resid_pre"][p][mask[p].bool()].clone()
             for k in starts for p in range(len(ids))}
    plan = []
    for kind, start, prompts in recorded:
        toks, m = pad_batch([ids[p] for p in prompts], pad_id=pad, device=device)
        x = None
        if start > 0:
            x = resid[(prompts[0], start)].new_zeros((len(prompts), toks.shape[1],
                                                      resid[(prompts[0], start)].shape[-1]))
            for r, p in enumerate(prompts):
                x[r, : len(ids[p])] = resid[(p, start)]
        plan.append({"kind": kind, "tokens": toks, "mask": torch.ones_like(m), "start": start,
                     "resid": x, "prompts": prompts})
    return plan, starts


def floor(model, plan) -> None:
    with torch.inference_mode():
        for f in plan:
            if f["start"] > 0:
                forward_from_layer(model, f["resid"], f["start"], tokens=f["tokens"],
                                   attention_mask=f["mask"], return_type=None)
            else:
                model(f["tokens"], attention_mask=f["mask"], return_type=None)


# ---- the reference route: Hugging Face eager, one prompt per forward, numpy loops -------------

def entropy_profile_np(attentions) -> np.ndarray:
    """[layers, heads] normalized entropy of the mean attention row (E11 notebooks)."""
    n_layers, n_heads = len(attentions), attentions[0].shape[1]
    ent = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        a = attentions[layer][0].float().cpu().numpy()  # [heads, n, n], one unpadded prompt
        for head in range(n_heads):
            col = a[head].mean(axis=0)
            col = col / col.sum()
            nz = col[col > 0]
            ent[layer, head] = (-(nz * np.log2(nz)).sum() / np.log2(len(nz))
                                if len(nz) >= 2 else 0.0)
    return ent


def si_np(E: np.ndarray) -> float:
    corr = np.corrcoef(E.T)
    return float(1.0 - np.nanmean(corr[np.triu_indices_from(corr, 1)]))


def hf_cell(hf_model, ids, device, layers=(), sigma=0.0, seed=0) -> float:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def hook(module, inputs, output):
        noise = torch.randn(output[0].shape, generator=gen, device=output[0].device,
                            dtype=output[0].dtype) * sigma
        return (output[0] + noise, *output[1:])

    handles = [hf_model.model.layers[x].self_attn.register_forward_hook(hook) for x in layers]
    try:
        profiles = []
        for row in ids:
            x = torch.tensor([row], device=device)
            with torch.no_grad():
                atts = hf_model(input_ids=x, output_attentions=True, use_cache=False).attentions
            profiles.append(entropy_profile_np(atts))
    finally:
        for h in handles:
            h.remove()
    return si_np(np.mean(profiles, axis=0))


def reference(hf_model, ids, region_layers, device) -> tuple[float, np.ndarray]:
    clean = hf_cell(hf_model, ids, device)
    grid = np.zeros((len(REGIONS), len(SIGMAS), len(SEEDS)))
    for i, name in enumerate(REGIONS):
        for j, sigma in enumerate(SIGMAS):
            for k, seed in enumerate(SEEDS):
                grid[i, j, k] = hf_cell(hf_model, ids, device, region_layers[name], sigma, seed)
    return clean, grid


# ---- timing and report ---------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--backend", choices=("hooked", "bridge"), nargs="+",
                   default=available_backends(),
                   help="backends to run, in one interleaved run (default: every one available)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="3 layers, 1 repeat (checks the script)")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.warmup = 1, 1
    return args


def markdown(res: dict) -> str:
    t = res["timing"]
    ref = t["reference"]["median_s"]
    rows = [("| backend | condition | forwards | median s | min s | / floor | CPU-time / floor "
             "| reference / this |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    labels = {"floor": "floor (bare forwards)", "fast": "probe_sweep (fast)",
              "plain": "probe_sweep(fast=False)"}
    for be, b in res["backends"].items():
        fl, cfl = t[f"{be}:floor"]["median_s"], t[f"{be}:floor"]["cpu_median_s"]
        for name, label in labels.items():
            v = t[f"{be}:{name}"]
            rows.append(f"| {be} | {label} | {b['forwards'][name]} | {v['median_s']:.3f} | "
                        f"{v['min_s']:.3f} | {v['median_s'] / fl:.2f}x | "
                        f"{v['cpu_median_s'] / cfl:.2f}x | {ref / v['median_s']:.2f}x |")
    v = t["reference"]
    rows.append(f"| - | reference (HF eager, numpy) | {res['reference_forwards']} | "
                f"{v['median_s']:.3f} | {v['min_s']:.3f} | | | 1.00x |")
    rows.append("")
    for be, b in res["backends"].items():
        r = b["ratios"]
        rows.append(
            f"{be} (prefix reuse {'on' if b['prefix_reuse'] else 'off'}): fast / floor = "
            f"{r['fast_over_floor']:.2f}x (target <= {FLOOR_TARGET}x: "
            f"{'OK' if r['fast_over_floor'] <= FLOOR_TARGET else 'MISSED'}); reference / fast = "
            f"{r['reference_over_fast']:.2f}x (target >= {r['reference_target']:g}x on "
            f"{res['device']}: "
            f"{'OK' if r['reference_over_fast'] >= r['reference_target'] else 'MISSED'}); "
            f"SI clean {b['si']['clean']:.6f} (reference {res['reference_clean']:.6f}), "
            f"reference sigma=0 cells max |diff| {b['si']['reference_sigma0_max_diff']:.1e}, "
            f"fast vs fast=False grid max |diff| {b['si']['fast_vs_plain_max_diff']:.1e}; "
            f"engine forwards {b['engine_forwards']}")
    c = res["config"]
    rows.append(f"\n{res['device']}, {res['dtype']}, {res['torch_threads']} torch threads, "
                f"{c['num_hidden_layers']} layers, {c['num_attention_heads']}:"
                f"{c['num_key_value_heads']} heads, d_model {c['hidden_size']}, regions "
                f"{res['region_layers']}, prompt lengths {res['prompt_lengths']}, "
                f"{res['repeats']} repeats after {res['warmup']} warm-up")
    return "\n".join(rows)


def prepare_backend(args, backend: str, model_dir: Path, tol: float) -> dict:
    """Load the model on ``backend``, check its grid (fast = plain = reference at sigma 0), plan
    its floor; return what the timing and the report need."""
    args = argparse.Namespace(**vars(args))
    args.backend = backend
    model = load(model_dir, args)
    tokenized = tokenize(model, STANDARD_10, max_length=MAX_LENGTH)
    fast_res, plain_res = sweep(model, True), sweep(model, False)
    diff = float(np.max(np.abs(fast_res.si - plain_res.si)))
    # float32 rounding of differently grouped batches: measured 7.7e-7 (bridge) and 1.04e-6
    # (hooked) at full size on 2026-12-02, 3.4e-15 in --quick; so 1e-5 in float32
    fast_tol = 1e-5 if args.dtype == "float32" else tol
    assert diff <= fast_tol, ("fast vs fast=False SI grid", backend, diff)
    assert abs(fast_res.si_clean - plain_res.si_clean) <= 1e-12
    region_layers = fast_res.region_layers
    plan, _ = floor_plan(model, tokenized, region_layers, args.device)
    engine = fast_res.settings["forwards"]
    kinds = Counter(f["kind"] for f in plan)
    assert dict(kinds) == {k: v for k, v in engine.items() if v}, (dict(kinds), engine)
    print(f"{backend}: engine forwards {engine}; floor {dict(kinds)}; prefix reuse "
          f"{can_start_at_layer(model)}", file=sys.stderr)
    n_layers = int(model.cfg.n_layers)
    return {"model": model, "tokenized": tokenized, "fast": fast_res, "plain": plain_res,
            "plan": plan, "engine": engine, "diff": diff, "region_layers": region_layers,
            "token_layers": {
                "floor": sum(f["tokens"].numel() * (n_layers - f["start"]) for f in plan),
                "floor_unpadded": sum(sum(tokenized.lengths[p] for p in f["prompts"])
                                      * (n_layers - f["start"]) for f in plan)}}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tol = 1e-4 if args.dtype == "float32" else 2e-2  # HF vs TL numerics differ more in bf16
    tmp = tempfile.TemporaryDirectory(prefix="bench_sweep_")  # removed at the end
    model_dir = build_random_checkpoint(tmp.name, **(QUICK_MODEL if args.quick else MODEL))
    config = json.loads((model_dir / "config.json").read_text())
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation="eager", dtype=dtype).to(args.device).eval()

    runs = {be: prepare_backend(args, be, model_dir, tol) for be in dict.fromkeys(args.backend)}
    first = next(iter(runs.values()))
    tokenized, region_layers = first["tokenized"], first["region_layers"]
    ref_clean, ref_grid = reference(hf_model, tokenized.ids, region_layers, args.device)
    for be, run in runs.items():
        assert run["tokenized"].ids == tokenized.ids and run["region_layers"] == region_layers
        sigma0 = float(np.max(np.abs(ref_grid[:, SIGMAS.index(0.0)] - run["fast"].si_clean)))
        assert abs(ref_clean - run["fast"].si_clean) <= tol, ("reference clean", be, ref_clean,
                                                              run["fast"].si_clean)
        assert sigma0 <= tol, ("reference sigma=0 cells", be, sigma0)
        run["sigma0"] = sigma0

    conds = {}
    for be, run in runs.items():
        model, plan = run["model"], run["plan"]
        conds[f"{be}:floor"] = lambda model=model, plan=plan: floor(model, plan)
        conds[f"{be}:fast"] = lambda model=model: sweep(model, True)
        conds[f"{be}:plain"] = lambda model=model: sweep(model, False)
    conds["reference"] = lambda: reference(hf_model, tokenized.ids, region_layers, args.device)
    times = time_interleaved(conds, args.device, args.warmup, args.repeats, verbose=True)
    med = {k: statistics.median(v["wall"]) for k, v in times.items()}

    n_cells = len(REGIONS) * len(SIGMAS) * len(SEEDS)
    n_layers = int(config["num_hidden_layers"])
    backends = {}
    for be, run in runs.items():
        fast_res, plain_res, model = run["fast"], run["plain"], run["model"]
        backends[be] = {
            "backend": backend_name(model), "prefix_reuse": can_start_at_layer(model),
            "architecture": tl_spec.describe(model).to_dict(),
            "engine_forwards": run["engine"], "token_layers": run["token_layers"],
            "forwards": {"floor": len(run["plan"]), "fast": sum(run["engine"].values()),
                         "plain": sum(plain_res.settings["forwards"].values())},
            "si": {"clean": fast_res.si_clean, "grid_fast": fast_res.si.tolist(),
                   "grid_plain": plain_res.si.tolist(), "fast_vs_plain_max_diff": run["diff"],
                   "reference_sigma0_max_diff": run["sigma0"], "tolerance": tol},
            "ratios": {"fast_over_floor": med[f"{be}:fast"] / med[f"{be}:floor"],
                       "plain_over_fast": med[f"{be}:plain"] / med[f"{be}:fast"],
                       "reference_over_fast": med["reference"] / med[f"{be}:fast"],
                       "floor_target": FLOOR_TARGET,
                       "reference_target": REF_TARGET[args.device]},
        }
    res = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "transformers": version("transformers"), "numpy": np.__version__,
                     "tl_spec": tl_spec.__version__},
        "device": args.device, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "quick": args.quick,
        "platform": platform.platform(), "processor": platform.processor(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "config": config,
        "grid": {"regions": list(REGIONS), "sigmas": list(SIGMAS), "seeds": list(SEEDS),
                 "method": METHOD, "site": SITE, "prompts": "STANDARD_10"},
        "region_layers": region_layers, "prompt_lengths": list(tokenized.lengths),
        "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "padding_side": PADDING,
        "repeats": args.repeats, "warmup": args.warmup,
        "reference_clean": ref_clean, "reference_grid": ref_grid.tolist(),
        "reference_forwards": (n_cells + 1) * len(STANDARD_10),
        "reference_token_layers": (n_cells + 1) * int(sum(tokenized.lengths)) * n_layers,
        "backends": backends,
        "timing": {k: {"median_s": statistics.median(v["wall"]), "min_s": min(v["wall"]),
                       "cpu_median_s": statistics.median(v["cpu"]), "runs_s": v["wall"],
                       "cpu_runs_s": v["cpu"]} for k, v in times.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_sweep.json").write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    (out / "bench_sweep.md").write_text(table + "\n")
    print(table)
    tmp.cleanup()


if __name__ == "__main__":
    main()
