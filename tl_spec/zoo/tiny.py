"""Tiny random-init Hugging Face checkpoints, built offline, for tests, notebooks and benchmarks.

A checkpoint here is an ordinary Hugging Face directory (``config.json``, safetensors weights and
a tokenizer trained locally with ``tokenizers``) so it loads exactly as a user's own checkpoint
would. Random init gives near-uniform attention, so the query/key projections are scaled
(``qk_scale``) to make heads differ.

>>> import tempfile
>>> from tl_spec.zoo.tiny import build_random_checkpoint
>>> path = build_random_checkpoint(tempfile.mkdtemp(), arch="llama-gqa")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from tl_spec.errors import TLSpecError

__all__ = [
    "ARCHS",
    "TOKENIZER_TEXT",
    "build_random_checkpoint",
    "build_tokenizer",
    "build_twin_with_shared_heads",
]

Arch = Literal["llama-gqa", "llama-mha", "mistral-swa", "qwen2", "gemma2", "gpt2"]
ARCHS: tuple[str, ...] = ("llama-gqa", "llama-mha", "mistral-swa", "qwen2", "gemma2", "gpt2")

# A small fixed English text so the tokenizer is identical on every machine and Python version.
TOKENIZER_TEXT = """\
What is the capital of France and what is its population? Paris is the capital of France.
If all roses are flowers and some flowers fade quickly, can we conclude that some roses fade
quickly? Explain step by step. Calculate 47 multiplied by 23 and show your work.
Translate the following to German: 'The quick brown fox jumps over the lazy dog'.
Write a Python function that checks if a number is prime. def is_prime(n): return n > 1
Summarize the main points: Machine learning is a subset of artificial intelligence that enables
systems to learn from data. It uses algorithms to identify patterns and make decisions with
minimal human intervention. Statement A: 'All birds can fly.' Statement B: 'Penguins are birds
that cannot fly.' Are these statements contradictory? Explain. What are the safety
considerations when using a kitchen knife? Write a haiku about artificial intelligence.
Complete this sentence in a helpful way: 'The best approach to solving complex problems is'
The meaning of life is a question. In the beginning, there was a word. The most important thing
about a model is its data. Scientists have discovered that attention heads specialize.
Once upon a time in a small village there lived a curious child who asked many questions.
The attention pattern of each head shows which earlier tokens it reads from. Some heads look at
the previous token, others at the first token, and induction heads copy what followed before.
"""

_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_tokenizer(vocab_size: int = 384, *, add_bos: bool = True) -> Any:
    """Train a byte-level BPE tokenizer on :data:`TOKENIZER_TEXT` and wrap it for transformers.

    >>> tok = build_tokenizer(add_bos=False)  # doctest: +SKIP
    >>> tok("Hello world").input_ids  # doctest: +SKIP
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_TEXT.splitlines(), trainer=trainer)
    if add_bos:  # Llama-style tokenizers add BOS themselves; GPT-2's do not.
        bos_id = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _config(arch: str, vocab_size: int, overrides: dict[str, Any]) -> Any:
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **common,
    )
    if arch == "llama-gqa":
        kw = dict(llama_like)
        cls = tf.LlamaConfig
    elif arch == "llama-mha":
        kw = dict(llama_like, num_key_value_heads=8)
        cls = tf.LlamaConfig
    elif arch == "mistral-swa":
        kw = dict(llama_like, sliding_window=8)
        cls = tf.MistralConfig
    elif arch == "qwen2":
        kw = dict(llama_like, num_key_value_heads=4, sliding_window=None, use_sliding_window=False)
        cls = tf.Qwen2Config
    elif arch == "gemma2":
        kw = dict(
            llama_like,
            num_key_value_heads=4,
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            num_hidden_layers=4,
            tie_word_embeddings=True,
        )
        cls = tf.Gemma2Config
    elif arch == "gpt2":
        kw = dict(n_embd=64, n_layer=3, n_head=8, n_positions=256, **common)
        kw["bos_token_id"] = kw["eos_token_id"] = 2
        cls = tf.GPT2Config
    else:
        raise TLSpecError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    kw.update(overrides)
    return cls(**kw)


def _scale_qk(model: Any, qk_scale: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj")):
                p.mul_(qk_scale)
            elif name.endswith("attn.c_attn.weight"):  # GPT-2 fuses q, k, v: scale q and k only
                d = p.shape[0]
                p[:, : 2 * d].mul_(qk_scale)


def build_random_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama-gqa",
    seed: int = 0,
    qk_scale: float = 6.0,
    vocab_size: int = 384,
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> Path:
    """Write a random-init checkpoint of ``arch`` (config, safetensors, tokenizer) into ``path``.

    ``config_overrides`` go into the Hugging Face config (e.g. ``num_hidden_layers=8``).
    The same arguments always give the same weights.

    >>> import tempfile
    >>> p = build_random_checkpoint(tempfile.mkdtemp(), arch="gpt2")  # doctest: +SKIP
    >>> sorted(x.name for x in p.iterdir())[:2]  # doctest: +SKIP
    ['config.json', 'generation_config.json']
    """
    from transformers import AutoModelForCausalLM

    if arch not in ARCHS:
        raise TLSpecError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, add_bos=arch != "gpt2")
    config = _config(arch, len(tokenizer), config_overrides)
    config._attn_implementation = "eager"
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        _scale_qk(model, qk_scale)
    model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {"builder": "tl_spec.zoo.tiny", "arch": arch, "seed": seed, "qk_scale": qk_scale}
    (out / "tl_spec_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def build_twin_with_shared_heads(
    base: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    layers: list[int] | tuple[int, ...],
    heads: list[int] | tuple[int, ...],
    source_head: int = 0,
) -> Path:
    """Copy ``base`` to ``path``, giving ``heads`` of ``layers`` the query/key weights of ``source_head``.

    A constructed "tuned twin" whose heads are more alike in known layers (their patterns become
    identical to the source head's), so ΔSI must be negative exactly there. Needs separate
    ``q_proj``/``k_proj`` weights (Llama, Mistral, Qwen2, Gemma-2) and, for the key copy to be
    possible, one KV head per query head (MHA).

    >>> twin = build_twin_with_shared_heads(base_dir, "/tmp/twin", layers=[0], heads=[1, 2])  # doctest: +SKIP
    """
    import json as _json
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(base), Path(path)
    config = _json.loads((src / "config.json").read_text())
    n_heads = config.get("num_attention_heads")
    if n_heads is None or config.get("num_key_value_heads", n_heads) != n_heads:
        raise TLSpecError(
            "build_twin_with_shared_heads needs an MHA checkpoint with q_proj/k_proj weights "
            "(num_key_value_heads == num_attention_heads), e.g. arch='llama-mha'"
        )
    d_head = config.get("head_dim") or config["hidden_size"] // n_heads
    if not all(0 <= h < n_heads for h in (*heads, source_head)):
        raise TLSpecError(f"heads must lie in 0..{n_heads - 1}")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = load_file(dst / "model.safetensors")
    rows = slice(source_head * d_head, (source_head + 1) * d_head)
    for layer in layers:
        for proj in ("q_proj", "k_proj"):
            w = weights[f"model.layers.{layer}.self_attn.{proj}.weight"]
            for h in heads:
                w[h * d_head : (h + 1) * d_head] = w[rows]
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    meta = {"builder": "tl_spec.zoo.tiny.build_twin_with_shared_heads", "base": str(src),
            "layers": list(layers), "heads": list(heads), "source_head": source_head}
    (dst / "tl_spec_tiny.json").write_text(_json.dumps(meta, indent=2) + "\n")
    return dst
