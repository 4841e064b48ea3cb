"""What the benchmark scripts share: the benchmark model, loading, timing, the default backend.

>>> MODEL["num_hidden_layers"], MODEL["hidden_size"]
(8, 512)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import tl_spec

__all__ = ["MODEL", "available_backends", "default_backend", "load", "setup_line", "sync", "time_interleaved"]

#: The benchmark model: a local random-init Llama-style checkpoint (GQA 8:2, d_model 512, 8 layers).
MODEL = dict(arch="llama-gqa", num_hidden_layers=8, hidden_size=512, intermediate_size=1408,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)


def setup_line(res: dict) -> str:
    """The report footer's start: backend, device, dtype, threads, layers, query:KV heads."""
    c = res["config"]
    return (f"{res['backend']} backend, {res['device']}, {res['dtype']}, "
            f"{res['torch_threads']} torch threads, {c['num_hidden_layers']} layers, "
            f"{c['num_attention_heads']}:{c['num_key_value_heads']} heads")


def sync(device: str) -> None:
    """Wait for queued GPU work so wall-clock times are honest."""
    if device == "cuda":
        torch.cuda.synchronize()


def load(path: Path, args: argparse.Namespace):
    """The checkpoint through ``tl_spec.load_model`` with the script's backend, dtype and device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl_spec.load_model(str(path), backend=args.backend, dtype=args.dtype,
                                  device=args.device)


def default_backend() -> str:
    """``hooked`` where TransformerLens still has HookedTransformer (3.x), else ``bridge``."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return "bridge"
    return "hooked"


def available_backends() -> list[str]:
    """Every backend this TransformerLens can load: ``["hooked", "bridge"]`` on 3.x, else ``["bridge"]``."""
    return ["hooked", "bridge"] if default_backend() == "hooked" else ["bridge"]


def time_interleaved(conds: dict, device: str, warmup: int, repeats: int,
                     verbose: bool = False) -> dict:
    """Run the conditions in turn (A B C A B C ...): wall and process CPU seconds per run."""
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in conds}
    for round_ in range(warmup + repeats):
        for name, fn in conds.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if round_ >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
            if verbose:
                print(f"  round {round_}{' (warm-up)' if round_ < warmup else ''} {name}: "
                      f"{wall:.3f} s", file=sys.stderr, flush=True)
    return times
