"""Pretraining of the zoo's small causal language models, deterministic from a seed.

Standard Hugging Face checkpoints (Llama or Mistral config, safetensors, the zoo's tokenizer)
trained with PyTorch's AdamW and transformers' cosine schedule on the corpus of
:mod:`tl_spec.corpus`: windows of ``ctx`` tokens drawn from the concatenated training
documents with a seeded generator, optionally mixed with repeated random-token sequences
(:func:`copy_sequences`, the induction-head curriculum of the default set). Held-out loss is
measured on non-overlapping windows of the held-out documents and compared with the unigram
baseline (the cross-entropy of add-one smoothed training-token frequencies on the held-out
tokens).

>>> cfg = TrainConfig(arch="llama", n_kv_heads=2, steps=10)      # doctest: +SKIP
>>> metrics = train_base(cfg, "out/base-gqa", tokenizer_dir="out/tokenizer")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from tl_spec.errors import TLSpecError
from tl_spec.corpus import Corpus, Document, load_corpus
from tl_spec.zoo.evidence import induction_scores
from tl_spec.zoo.variant_models import FILE as VARIANT_FILE
from tl_spec.zoo.variant_models import VariantSpec, install

__all__ = [
    "TrainConfig",
    "copy_sequences",
    "deterministic",
    "heldout_loss",
    "induction_probe",
    "token_stream",
    "train_base",
    "train_tokenizer",
    "unigram_baseline",
]


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation of one zoo model (every field is part of its recipe)."""

    arch: str = "llama"  # "llama" (global attention) or "mistral" (sliding window)
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 8
    n_kv_heads: int = 8
    d_mlp: int = 192
    sliding_window: int | None = None
    ctx: int = 128
    steps: int = 3000
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 100
    seed: int = 0
    variant: dict[str, Any] | None = None  # an attention variant trained in (VariantSpec fields)
    # induction-head curriculum: a warm-up in which every row is a repeated random-token sequence
    # (copy_sequences), at most copy_warmup steps, ended early at the first check (every
    # copy_check steps) where some head's induction score reaches copy_until; afterwards
    # copy_frac of each batch (rounded) stays such sequences
    copy_warmup: int = 0
    copy_until: float | None = None
    copy_check: int = 50
    copy_frac: float = 0.0
    # this fraction of the text windows (rounded) starts at a document's <bos> (the others start
    # anywhere in the stream): copy rows start with <bos> too, and models must still learn that a
    # <bos> is mostly followed by text
    bos_frac: float = 0.0

    def __post_init__(self) -> None:
        for name in ("copy_frac", "bos_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise TLSpecError(f"TrainConfig.{name} is a fraction of each batch, between 0 and "
                                  f"1; got {value!r}")
        if self.copy_warmup < 0 or self.copy_check < 1:
            raise TLSpecError("TrainConfig.copy_warmup must be >= 0 steps and copy_check >= 1 "
                              f"step; got {self.copy_warmup!r} and {self.copy_check!r}")
        if self.copy_until is not None and not 0.0 < self.copy_until <= 1.0:
            raise TLSpecError("TrainConfig.copy_until is an induction score (an attention mass) in "
                              f"(0, 1], or None for a fixed warm-up; got {self.copy_until!r}")

    def hf_config(self, tokenizer: Any) -> Any:
        """The Hugging Face config of this architecture for ``tokenizer``."""
        import transformers as tf

        common = dict(vocab_size=len(tokenizer), hidden_size=self.d_model,
                      intermediate_size=self.d_mlp, num_hidden_layers=self.n_layers,
                      num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
                      max_position_embeddings=self.ctx, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        if self.arch == "mistral":
            return tf.MistralConfig(sliding_window=self.sliding_window, **common)
        if self.arch == "llama":
            return tf.LlamaConfig(**common)
        raise TLSpecError(f"unknown zoo architecture {self.arch!r}; use 'llama' or 'mistral'")


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    """Seeded, deterministic torch for the block; global RNG state and settings restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.set_num_threads(old_threads)


def train_tokenizer(corpus: Corpus, out_dir: str | Path, *, vocab_size: int = 2048) -> Any:
    """Byte-level BPE on the training documents, saved in Hugging Face format (BOS prepended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((d.text for d in corpus.train), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                      pad_token="<pad>")
    wrapped.save_pretrained(out_dir)
    return wrapped


def token_stream(tokenizer: Any, documents: Sequence[Document]) -> Int[np.ndarray, "n_tokens"]:
    """All documents as one stream: ``<bos> text <eos>`` each, in corpus order."""
    eos = tokenizer.eos_token_id
    parts = [np.array(tokenizer(d.text).input_ids + [eos], dtype=np.int64) for d in documents]
    return np.concatenate(parts)


def copy_sequences(
    rng: np.random.Generator, n: int, ctx: int, *, vocab_size: int, bos: int, first_id: int = 3,
    min_block: int = 8, max_block: int = 32,
) -> tuple[Int[torch.Tensor, "n ctx"], Int[torch.Tensor, "n ctx"]]:
    """``n`` copy-task rows: ``<bos>`` then a random block of ``min_block..max_block`` token ids
    (drawn uniformly from ``first_id..vocab_size-1``) repeated to fill ``ctx + 1`` tokens.

    Returns inputs and next-token labels; the labels of the first copy and of the second copy's
    first token (unpredictable from the context) are -100, so the loss rewards only copying.

    >>> x, y = copy_sequences(np.random.default_rng(0), 2, 40, vocab_size=100, bos=1)
    >>> x.shape, bool((x[:, 0] == 1).all()), bool((y[:, :9] == -100).all())
    (torch.Size([2, 40]), True, True)
    """
    rows, labels = [], []
    for _ in range(n):
        length = int(rng.integers(min_block, max_block + 1))
        block = rng.integers(first_id, vocab_size, size=length)
        seq = np.concatenate([[bos], np.tile(block, ctx // length + 2)])[: ctx + 1]
        target = seq[1:].copy()
        target[: length + 1] = -100
        rows.append(seq[:-1])
        labels.append(target)
    return torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(labels))


@torch.no_grad()
def induction_probe(model: Any, *, vocab_size: int, bos: int) -> float:
    """Best induction score of a Hugging Face model (eager attention), by the rule and on the
    sequences of :func:`tl_spec.zoo.evidence.induction_scores`; its own generator, so training
    draws are untouched.
    """
    was_training = model.training
    model.eval()
    scores = induction_scores(lambda x: model(input_ids=x, output_attentions=True).attentions,
                              vocab_size=vocab_size, bos=bos)
    model.train(was_training)
    return float(scores.max())


def unigram_baseline(train: np.ndarray, heldout: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of add-one smoothed unigram frequencies on held-out tokens."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[heldout[1:]].mean())


@torch.no_grad()
def heldout_loss(model: Any, stream: np.ndarray, *, ctx: int, batch_size: int = 32) -> float:
    """Mean next-token NLL (nats) over non-overlapping ``ctx`` windows of ``stream``."""
    n = (len(stream) - 1) // ctx
    windows = torch.from_numpy(stream[: n * ctx + 1])
    total, count = 0.0, 0
    model.eval()
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        x = torch.stack([windows[i * ctx : (i + 1) * ctx] for i in idx])
        y = torch.stack([windows[i * ctx + 1 : (i + 1) * ctx + 1] for i in idx])
        logits = model(input_ids=x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                reduction="sum")
        total, count = total + float(nll), count + y.numel()
    return total / count


def train_base(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    corpus: Corpus | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train one base model from ``config.seed`` and save it (with the tokenizer) in ``out_dir``.

    Returns the metrics recorded with the model: held-out loss, unigram baseline, training time.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    corpus = corpus or load_corpus()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    train = token_stream(tokenizer, corpus.train)
    heldout = token_stream(tokenizer, corpus.heldout)
    start_time = time.perf_counter()
    with deterministic(config.seed, threads):
        model = AutoModelForCausalLM.from_config(config.hf_config(tokenizer),
                                                 attn_implementation="eager")
        spec = None
        if config.variant is not None:
            spec = VariantSpec(**config.variant)
            install(model, spec)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, betas=(0.9, 0.95))
        sched = get_cosine_schedule_with_warmup(opt, config.warmup, config.steps)
        rng = np.random.default_rng(config.seed)
        data = torch.from_numpy(train)
        doc_starts = np.flatnonzero(train[: len(train) - config.ctx - 1] == tokenizer.bos_token_id)
        steps: Any = range(config.steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"train {Path(out_dir).name}", unit="step", leave=False)
        model.train()
        loss_value = math.nan
        n_copy = round(config.copy_frac * config.batch_size)
        warm_end = config.copy_warmup  # the step the copy-only warm-up ended (at most copy_warmup)
        for step in steps:
            if (config.copy_until is not None and step < warm_end and step > 0
                    and step % config.copy_check == 0
                    and induction_probe(model, vocab_size=len(tokenizer),
                                        bos=tokenizer.bos_token_id) >= config.copy_until):
                warm_end = step
            copies = config.batch_size if step < warm_end else n_copy
            n_text = config.batch_size - copies
            n_bos = round(config.bos_frac * n_text)
            starts = rng.integers(0, len(train) - config.ctx - 1, size=n_text - n_bos)
            if n_bos:
                starts = np.concatenate([rng.choice(doc_starts, size=n_bos), starts])
            xs = [data[s : s + config.ctx] for s in starts]
            ys = [data[s + 1 : s + config.ctx + 1] for s in starts]
            if copies:
                cx, cy = copy_sequences(rng, copies, config.ctx, vocab_size=len(tokenizer),
                                        bos=tokenizer.bos_token_id)
                xs, ys = xs + list(cx), ys + list(cy)
            x, y = torch.stack(xs), torch.stack(ys)
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     y.reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
            if progress and step % 50 == 0:
                steps.set_postfix(loss=f"{loss_value:.3f}")
        seconds = time.perf_counter() - start_time
        held = heldout_loss(model, heldout, ctx=config.ctx)
    if spec is not None:
        model.config._attn_implementation = "eager"  # the variant file, not the config, carries it
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if spec is not None:
        (Path(out_dir) / VARIANT_FILE).write_text(spec.to_json() + "\n")
    return {
        "config": asdict(config),
        "train_loss_last_batch": loss_value,
        "heldout_loss": held,
        "unigram_baseline": unigram_baseline(train, heldout, len(tokenizer)),
        "train_tokens": int(len(train)),
        "heldout_tokens": int(len(heldout)),
        "train_seconds": seconds,
        "copy_warmup_steps": warm_end,
        "threads": torch.get_num_threads() if threads is None else threads,
    }
