"""Benchmark tl_spec's Specialization Index against the bare forward pass and two other routes.

Model: a local random-init Llama-style checkpoint (``tl_spec.zoo.tiny``, GQA 8:2, d_model 512,
8 layers), prompts: ``tl_spec.prompts.STANDARD_10``. Compared:

1. Time of ``specialization_index(model, STANDARD_10, method=m)`` for the three methods vs the
   *floor*: bare forward passes (no hooks, ``inference_mode``) over exactly the same padded
   batches. Target: SI / floor <= 1.2x (HookedTransformer), <= 1.12x (bridge). SI's forwards
   stop after the last layer's attention (``tl_spec.running.stop_hook``); the floor runs whole.
2. Time of two other routes computing the same pattern-method SI: (a) ``run_with_cache`` per batch,
   then the same per-prompt head correlations from the cached ``hook_pattern``; (b) Hugging Face
   eager attention, one prompt per forward, ``output_attentions=True``, ``np.corrcoef`` per
   layer. Each route's SI is asserted equal to tl_spec's (1e-4 in float32) so the race is fair.
3. Peak memory for one 2048-token prompt, each route in a fresh subprocess: tl_spec SI (pattern)
   vs ``run_with_cache``; the bare forward is shown for context. CPU: peak RSS over the
   post-load, post-warm-up baseline (Linux ``clear_refs`` resets the high-water mark, else
   ``ru_maxrss``); CUDA: ``max_memory_allocated`` delta. Target: SI / cache <= 25 %.

Conditions are interleaved (A B C ... A B C ...) after warm-up rounds; medians are reported.
Results go to ``--out``/bench_si.json and bench_si.md.

    python benchmarks/bench_si.py [--device cpu|cuda] [--dtype float32|bfloat16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import tl_spec
from tl_spec.metrics.patterns import entry_mask, head_correlations
from tl_spec.prompts import STANDARD_10
from tl_spec.tokens import batches, pad_id, tokenize
from tl_spec.zoo.tiny import build_random_checkpoint

from common import MODEL, default_backend, load, setup_line, sync, time_interleaved  # noqa: E402

METHODS = ("pattern", "entropy_profile", "normalized_entropy")
BATCH_SIZE, MAX_LENGTH, PADDING = 16, 128, "right"  # specialization_index's defaults
QUICK_MODEL = dict(MODEL, num_hidden_layers=2)
TIME_TARGETS, MEM_TARGET = {"hooked": 1.2, "bridge": 1.12}, 0.25


def prepared_batches(model, tokenized, device):
    """The exact (tokens, model mask, token mask) triples run_batches feeds the model."""
    out = []
    for idx, tokens, mask in batches(tokenized, batch_size=BATCH_SIZE, pad_id=pad_id(model),
                                     padding_side=PADDING, device=device):
        model_mask = torch.ones_like(mask) if PADDING == "right" else mask
        out.append((idx, tokens, model_mask, mask))
    return out


def floor(model, prepared) -> None:
    with torch.inference_mode():
        for _, tokens, model_mask, _ in prepared:
            model(tokens, attention_mask=model_mask, return_type=None)


def cache_route(model, prepared, n_prompts: int) -> float:
    """(a) run_with_cache per batch, then per-prompt head correlations from the cached patterns."""
    n_layers = model.cfg.n_layers
    per_prompt = np.zeros((n_prompts, n_layers))
    with torch.inference_mode():
        for idx, tokens, model_mask, mask in prepared:
            _, cache = model.run_with_cache(tokens, attention_mask=model_mask, return_type=None)
            valid = entry_mask(mask.bool(), region="lower")
            for layer in range(n_layers):
                corr = head_correlations(cache[f"blocks.{layer}.attn.hook_pattern"], valid)
                iu = torch.triu_indices(corr.shape[-1], corr.shape[-1], 1)
                per_prompt[idx, layer] = 1.0 - corr[:, iu[0], iu[1]].double().mean(-1).cpu().numpy()
            del cache
    return float(per_prompt.mean(axis=0).mean())


def hf_route(hf_model, ids, device) -> float:
    """(b) HF eager attention, one prompt per forward, np.corrcoef per layer (paper's snippet)."""
    per_prompt = []
    for row in ids:
        x = torch.tensor([row], device=device)
        with torch.no_grad():
            atts = hf_model(input_ids=x, output_attentions=True, use_cache=False).attentions
        n = len(row)
        tril = np.tril_indices(n)
        layers = []
        for a in atts:
            a = a[0].float().cpu().numpy()  # [heads, n, n]
            corr = np.corrcoef(np.stack([a[h][tril] for h in range(a.shape[0])]))
            layers.append(1.0 - corr[np.triu_indices(corr.shape[0], 1)].mean())
        per_prompt.append(layers)
    return float(np.mean(np.mean(per_prompt, axis=0)))


# ---- memory: one long prompt, each route in a fresh interpreter --------------------------------

def _rss_kib() -> tuple[int, int, bool]:
    """(current RSS, peak RSS) in KiB; resets the Linux high-water mark when it can."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]), True
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak, False


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def long_prompt(model, n_tokens: int) -> str:
    """Standard-10 text repeated until it has at least n_tokens tokens (truncated by max_length)."""
    text = " ".join(STANDARD_10)
    while model.to_tokens(text).shape[-1] < n_tokens:
        text = text + " " + " ".join(STANDARD_10)
    return text


def memory_child(args: argparse.Namespace) -> None:
    route, n = args.mem_child, args.mem_tokens
    model = load(Path(args.model_dir), args)
    short, text = STANDARD_10[0], long_prompt(model, n)
    tok = tokenize(model, [text], max_length=n)
    tokens = torch.tensor([tok.ids[0]], device=args.device)
    assert tokens.shape[-1] == n, tokens.shape

    def run(prompt_text, max_length):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the truncation warning
            if route == "si":
                return tl_spec.specialization_index(model, [prompt_text], method="pattern",
                                                    max_length=max_length)
        toks = tokens if max_length == n else model.to_tokens(prompt_text).to(args.device)
        with torch.inference_mode():
            if route == "cache":
                return model.run_with_cache(toks, return_type=None)
            return model(toks, return_type=None)

    run(short, MAX_LENGTH)  # warm-up: lazy inits, allocator, thread pools
    sync(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    reset = _reset_peak()
    rss0, _, _ = _rss_kib()
    base_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run(text, n)
    sync(args.device)
    rss1, hwm, proc = _rss_kib()
    out = {"route": route, "n_tokens": n, "peak_rss_delta_mib":
           ((hwm - rss0) if (reset and proc) else (hwm - base_hwm)) / 1024,
           "rss_method": "VmHWM after clear_refs" if reset and proc else "ru_maxrss delta"}
    if args.device == "cuda":
        out["cuda_peak_delta_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    del result
    print("MEM " + json.dumps(out))


def measure_memory(args: argparse.Namespace, model_dir: Path, route: str) -> dict:
    cmd = [sys.executable, __file__, "--mem-child", route, "--model-dir", str(model_dir),
           "--mem-tokens", str(args.mem_tokens), "--device", args.device, "--dtype", args.dtype,
           "--backend", args.backend]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("MEM ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"memory child {route} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][4:])


# ---- main ----------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--backend", choices=("hooked", "bridge"), default=default_backend())
    p.add_argument("--quick", action="store_true", help="2 layers, 512-token memory prompt, 1 rep")
    p.add_argument("--mem-tokens", type=int, default=2048)
    p.add_argument("--mem-child", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.mem_tokens = 1, 1, min(args.mem_tokens, 512)
    return args


def markdown(res: dict) -> str:
    t, floor_s = res["timing"], res["timing"]["floor"]["median_s"]
    pat = t["si_pattern"]["median_s"]
    cpu_floor = t["floor"]["cpu_median_s"]
    rows = ["| condition | median s | min s | / floor | CPU-time / floor | / tl_spec SI (pattern) "
            "| target |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, v in t.items():
        ratio, target = v["median_s"] / floor_s, ""
        if name.startswith("si_"):
            goal = TIME_TARGETS[res["backend"]]
            target = f"<= {goal}x floor: {'OK' if ratio <= goal else 'MISSED'}"
        rows.append(f"| {name} | {v['median_s']:.4f} | {v['min_s']:.4f} | {ratio:.2f}x | "
                    f"{v['cpu_median_s'] / cpu_floor:.2f}x | {v['median_s'] / pat:.2f}x | {target} |")
    m = res["memory"]
    key = "cuda_peak_delta_mib" if res["device"] == "cuda" else "peak_rss_delta_mib"
    ratio = m["si"][key] / m["cache"][key]
    rows += ["", f"Peak memory, one {m['si']['n_tokens']}-token prompt ({key}, "
             f"{m['si'].get('rss_method', '')}):", "",
             "| route | peak delta MiB | / run_with_cache |", "|---|---:|---:|"]
    for route in ("forward", "si", "cache"):
        rows.append(f"| {route} | {m[route][key]:.1f} | {m[route][key] / m['cache'][key]:.1%} |")
    rows.append(f"\nSI / run_with_cache = {ratio:.1%} (target <= {MEM_TARGET:.0%}: "
                f"{'OK' if ratio <= MEM_TARGET else 'MISSED'})")
    rows.append(f"\n{setup_line(res)}, prompt lengths {res['prompt_lengths']}, "
                f"{res['repeats']} repeats")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    if args.mem_child:
        return memory_child(args)
    dtype = getattr(torch, args.dtype)
    tol = 1e-4 if args.dtype == "float32" else 2e-2  # HF vs TL numerics differ more in bf16
    with tempfile.TemporaryDirectory(prefix="bench_si_") as tmp:
        model_dir = build_random_checkpoint(tmp, **(QUICK_MODEL if args.quick else MODEL))
        config = json.loads((model_dir / "config.json").read_text())
        model = load(model_dir, args)
        tokenized = tokenize(model, STANDARD_10, max_length=MAX_LENGTH)
        prepared = prepared_batches(model, tokenized, args.device)
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=dtype).to(args.device).eval()

        si = {m: tl_spec.specialization_index(model, STANDARD_10, method=m).value for m in METHODS}
        routes = {"cache": cache_route(model, prepared, len(STANDARD_10)),
                  "hf_eager": hf_route(hf_model, tokenized.ids, args.device)}
        for name, value in routes.items():
            assert abs(value - si["pattern"]) <= tol, (name, value, si["pattern"])

        conds = {"floor": lambda: floor(model, prepared)}
        for m in METHODS:
            conds[f"si_{m}"] = (lambda m=m: tl_spec.specialization_index(model, STANDARD_10,
                                                                         method=m))
        conds["route_run_with_cache"] = lambda: cache_route(model, prepared, len(STANDARD_10))
        conds["route_hf_eager"] = lambda: hf_route(hf_model, tokenized.ids, args.device)
        times = time_interleaved(conds, args.device, args.warmup, args.repeats)
        del hf_model
        memory = {r: measure_memory(args, model_dir, r) for r in ("forward", "si", "cache")}

    res = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "transformers": version("transformers"), "numpy": np.__version__,
                     "tl_spec": tl_spec.__version__},
        "device": args.device, "dtype": args.dtype, "backend": args.backend,
        "torch_threads": torch.get_num_threads(), "quick": args.quick,
        "platform": platform.platform(), "processor": platform.processor(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "config": config, "architecture": tl_spec.describe(model).to_dict(),
        "prompt_lengths": list(tokenized.lengths), "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH, "padding_side": PADDING, "repeats": args.repeats,
        "warmup": args.warmup, "si_values": si, "route_si_values": routes, "tolerance": tol,
        "timing": {k: {"median_s": statistics.median(v["wall"]), "min_s": min(v["wall"]),
                       "cpu_median_s": statistics.median(v["cpu"]), "runs_s": v["wall"],
                       "cpu_runs_s": v["cpu"]} for k, v in times.items()},
        "memory": memory,
        "targets": {"si_over_floor": TIME_TARGETS[args.backend], "si_over_cache_memory": MEM_TARGET},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_si.json").write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    (out / "bench_si.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
