"""Copy a built default zoo set into the package (tl_spec/zoo/default/) in float16.

    python tools/ship_default_zoo.py /path/to/built/default [--only NAME,NAME,...]

``--only`` ships just those models and leaves every other shipped model as it is (the MHA and SWA
twins were added that way, from tools/build_twins_from_shipped.py). The weights are stored in
float16 to keep the wheel small (each model ~0.7 MB). Each marker keeps the SHA-256 of the
float32 build (``built_weights_sha256``: the same recipe and thread count reproduce it bit for
bit under the transformers release recorded in the model's ``config.json``; a newer release
can change the weights slightly, see docs/zoo.md) and of the shipped float16 file
(``weights_sha256``, checked on every load).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tl_spec.zoo.registry import MARKER, SETS

DEST = Path(__file__).resolve().parents[1] / "tl_spec" / "zoo" / "default"


def main(src: str, only: list[str] | None = None) -> None:
    source = Path(src)
    names = [m.name for m in SETS["default"]]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise SystemExit(f"not in the default set: {', '.join(unknown)}")
    if only is None and DEST.exists():
        shutil.rmtree(DEST)
    for model in SETS["default"]:
        if only is not None and model.name not in only:
            continue
        built = source / model.name
        out = DEST / model.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for item in built.iterdir():
            if item.name not in ("model.safetensors", MARKER) and item.is_file():
                shutil.copy2(item, out / item.name)
        weights = load_file(built / "model.safetensors")
        save_file({k: v.to(torch.float16) for k, v in weights.items()}, out / "model.safetensors",
                  metadata={"format": "pt"})
        marker = json.loads((built / MARKER).read_text())
        marker["built_weights_sha256"] = marker["weights_sha256"]
        marker["weights_sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
        marker["shipped_dtype"] = "float16"
        (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        print(f"{model.name}: {(out / 'model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="ship a built default zoo set in float16")
    ap.add_argument("src")
    ap.add_argument("--only", default=None, help="comma-separated names (default: every model)")
    args = ap.parse_args()
    main(args.src, None if args.only is None else [n for n in args.only.split(",") if n])
