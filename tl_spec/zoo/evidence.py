"""Evidence that a model learned something: previous-token and induction scores per head.

Measured scores (both backends), in the spirit of TransformerLens' head detector:

- ``previous_token``: mean attention from each query to the token just before it, over the real
  tokens of natural text (held-out corpus documents);
- ``induction``: on sequences made of a random token block repeated twice, mean attention from
  each token of the second copy to the token that followed its earlier occurrence.

:func:`repeat_losses` asks whether the induction heads are used on text: the next-token loss on a
span of held-out text and on the same span repeated right after it.

>>> scores = head_scores(model)                       # doctest: +SKIP
>>> scores["induction"].max() > 0.3                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from tl_spec.names import hook_name
from tl_spec.corpus import load_corpus

__all__ = ["head_scores", "induction_scores", "repeat_losses"]


def _patterns(model: Any, tokens: torch.Tensor) -> list[torch.Tensor]:
    grabbed: dict[int, torch.Tensor] = {}
    hooks = [(hook_name("pattern", layer),
              lambda x, hook, layer=layer: grabbed.__setitem__(layer, x.detach().float()))
             for layer in range(int(model.cfg.n_layers))]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        model(tokens, return_type=None)
    return [grabbed[layer] for layer in range(len(grabbed))]


def _heldout_docs(n_texts: int) -> list[str]:
    return [d.text for d in load_corpus().heldout if len(d.text) > 400][:n_texts]


def induction_scores(
    attend: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    *,
    vocab_size: int,
    bos: int,
    n_repeats: int = 8,
    block: int = 24,
    seed: int = 0,
) -> Float[np.ndarray, "n_layers n_heads"]:
    """Induction score of every head: on ``<bos>`` + a random block (ids ``10..vocab_size-1``)
    + the same block, the mean attention of the second copy's tokens to the token after their
    earlier occurrence, averaged over ``n_repeats`` blocks (drawn with their own generator).

    ``attend(tokens)`` runs the model on ``[1, 2 * block + 1]`` tokens and returns one attention
    pattern ``[1, heads, query, key]`` per layer, from TransformerLens hooks (:func:`head_scores`)
    or Hugging Face ``output_attentions`` (the zoo's training-time probe).

    >>> uniform = lambda t: [torch.tril(torch.ones(1, 2, 49, 49)) / torch.arange(1, 50)[:, None]]
    >>> scores = induction_scores(uniform, vocab_size=100, bos=1)   # 1 layer, 2 heads
    >>> scores.shape, round(float(scores[0, 0]), 3)      # mean of 1/26 .. 1/49
    ((1, 2), 0.028)
    """
    gen = torch.Generator().manual_seed(seed)
    # second copy: positions block+1 .. 2*block; the earlier occurrence of position i is
    # i - block, and the token after it is i - block + 1
    q = torch.arange(block + 1, 2 * block + 1)
    scores = []
    for _ in range(n_repeats):
        rand = torch.randint(10, vocab_size, (block,), generator=gen)
        patterns = attend(torch.cat([torch.tensor([bos]), rand, rand])[None])
        scores.append(torch.stack([p[0][:, q, q - block + 1].float().mean(-1).cpu()
                                   for p in patterns]))
    return torch.stack(scores).mean(0).numpy()


def head_scores(
    model: Any,
    *,
    n_texts: int = 16,
    text_tokens: int = 64,
    n_repeats: int = 8,
    block: int = 24,
    seed: int = 0,
) -> dict[str, Float[np.ndarray, "n_layers n_heads"]]:
    """Previous-token and induction score of every head, ``[layers, heads]`` each.

    >>> head_scores(model)["previous_token"].shape  # doctest: +SKIP
    (4, 8)
    """
    prev = []
    for text in _heldout_docs(n_texts):
        tokens = model.to_tokens(text)[:, :text_tokens]
        pats = _patterns(model, tokens)
        prev.append([p[0].diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).cpu().numpy()
                     for p in pats])
    induction = induction_scores(lambda tokens: _patterns(model, tokens),
                                 vocab_size=int(model.cfg.d_vocab),
                                 bos=int(model.to_tokens("")[0, 0]), n_repeats=n_repeats,
                                 block=block, seed=seed)
    return {"previous_token": np.mean(np.array(prev), axis=0), "induction": induction}


def repeat_losses(model: Any, *, n_texts: int = 32, span: int = 32) -> dict[str, float]:
    """Mean next-token loss (nats) on the first and the second copy of held-out text spans.

    Each sequence is ``<bos>`` + ``span`` tokens of a held-out document + the same tokens again;
    a model that copies in context predicts the second copy far better than the first.

    >>> losses = repeat_losses(model)                    # doctest: +SKIP
    >>> losses["second"] < losses["first"]                # doctest: +SKIP
    True
    """
    first, second = [], []
    for text in _heldout_docs(n_texts):
        tokens = model.to_tokens(text)[:, : span + 1]
        seq = torch.cat([tokens, tokens[:, 1:]], dim=1)
        with torch.inference_mode():
            logits = model(seq, return_type="logits").float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], seq[0, 1:], reduction="none")
        # targets 1..span are the first copy; span+2.. the second (its first token is unpredictable)
        first.append(float(nll[:span].mean()))
        second.append(float(nll[span + 1 :].mean()))
    return {"first": float(np.mean(first)), "second": float(np.mean(second))}
