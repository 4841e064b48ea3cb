"""SI and ΔSI at a real 1B-class shape: time vs the bare forward, peak memory vs run_with_cache.

Model: a random-init Llama with TinyLlama-1.1B's configuration (22 layers, d_model 2048, 32 query
/ 4 KV heads of 64, d_mlp 5632, vocabulary 32000, untied embeddings, RoPE 10000, 2048
positions; 1.10 B parameters), built offline from a ``transformers.LlamaConfig`` with the
query/key projections scaled (x6, as ``tl_spec.zoo.tiny`` does) so heads differ, saved in float32
with the small local tokenizer of ``tl_spec.zoo.tiny`` (384 ids; the rest of the 32000-row
embedding is never read). Random init is enough for timing and memory.

Three sub-commands, each meant to run in its own fresh process:

``build``: write the checkpoint (once; 4.4 GB on disk, 4.6 GiB peak RSS, ~1 min).

``time``: load the model once (``--dtype``, ``--backend``) and time, interleaved (A B A B ...),
   per prompt setting: the bare forward over exactly the batches SI runs (no hooks,
   ``inference_mode``, whole forward), ``specialization_index(method="pattern")`` (stops after the
   last layer's attention) and, on Standard-10, ``delta_si(model, model)`` (two SI runs plus the
   paired statistics at 10,000 resamples; the model against itself, so no second copy of the
   weights is held) against two bare forwards. Prompt settings: ``std10`` (Standard-10, one
   padded batch) and ``N`` = one prompt of exactly N tokens (Standard-10 repeated). Each
   condition's peak RSS over its start is taken on its first call (``clear_refs``, in-process:
   context only).

``mem``: one route on one prompt of ``--tokens`` tokens in this (fresh) process, after a
   warm-up on a short prompt: peak RSS over the post-load baseline (``VmHWM`` after
   ``clear_refs``). Routes: ``forward`` (bare), ``si`` (``specialization_index``, pattern),
   ``cache`` (``run_with_cache``, everything) and ``cache_patterns`` (``run_with_cache`` with
   ``names_filter`` keeping only ``hook_pattern``: exactly what the pattern SI reads).

    python benchmarks/bench_scale.py build [--dir /tmp/bench_scale_tinyllama]
    python benchmarks/bench_scale.py time --dtype bfloat16 --lengths std10 128 512 2048
    python benchmarks/bench_scale.py mem --dtype bfloat16 --route si --tokens 2048

Every sub-command prints one JSON line (``RESULT {...}``) and appends it to
``--out``/bench_scale.jsonl, with the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

import tl_spec
from tl_spec.prompts import STANDARD_10
from tl_spec.tokens import batches, pad_id, tokenize

from common import default_backend, load, time_interleaved  # noqa: E402

#: TinyLlama-1.1B's configuration (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T).
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, hidden_act="silu", pad_token_id=0, bos_token_id=1,
                 eos_token_id=2)
QK_SCALE = 6.0
BATCH_SIZE, MAX_LENGTH = 16, 128  # specialization_index's defaults


def proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_delta_mib(fn) -> tuple[float, object]:
    """Peak RSS of one call of ``fn`` over the RSS when it starts (MiB), and its result."""
    reset_peak()
    rss0 = proc_kib("VmRSS")
    out = fn()
    return max(proc_kib("VmHWM") - rss0, 0) / 1024, out


def loadavg() -> float:
    return os.getloadavg()[0]


def build(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tl_spec.zoo.tiny import build_tokenizer

    out = Path(args.dir)
    weights = ("model.safetensors", "model.safetensors.index.json")
    if (out / "config.json").exists() and any((out / w).exists() for w in weights):
        return {"built": False, "dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(384)
    config = LlamaConfig(**TINYLLAMA)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(QK_SCALE)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "tl_spec_tiny.json").write_text(json.dumps(
        {"builder": "benchmarks/bench_scale.py", "config": "TinyLlama-1.1B", "seed": 0,
         "qk_scale": QK_SCALE}, indent=2) + "\n")
    return {"built": True, "dir": str(out), "n_params": n_params,
            "seconds": round(time.perf_counter() - t0, 1)}


def long_tokens(model, n: int) -> torch.Tensor:
    """One prompt of exactly n tokens: Standard-10 repeated, truncated."""
    text = " ".join(STANDARD_10)
    while model.to_tokens(text).shape[-1] < n:
        text = text + " " + " ".join(STANDARD_10)
    tok = tokenize(model, [text], max_length=n)
    ids = torch.tensor([tok.ids[0]])
    assert ids.shape[-1] == n, ids.shape
    return ids


def time_main(args: argparse.Namespace) -> dict:
    model = load(Path(args.dir), args)
    load_peak = proc_kib("VmHWM") / 2**20
    short = long_tokens(model, 32)  # warm-up once (lazy inits, thread pools), not timed
    with torch.inference_mode():
        model(short, return_type=None)
    tl_spec.specialization_index(model, short, method="pattern", max_length=32)
    rows = {}
    for setting in args.lengths:
        if setting == "std10":
            prompts, n = list(STANDARD_10), MAX_LENGTH
            tokenized = tokenize(model, prompts, max_length=n)
            prepared = [(tokens, torch.ones_like(mask)) for _, tokens, mask in
                        batches(tokenized, batch_size=BATCH_SIZE, pad_id=pad_id(model))]
            lengths = list(tokenized.lengths)
        else:
            n = int(setting)
            prompts = long_tokens(model, n)
            prepared = [(prompts, torch.ones_like(prompts))]
            lengths = [n]

        def floor(prepared=prepared):
            with torch.inference_mode():
                for tokens, mask in prepared:
                    model(tokens, attention_mask=mask, return_type=None)

        def si(prompts=prompts, n=n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return tl_spec.specialization_index(model, prompts, method="pattern",
                                                    max_length=n)

        conds = {"floor": floor, "si": si}
        if setting == "std10" and not args.no_delta:
            conds["floor_x2"] = lambda: (floor(), floor())
            conds["delta_si"] = lambda: tl_spec.delta_si(model, model, list(STANDARD_10),
                                                         method="pattern")
        peaks: dict[str, float] = {}

        def first_peak(name, fn):
            def run():
                if name in peaks:
                    return fn()
                peaks[name] = round(peak_delta_mib(fn)[0], 1)
            return run

        l0 = loadavg()
        times = time_interleaved({k: first_peak(k, f) for k, f in conds.items()}, "cpu",
                                 args.warmup, args.repeats, verbose=True)
        t = {k: {"median_s": round(statistics.median(v["wall"]), 3),
                 "cpu_median_s": round(statistics.median(v["cpu"]), 3),
                 "runs_s": [round(x, 3) for x in v["wall"]]} for k, v in times.items()}
        ratios = {"si/floor": t["si"]["median_s"] / t["floor"]["median_s"],
                  "si/floor cpu": t["si"]["cpu_median_s"] / t["floor"]["cpu_median_s"]}
        if "delta_si" in t:
            ratios["delta/2floor"] = t["delta_si"]["median_s"] / t["floor_x2"]["median_s"]
            ratios["delta/2floor cpu"] = (t["delta_si"]["cpu_median_s"]
                                          / t["floor_x2"]["cpu_median_s"])
        rows[setting] = {"prompt_lengths": lengths, "timing": t,
                         "ratios": {k: round(v, 3) for k, v in ratios.items()},
                         "first_call_peak_delta_mib": peaks,
                         "load_1min": [round(l0, 2), round(loadavg(), 2)]}
        print(f"{setting}: {json.dumps(rows[setting]['ratios'])} peaks {peaks} "
              f"load {rows[setting]['load_1min']}", file=sys.stderr, flush=True)
    return {"mode": "time", "load_peak_rss_gib": round(load_peak, 2),
            "process_peak_rss_gib": round(proc_kib("VmHWM") / 2**20, 2),
            "repeats": args.repeats, "warmup": args.warmup, "settings": rows}


def mem_main(args: argparse.Namespace) -> dict:
    model = load(Path(args.dir), args)
    load_peak = proc_kib("VmHWM") / 2**20
    tokens = long_tokens(model, args.tokens)
    short = long_tokens(model, 32)
    route = args.route

    def run(toks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if route == "si":
                return tl_spec.specialization_index(model, toks, method="pattern",
                                                    max_length=toks.shape[-1]).value
            with torch.inference_mode():
                if route == "forward":
                    return model(toks, return_type=None)
                if route == "cache":
                    _, cache = model.run_with_cache(toks, return_type=None)
                else:
                    _, cache = model.run_with_cache(
                        toks, return_type=None, names_filter=lambda n: n.endswith("hook_pattern"))
                return sum(v.numel() * v.element_size() for v in cache.values()) / 2**20

    run(short)  # warm-up: lazy inits, thread pools
    rss_before = proc_kib("VmRSS") / 2**20
    l0, t0 = loadavg(), time.perf_counter()
    delta, value = peak_delta_mib(lambda: run(tokens))
    seconds = time.perf_counter() - t0
    out = {"mode": "mem", "route": route, "tokens": args.tokens, "peak_delta_mib": round(delta, 1),
           "rss_before_gib": round(rss_before, 2), "load_peak_rss_gib": round(load_peak, 2),
           "seconds": round(seconds, 1), "load_1min": [round(l0, 2), round(loadavg(), 2)]}
    if route.startswith("cache"):
        out["cache_mib"] = round(value, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=("build", "time", "mem"))
    p.add_argument("--dir", default="/tmp/bench_scale_tinyllama")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--backend", choices=("hooked", "bridge"), default=default_backend())
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", nargs="+", default=["std10"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-delta", action="store_true")
    p.add_argument("--route", choices=("forward", "si", "cache", "cache_patterns"), default="si")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    l0 = loadavg()
    res = {"build": build, "time": time_main, "mem": mem_main}[args.cmd](args)
    res.update(dtype=args.dtype, backend=args.backend, threads=torch.get_num_threads(),
               command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load_1min_start_end=[round(l0, 2), round(loadavg(), 2)],
               versions={"torch": torch.__version__,
                         "transformer_lens": version("transformer-lens"),
                         "transformers": version("transformers"),
                         "python": platform.python_version()})
    line = json.dumps(res)
    print("RESULT " + line, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_scale.jsonl", "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
