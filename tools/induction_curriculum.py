"""The experiments behind the default zoo's induction-head curriculum (README, "Evidence").

Trains one small Llama-style model on the zoo corpus, optionally mixing in repeated sequences,
and prints the best induction score every ``--eval`` steps
(:func:`tl_spec.zoo.evidence.induction_scores` on the HF attentions) and the held-out loss at
the end, one JSON line each. This is the development script as it was run (its optimiser is
AdamW with torch's default weight decay 0.01 on every parameter; random copy tokens are drawn
from ids 10 and up), kept so that the README's figures can be reproduced::

    python tools/induction_curriculum.py --layers 4 --heads 8 --kv 2 --frac 1.0 --steps 1000
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --frac 1.0 --steps 1000
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --steps 1500
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --frac 0.25 --mask --steps 2000
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --frac 0.25 --kind dup \\
        --steps 1500
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --warm 700 --frac 0.125 \\
        --mask --steps 2000
    python tools/induction_curriculum.py --layers 4 --heads 4 --kv 2 --warm 700 --frac 0 \\
        --mask --steps 2000

``--kind``: ``random`` (a block of 8-32 uniform random token ids repeated to fill the window),
``dup`` (a 65-token training passage followed by its own copy); ``--mask`` drops the loss on the
first copy. The zoo's own recipe (``copy_warmup`` / ``copy_frac`` of
:class:`tl_spec.zoo.train.TrainConfig`) is the ``random`` kind with the mask.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

from tl_spec.corpus import load_corpus
from tl_spec.zoo.evidence import induction_scores
from tl_spec.zoo.registry import model_dir
from tl_spec.zoo.train import TrainConfig, deterministic, heldout_loss, token_stream


def _repeats(rng, n: int, kind: str, train: np.ndarray, ctx: int, bos: int, vocab: int):
    rows, lengths = [], []
    for _ in range(n):
        if kind == "random":
            length = int(rng.integers(8, 33))
            block = rng.integers(10, vocab, size=length)
        else:  # dup
            length = (ctx + 2) // 2
            start = rng.integers(0, len(train) - length)
            block = train[start : start + length]
        seq = np.concatenate([[bos], np.tile(block, ctx // length + 2)])[: ctx + 1]
        rows.append(seq)
        lengths.append(length)
    return torch.from_numpy(np.stack(rows)), lengths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind, default in [("layers", int, 2), ("d", int, 64), ("heads", int, 4),
                                ("kv", int, 4), ("mlp", int, 192), ("steps", int, 1200),
                                ("lr", float, 3e-3), ("frac", float, 0.0), ("warm", int, 0),
                                ("warmfrac", float, 1.0), ("bs", int, 16), ("ctx", int, 128),
                                ("eval", int, 250), ("kind", str, "random"), ("tag", str, "x")]:
        p.add_argument(f"--{name}", type=kind, default=default)
    p.add_argument("--mask", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(model_dir("base-gqa")))
    corpus = load_corpus()
    train, held = token_stream(tok, corpus.train), token_stream(tok, corpus.heldout)
    vocab, bos = len(tok), tok.bos_token_id
    cfg = TrainConfig(n_layers=a.layers, d_model=a.d, n_heads=a.heads, n_kv_heads=a.kv,
                      d_mlp=a.mlp, ctx=a.ctx)
    with deterministic(0, 1):
        model = AutoModelForCausalLM.from_config(cfg.hf_config(tok), attn_implementation="eager")
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95))
        sched = get_cosine_schedule_with_warmup(opt, 60, a.steps)
        rng, data, t0 = np.random.default_rng(0), torch.from_numpy(train), time.time()
        for step in range(a.steps + 1):
            if step % a.eval == 0 or step == a.steps:
                model.eval()
                with torch.no_grad():
                    ind = induction_scores(
                        lambda x: model(input_ids=x, output_attentions=True).attentions,
                        vocab_size=vocab, bos=bos)
                model.train()
                print(json.dumps({"tag": a.tag, "step": step, "ind_max": float(ind.max()),
                                  "ind_arg": [int(i) for i in np.unravel_index(ind.argmax(),
                                                                                ind.shape)],
                                  "s": round(time.time() - t0)}), flush=True)
            if step == a.steps:
                break
            n_rep = round((a.warmfrac if step < a.warm else a.frac) * a.bs)
            starts = rng.integers(0, len(train) - a.ctx - 1, size=a.bs - n_rep)
            parts = [torch.stack([data[s : s + a.ctx + 1] for s in starts])] if len(starts) else []
            lengths: list[int] = []
            if n_rep:
                rep, lengths = _repeats(rng, n_rep, a.kind, train, a.ctx, bos, vocab)
                parts.append(rep)
            seqs = torch.cat(parts)
            x, y = seqs[:, :-1], seqs[:, 1:].clone()
            if a.mask:
                for r, length in enumerate(lengths):
                    y[len(y) - len(lengths) + r, : length + 1] = -100
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        print(json.dumps({"tag": a.tag, "final": True, "heldout": heldout_loss(model, held,
                                                                               ctx=a.ctx),
                          "secs": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
