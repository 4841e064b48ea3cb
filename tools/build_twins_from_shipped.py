"""Build SFT / DPO twins of the *shipped* default-set bases (the parents users load).

    python tools/build_twins_from_shipped.py OUT_DIR mha-sft-1,mha-dpo-1,... [--workers 2]

Why: the float32 builds the shipped bases came from are not kept, and `tl-spec zoo build
default` does not reproduce them bit for bit under a newer transformers (5.24 vs the 5.23 of
the shipped markers: `base-gqa` and `base-mha` rebuilt with the same recipe differ in their
SHA-256 and by 0.002 nats in held-out loss). Twins fine-tuned from such a rebuild would not be
twins of the bases that ship. So this stages each shipped float16 base, upcast to float32, as
the parent in OUT_DIR (with the shipped tokenizer) and runs the ordinary zoo build of the named
twins there (same recipe, one torch thread per model); each twin's marker records the shipped
parent it started from (``parent_source``). Ship the result with
``python tools/ship_default_zoo.py OUT_DIR --only NAMES``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tl_spec.zoo.registry import MARKER, TOKENIZER, _shipped_root, build, find


def stage_parents(out: Path, names: list[str]) -> dict[str, dict]:
    """Copy every base the twins need from the package, upcast to float32; their records."""
    out.mkdir(parents=True, exist_ok=True)
    shipped = _shipped_root()
    bases = sorted({find(n).parent for n in names if find(n).kind == "sft"})
    sources = {}
    for base in bases:
        src, dst = shipped / base, out / base
        if not (dst / MARKER).is_file():
            tmp = out / f".stage-{base}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            weights = load_file(src / "model.safetensors")
            save_file({k: v.to(torch.float32) for k, v in weights.items()},
                      tmp / "model.safetensors", metadata={"format": "pt"})
            marker = json.loads((src / MARKER).read_text())
            marker["weights_sha256"] = hashlib.sha256(
                (tmp / "model.safetensors").read_bytes()).hexdigest()
            (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            tmp.rename(dst)
        shipped_marker = json.loads((src / MARKER).read_text())
        sources[base] = {"name": base, "shipped_weights_sha256": shipped_marker["weights_sha256"],
                         "built_weights_sha256": shipped_marker["built_weights_sha256"],
                         "upcast": "float16 -> float32"}
    if not (out / TOKENIZER / "tokenizer.json").is_file():
        tok = out / TOKENIZER
        tok.mkdir(exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(shipped / bases[0] / f, tok / f)
    return sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("names", help="comma-separated twin names (sft and dpo of shipped bases)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    out = Path(args.out)
    sources = stage_parents(out, names)
    build("default", out=out, only=names, workers=args.workers, progress=False,
          on_done=lambda n, m: print(f"built {n}", flush=True))
    for name in names:  # record the shipped base each twin descends from
        base = find(name).parent
        while find(base).kind != "pretrain":
            base = find(base).parent
        marker_path = out / name / MARKER
        marker = json.loads(marker_path.read_text())
        marker["parent_source"] = {**sources[base], "note": "shipped base, upcast to float32"}
        marker_path.write_text(json.dumps(marker, indent=1) + "\n")


if __name__ == "__main__":
    main()
