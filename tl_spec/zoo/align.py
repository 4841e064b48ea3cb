"""Aligned twins of a zoo base model: supervised fine-tuning (SFT) and DPO, deterministic per seed.

Documents become instruction/response pairs by :func:`instruction_examples` (format
:data:`INSTRUCTION_TEMPLATE`), examples become preference pairs by :func:`preference_pairs` (rule
:data:`PREFERENCE_RULE`), and :func:`train_sft` / :func:`train_dpo` fine-tune a Hugging Face
checkpoint directory into a new one with plain PyTorch (``AdamW``, cosine schedule, linear warmup
over WARMUP_FRACTION of the steps, gradient norm clipped at MAX_GRAD_NORM). Batches come from a
``torch.Generator`` seeded with ``seed`` and global RNG state is forked and restored, so a seed
gives bitwise-identical weights (same machine and thread count).

>>> import torch
>>> loss, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]),
...                         torch.tensor([-1.0]), torch.tensor([-2.0]))
>>> round(loss.item(), 6)  # policy == reference: log 2
0.693147
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_spec.errors import TLSpecError

__all__ = [
    "INSTRUCTION_TEMPLATE", "MAX_RESPONSE_CHARS", "MIN_RESPONSE_CHARS", "PREFERENCE_RULE",
    "Example", "Pair", "dpo_loss", "instruction_examples", "preference_pairs", "sequence_logps",
    "train_dpo", "train_sft",
]

#: The prompt of every example; ``{title}`` is the document's title.
INSTRUCTION_TEMPLATE = "### Instruction:\nExplain {title}.\n\n### Response:\n"
#: Responses are trimmed to at most this many characters, at a sentence end where there is one.
MAX_RESPONSE_CHARS = 400
#: Documents whose (trimmed) response is shorter than this are skipped.
MIN_RESPONSE_CHARS = 80
#: THE preference rule, recorded verbatim in every :class:`Pair`.
PREFERENCE_RULE = (
    "chosen = the example's own response; rejected = the response of another example, drawn "
    "uniformly (rejection sampling, numpy default_rng(seed)) among examples whose response "
    "differs: a relevant vs an irrelevant answer to the same prompt"
)
WARMUP_FRACTION = 0.1
MAX_GRAD_NORM = 1.0
_HEADING_UNDERLINE = re.compile(r"^[*=\-~^#]{3,}$")
_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_VERSION_NOTES = ("New in version", "Changed in version", "Deprecated since version")


@dataclass(frozen=True)
class Example:
    """One instruction example: the formatted ``prompt``, the ``response`` and the document id."""

    prompt: str
    response: str
    source_id: str


@dataclass(frozen=True)
class Pair:
    """One preference pair: ``prompt``, ``chosen`` and ``rejected`` responses, and the ``rule``."""

    prompt: str
    chosen: str
    rejected: str
    rule: str


def _is_prose(block: str) -> bool:
    lines = block.splitlines()
    heading = any(_HEADING_UNDERLINE.match(line.strip()) for line in lines)
    return bool(lines) and not lines[0][:1].isspace() and not heading


def _leading_prose(text: str) -> str:
    """Consecutive prose blocks from the first one, version notes skipped, lines joined."""
    kept: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.strip().startswith(_VERSION_NOTES):
            continue
        if not _is_prose(block):
            if kept:
                break
            continue
        kept.append(" ".join(line.strip() for line in block.splitlines()))
        if sum(len(k) + 1 for k in kept) > MAX_RESPONSE_CHARS:
            break
    return " ".join(kept)


def _trim(paragraph: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    if len(paragraph) <= limit:
        return paragraph
    head = paragraph[: limit + 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends:
        return head[: ends[-1]]
    return head[: head.rstrip().rfind(" ")].rstrip() if " " in head else head[:limit]


def instruction_examples(
    documents: Sequence[Any], *, n: int | None = None, seed: int = 0
) -> list[Example]:
    """Turn documents into instruction examples, in a seeded order; keep the first ``n``.

    The rule: prompt = ``INSTRUCTION_TEMPLATE.format(title=doc.title)``; response = the
    document's leading prose: blank-line-separated blocks from the first prose block (one not
    indented, i.e. not code or grammar, and not a heading underlined with ``*``/``=``/``-``) up
    to the next non-prose block, "New/Changed in version" notes skipped, lines joined by single
    spaces; trimmed to <= MAX_RESPONSE_CHARS at the last sentence end (``.``/``!``/``?`` before
    whitespace) or, without one, at the last space. Documents whose response has fewer than
    MIN_RESPONSE_CHARS characters are skipped. The kept examples are shuffled by
    ``numpy.random.default_rng(seed)``, so ``seed`` picks which ``n`` are kept.

    >>> from tl_spec.corpus import Document
    >>> doc = Document("topic:x", "x", "The x statement\\n***\\n\\n" + "X does things. " * 10)
    >>> ex = instruction_examples([doc])[0]
    >>> print(ex.prompt + ex.response[:14])
    ### Instruction:
    Explain x.
    <BLANKLINE>
    ### Response:
    X does things.
    """
    if n is not None and n < 0:
        raise TLSpecError(f"n must be >= 0 or None, got {n}")
    examples = []
    for doc in documents:
        paragraph = _trim(_leading_prose(doc.text))
        if len(paragraph) < MIN_RESPONSE_CHARS:
            continue
        examples.append(Example(INSTRUCTION_TEMPLATE.format(title=doc.title), paragraph, doc.id))
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order[:n]]


def preference_pairs(examples: Sequence[Example], *, seed: int = 0) -> list[Pair]:
    """One preference pair per example, by :data:`PREFERENCE_RULE`, deterministic for ``seed``.

    The rule: chosen = the example's own response; rejected = the response of another example,
    drawn uniformly by ``numpy.random.default_rng(seed)`` (rejection sampling, examples in order)
    among those whose response differs from the chosen one.

    >>> exs = [Example("Q1", "A1", "a"), Example("Q2", "A2", "b")]
    >>> [(p.chosen, p.rejected) for p in preference_pairs(exs)]
    [('A1', 'A2'), ('A2', 'A1')]
    """
    responses = [ex.response for ex in examples]
    if len(set(responses)) < 2:
        raise TLSpecError(
            f"preference_pairs needs at least 2 distinct responses, got {len(set(responses))} "
            f"among {len(responses)} examples"
        )
    rng = np.random.default_rng(seed)
    pairs = []
    for ex in examples:
        j = int(rng.integers(len(examples)))
        while responses[j] == ex.response:
            j = int(rng.integers(len(examples)))
        pairs.append(Pair(ex.prompt, ex.response, responses[j], PREFERENCE_RULE))
    return pairs


def dpo_loss(
    policy_chosen_logps: Float[Tensor, " batch"],
    policy_rejected_logps: Float[Tensor, " batch"],
    ref_chosen_logps: Float[Tensor, " batch"],
    ref_rejected_logps: Float[Tensor, " batch"],
    *,
    beta: float = 0.1,
) -> tuple[Float[Tensor, ""], Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """The DPO objective (Rafailov et al. 2023, Eq. 7) and the implicit rewards beta * (pi - ref).

    loss = -mean(log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))); the rewards are
    detached.

    >>> loss, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
    ...                         torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    >>> round(loss.item(), 6), rc.item(), rr.item()  # -log sigmoid(1)
    (0.313262, 0.5, -0.5)
    """
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if len({t.shape for t in logps}) != 1 or logps[0].dim() != 1:
        shapes = [tuple(t.shape) for t in logps]
        raise TLSpecError(f"dpo_loss needs four 1-d tensors of one shape [batch], got {shapes}")
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def _encode(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> tuple[Int[Tensor, "batch seq"], Bool[Tensor, "batch seq"], Bool[Tensor, "batch seq"]]:
    """Right-padded ``prompt + response + EOS`` ids, the attention mask and the response mask."""
    if len(prompts) != len(responses) or not prompts:
        raise TLSpecError(f"need as many prompts as responses (> 0), got {len(prompts)} and "
                          f"{len(responses)}")
    if tokenizer.eos_token_id is None:
        raise TLSpecError("the tokenizer has no eos_token; responses must end with EOS")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows = []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        if len(p) >= max_length:
            raise TLSpecError(f"a prompt of {len(p)} tokens leaves no room for its response "
                              f"within max_length={max_length}; raise max_length")
        rows.append((p, (r + [tokenizer.eos_token_id])[: max_length - len(p)]))
    starts, ends = (torch.tensor([len(p) + k * len(r) for p, r in rows])[:, None] for k in (0, 1))
    ids = torch.full((len(rows), int(ends.max())), pad, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
    position = torch.arange(ids.shape[1])
    return ids, position < ends, (position >= starts) & (position < ends)


def _token_logps(model: Any, ids: Int[Tensor, "batch seq"], attention: Bool[Tensor, "batch seq"],
                 response: Bool[Tensor, "batch seq"]
                 ) -> tuple[Float[Tensor, "batch seq_1"], Bool[Tensor, "batch seq_1"]]:
    """Log-probability of each next token (position t predicts t + 1) and the response mask."""
    logits = model(input_ids=ids, attention_mask=attention.long()).logits[:, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = response[:, 1:]
    return logps.masked_fill(~mask, 0.0), mask


def sequence_logps(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int = 128,
) -> Float[Tensor, " batch"]:
    """Sum of log p(response tokens + EOS | prompt) per example; prompt tokens are masked out.

    Prompts are tokenized with the tokenizer's special tokens (BOS), responses without, then
    ``EOS`` is appended; rows are right-padded with an attention mask and truncated (response
    side) to ``max_length`` tokens. Gradients flow when the model is in grad mode.

    >>> lp = sequence_logps(model, tokenizer, ["Q: 1+1?\\n"], ["2"])  # doctest: +SKIP
    >>> lp.shape  # doctest: +SKIP
    torch.Size([1])
    """
    device = next(model.parameters()).device
    enc = (t.to(device) for t in _encode(tokenizer, prompts, responses, max_length))
    return _token_logps(model, *enc)[0].sum(-1)


def _load(model_dir: str | os.PathLike[str]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise TLSpecError(f"{model_dir!s} is not a Hugging Face checkpoint (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # float32 on CPU, any transformers
    return model.to("cpu", torch.float32), AutoTokenizer.from_pretrained(model_dir)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Index batches from a ``torch.Generator`` seeded by ``seed``, a new permutation per epoch."""
    if n < 1 or batch_size < 1:
        raise TLSpecError(f"need >= 1 training item and batch_size >= 1, got {n}, {batch_size}")
    gen, size = torch.Generator().manual_seed(seed), min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        yield from (order[i : i + size] for i in range(0, n - size + 1, size))


def _run(model: Any, steps: int, lr: float, seed: int, n: int, batch_size: int, step_loss: Any,
         desc: str, progress: bool) -> list[float]:
    """The shared loop: AdamW, cosine schedule, clipping, seeded batches, deterministic kernels."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if steps < 1:
        raise TLSpecError(f"steps must be >= 1, got {steps}")
    batches = _batches(n, batch_size, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = math.ceil(WARMUP_FRACTION * steps)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    losses = []
    model.train()
    try:
        torch.use_deterministic_algorithms(True)
        bar = tqdm(range(steps), desc=desc, disable=not progress)
        for _ in bar:
            loss = step_loss(next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    model.eval()
    return losses


def _save(model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], record: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "tl_spec_align.json").write_text(json.dumps(record, indent=2) + "\n")


def _chunks(n: int, size: int = 32) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _nll(model: Any, tokenizer: Any, examples: Sequence[Example], max_length: int
         ) -> tuple[Float[Tensor, ""], int]:
    """Summed next-token NLL of the responses (+ EOS) given their prompts, and the token count."""
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]
    logps, mask = _token_logps(model, *_encode(tokenizer, prompts, responses, max_length))
    return -logps.sum(), int(mask.sum())


@torch.no_grad()
def _mean_nll(model: Any, tokenizer: Any, examples: Sequence[Example], max_length: int) -> float:
    parts = [_nll(model, tokenizer, [examples[i] for i in idx], max_length)
             for idx in _chunks(len(examples))]
    return sum(total.item() for total, _ in parts) / sum(count for _, count in parts)


def train_sft(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    *,
    seed: int,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 16,
    max_length: int = 128,
    eval_examples: Sequence[Example] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Supervised fine-tuning: mean next-token NLL over response tokens (+ EOS) only.

    Writes the tuned checkpoint (and ``tl_spec_align.json`` with settings and metrics) into
    ``out_dir`` and returns the metrics: ``loss_final``, ``losses`` (per step) and, given
    ``eval_examples``, the mean per-token response NLL ``eval_nll_before`` / ``eval_nll_after``.

    >>> m = train_sft(base_dir, "/tmp/sft", examples, seed=0, steps=20)  # doctest: +SKIP
    >>> m["eval_nll_after"] < m["eval_nll_before"]  # doctest: +SKIP
    True
    """
    examples = list(examples)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = _load(model_dir)
        metrics: dict[str, Any] = {}
        if eval_examples:
            metrics["eval_nll_before"] = _mean_nll(model.eval(), tokenizer, eval_examples,
                                                   max_length)

        def step_loss(idx: list[int]) -> Tensor:
            total, count = _nll(model, tokenizer, [examples[i] for i in idx], max_length)
            return total / count

        losses = _run(model, steps, lr, seed, len(examples), batch_size, step_loss, "SFT", progress)
        if eval_examples:
            metrics["eval_nll_after"] = _mean_nll(model, tokenizer, eval_examples, max_length)
    metrics.update(loss_final=losses[-1], losses=losses)
    settings = {"method": "sft", "base": str(model_dir), "seed": seed, "steps": steps, "lr": lr,
                "batch_size": batch_size, "max_length": max_length, "n_examples": len(examples),
                "template": INSTRUCTION_TEMPLATE, "warmup_fraction": WARMUP_FRACTION}
    _save(model, tokenizer, out_dir, {"settings": settings, "metrics": metrics})
    return metrics


def train_dpo(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    pairs: Sequence[Pair],
    *,
    seed: int,
    steps: int = 300,
    beta: float = 0.1,
    lr: float = 5e-4,
    batch_size: int = 8,
    max_length: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Direct preference optimization against the frozen starting model as reference.

    Chosen and rejected responses go through the policy in one batch. Returns (and writes into
    ``out_dir/tl_spec_align.json``) ``loss_final``, ``losses``, and on all training pairs after
    training ``reward_margin`` (mean of chosen minus rejected reward) and ``accuracy`` (fraction
    with chosen reward > rejected reward).

    >>> pairs = preference_pairs(examples)  # doctest: +SKIP
    >>> m = train_dpo(sft_dir, "/tmp/dpo", pairs, seed=0, steps=20)  # doctest: +SKIP
    >>> m["accuracy"] > 0.5  # doctest: +SKIP
    True
    """
    pairs = list(pairs)

    def logps(net: Any, idx: list[int]) -> tuple[Tensor, Tensor]:
        batch = [pairs[i] for i in idx]
        prompts = [p.prompt for p in batch]
        both = sequence_logps(net, tokenizer, prompts + prompts,
                              [p.chosen for p in batch] + [p.rejected for p in batch],
                              max_length=max_length)
        return both[: len(batch)], both[len(batch) :]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = _load(model_dir)
        reference = _load(model_dir)[0].eval().requires_grad_(False)

        def step_loss(idx: list[int]) -> Tensor:
            with torch.no_grad():
                ref_c, ref_r = logps(reference, idx)
            return dpo_loss(*logps(model, idx), ref_c, ref_r, beta=beta)[0]

        losses = _run(model, steps, lr, seed, len(pairs), batch_size, step_loss, "DPO", progress)
        margins = []
        with torch.no_grad():
            for idx in _chunks(len(pairs)):
                _, rc, rr = dpo_loss(*logps(model, idx), *logps(reference, idx), beta=beta)
                margins.append(rc - rr)
    margin = torch.cat(margins)
    metrics = {"loss_final": losses[-1], "losses": losses, "reward_margin": margin.mean().item(),
               "accuracy": (margin > 0).float().mean().item()}
    settings = {"method": "dpo", "base": str(model_dir), "seed": seed, "steps": steps,
                "beta": beta, "lr": lr, "batch_size": batch_size, "max_length": max_length,
                "n_pairs": len(pairs), "rules": sorted({p.rule for p in pairs}),
                "warmup_fraction": WARMUP_FRACTION}
    _save(model, tokenizer, out_dir, {"settings": settings, "metrics": metrics})
    return metrics

