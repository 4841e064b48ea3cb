"""Report size and load time for a 32-layer x 32-head model, ten prompts of 128 tokens.

Targets (issue #7): the report stays under 15 MB and opens in a browser in under 3 s, measured
from navigation until the grid and one CircuitsVis canvas have rendered. The model is a real
random-init Llama-style checkpoint (32 layers x 32 heads, d_head 4) so every step runs for real:
SI on ten 128-token prompts, the report with drill-down patterns captured on the first prompt.
It also records the size when all ten prompts are shown in the drill-down (a head grid with a
prompt selector), the time from a click to that head's pattern, and the cost of drawing a whole
layer with CircuitsVis ``AttentionHeads`` (32 heads x 128 tokens: drawn only on request).

    python benchmarks/bench_report.py [--repeats 5] [--out benchmarks/out] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import tl_spec
from tl_spec.results import atomic_write_text, versions
from tl_spec.viz import head_grid, write_report
from tl_spec.zoo.tiny import TOKENIZER_TEXT, build_random_checkpoint

MODEL = dict(arch="llama-mha", num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=32, hidden_size=128, intermediate_size=256,
             max_position_embeddings=512)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def prompts(n: int = 10, min_chars: int = 900) -> list[str]:
    """``n`` distinct prompts long enough for 128 tokens (rotations of the tokenizer text)."""
    words = TOKENIZER_TEXT.split()
    out = []
    for i in range(n):
        rot = words[i * 17 % len(words):] + words[: i * 17 % len(words)]
        text = " ".join(rot)
        while len(text) < min_chars:
            text += " " + text
        out.append(text)
    return out


def browser_times(path: Path, chromium: str, repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"load_to_grid_and_canvas_s": [], "layer_view_s": [],
                                   "click_to_canvas_s": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector(".tlspec-cell", timeout=30_000)
            page.wait_for_selector(".tlspec-drill canvas", timeout=30_000)
            out["load_to_grid_and_canvas_s"].append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            page.click('.tlspec-cell[aria-label^="L20H7 "]')
            page.wait_for_selector('.tlspec-grid[data-selected="L20H7"] '
                                   '.tlspec-drill[data-state="ready"] .tlspec-views canvas',
                                   timeout=30_000)
            out["click_to_canvas_s"].append(time.perf_counter() - t1)
            t2 = time.perf_counter()
            page.click("details.tlspec-layer > summary")
            page.wait_for_selector(".tlspec-layer-view canvas >> nth=32", state="attached",
                                   timeout=120_000)
            out["layer_view_s"].append(time.perf_counter() - t2)
            if errors:
                raise SystemExit(f"console errors: {errors[:3]}")
            page.close()
        browser.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tl_spec_bench_report_"))
    ckpt = build_random_checkpoint(root / "model", **MODEL)
    model = tl_spec.load_model(ckpt)
    texts = prompts()
    si = tl_spec.specialization_index(model, texts, max_length=128)
    lengths = [len(t) for t in si.tokens]
    si.to_json(root / "si.json")

    t0 = time.perf_counter()
    report = write_report([root / "si.json"], root / "report", model=model, prompt=texts[0])
    build_s = time.perf_counter() - t0
    size = report.stat().st_size
    t0 = time.perf_counter()
    grid10 = head_grid(si, model=model, prompt=texts)
    grid10_path = grid10.save(root / "grid_10_prompts.html")
    grid10_s = time.perf_counter() - t0
    times = browser_times(report, args.chromium, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}

    lines = [
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| report size (1 drill-down prompt) | {size / 1e6:.2f} MB | < 15 MB |",
        f"| open until grid + first canvas (median of {args.repeats}) | "
        f"{med['load_to_grid_and_canvas_s']:.2f} s | < 3 s |",
        f"| click a cell until its pattern is drawn | {med['click_to_canvas_s']:.2f} s | |",
        f"| open the whole-layer view (AttentionHeads, 32 heads x 128 tokens) | "
        f"{med['layer_view_s']:.2f} s | on request |",
        f"| build the report (SI result + capture + write) | {build_s:.2f} s | |",
        f"| head grid with all 10 prompts in the drill-down | {grid10_path.stat().st_size / 1e6:.2f} MB"
        f" ({grid10_s:.1f} s) | |",
    ]
    ok = size < 15e6 and med["load_to_grid_and_canvas_s"] < 3.0
    summary = (f"{'OK' if ok else 'MISSED'}: 32 layers x 32 heads, {len(lengths)} prompts of "
               f"{min(lengths)}-{max(lengths)} tokens (SI), drill-down on one prompt of "
               f"{lengths[0]} tokens, patterns to 3 decimals, Chromium headless")
    text = "\n".join(lines) + "\n\n" + summary + "\n"
    print(text)
    out = Path(args.out)
    record = {"versions": versions(), "model": MODEL, "prompt_tokens": lengths,
              "report_bytes": size, "grid_10_prompts_bytes": grid10_path.stat().st_size,
              "build_s": build_s, "grid_10_prompts_s": grid10_s, "browser": times,
              "medians": med, "targets_met": ok}
    atomic_write_text(out / "bench_report.json", json.dumps(record, indent=1) + "\n")
    atomic_write_text(out / "bench_report.md", text)


if __name__ == "__main__":
    main()
