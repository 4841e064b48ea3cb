"""Prompt inputs (text or token ids), tokenization, truncation, length-bucketed padded batches.

Every experiment takes its prompts through :func:`prepare_inputs`: a list of strings (or a
:class:`~tl_spec.prompts.PromptSet`) is tokenized one prompt at a time with the model's own
``to_tokens`` (so BOS follows the model's TransformerLens default unless told otherwise); a
``[batch, pos]`` integer tensor (with an optional ``attention_mask``, any padding side) or a list
of 1-D tensors is used as given, so no tokenizer is needed. Either way prompts are truncated to
``max_length`` with a warning, and the token ids are hashed for provenance. Batches are then
grouped by length and padded, with an attention mask (1 = real token).

>>> tok = tokenize(model, ["Hello world"], max_length=128)  # doctest: +SKIP
>>> for idx, tokens, mask in batches(tok, batch_size=8, pad_id=0): ...  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.options.si import ROUTES_WITH_PAD_ROWS, PaddingSide
from tl_spec.prompts import PromptSet, as_prompt_set

__all__ = [
    "Inputs",
    "PaddingSide",
    "PromptInput",
    "Tokenized",
    "batches",
    "pad_batch",
    "pad_id",
    "plan_batches",
    "prepare_inputs",
    "real_spans",
    "real_tokens",
    "route_inputs",
    "token_ids_sha256",
    "tokenize",
    "validate_prompts",
]

#: What every experiment accepts as prompts: strings, a PromptSet, a ``[batch, pos]`` integer
#: tensor (with an optional attention mask) or a list of 1-D integer tensors.
PromptInput = Any


@dataclass(frozen=True)
class Tokenized:
    """Token ids per prompt (after truncation), and how many prompts were truncated.

    ``pad_to`` (with ``pad_token`` and ``pad_side``) is set by a reproduction route
    (:func:`route_inputs`): every batch is then padded to exactly ``pad_to`` positions with that
    id on that side, as the paper's notebooks did, whatever the batch's own lengths.
    """

    ids: tuple[tuple[int, ...], ...]
    n_truncated: int
    prepend_bos: bool | None  # None: token ids given by the caller, used as they are
    max_length: int
    route: str = "tl_spec"
    pad_to: int | None = None
    pad_token: int | None = None
    pad_side: PaddingSide | None = None

    @property
    def lengths(self) -> tuple[int, ...]:
        """Number of tokens of each prompt."""
        return tuple(len(x) for x in self.ids)

    @property
    def norm_lengths(self) -> tuple[int, ...]:
        """The ``n`` of each prompt's ln(n) in ``normalized_entropy``: the real length, or the
        padded length on a route that averages the pad rows in (``metrics_py``: ln 128).

        >>> Tokenized(((1, 2, 3),), 0, None, 8).norm_lengths
        (3,)
        """
        if self.pad_to is not None and self.route in ROUTES_WITH_PAD_ROWS:
            return (self.pad_to,) * len(self.ids)
        return self.lengths


def validate_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Check ``prompts`` is a non-empty sequence of non-empty strings; return it as a list.

    >>> validate_prompts(["a", "b"])
    ['a', 'b']
    """
    if isinstance(prompts, str):
        raise TLSpecError(
            "prompts must be a list of strings, got a single string; wrap it: [prompt]"
        )
    prompts = list(prompts)
    if not prompts:
        raise TLSpecError(
            "the prompt list is empty; pass at least one prompt (e.g. tl_spec.prompts.STANDARD_10)"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise TLSpecError(f"prompt {i} is {p!r}; every prompt must be a non-empty string")
    return prompts


def tokenize(
    model: Any,
    prompts: Sequence[str],
    *,
    max_length: int,
    prepend_bos: bool | None = None,
    min_tokens: int = 2,
) -> Tokenized:
    """Tokenize each prompt with ``model.to_tokens``, truncate to ``max_length``, check lengths.

    Raises before any forward pass if a prompt has fewer than ``min_tokens`` tokens.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise TLSpecError(
            f"max_length must be an integer >= 2 (a pattern needs two tokens), got {max_length!r}"
        )
    if prepend_bos is None:
        prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", True))
    kwargs: dict[str, Any] = {"prepend_bos": prepend_bos, "move_to_device": False}
    if "truncate" in inspect.signature(model.to_tokens).parameters:
        kwargs["truncate"] = False
    rows = [model.to_tokens(prompt, **kwargs)[0].tolist() for prompt in prompts]

    def too_short(i: int, n: int) -> str:
        return (f"prompt {i} ({prompts[i]!r}) has {n} token(s) with prepend_bos={prepend_bos}; "
                f"attention statistics need at least {min_tokens}. Use a longer prompt or "
                "prepend_bos=True.")

    ids, truncated = _truncated(rows, max_length, min_tokens, too_short, n_ctx=_n_ctx(model))
    return Tokenized(tuple(ids), truncated, prepend_bos, max_length)


def token_ids_sha256(ids: Sequence[Sequence[int]]) -> str:
    """SHA-256 of token ids: rows of comma-joined decimal ids, joined by newlines.

    >>> token_ids_sha256([[1, 2], [3]]) == hashlib.sha256(b"1,2\\n3").hexdigest()
    True
    """
    text = "\n".join(",".join(str(int(t)) for t in row) for row in ids)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """Prompts ready to run: token ids per prompt, the texts (``None`` for token input), provenance.

    ``info`` is the provenance record of the prompts: the prompt set's name and hashes for text
    input, ``source="token ids"`` for token input, and ``token_ids_sha256`` (of the ids as run,
    after truncation) for both.
    """

    tokenized: Tokenized
    texts: tuple[str, ...] | None
    info: dict[str, Any]

    @property
    def from_tokens(self) -> bool:
        """Whether the prompts came as token ids (no tokenizer involved)."""
        return self.texts is None

    def __len__(self) -> int:
        return len(self.tokenized.ids)


def _is_int_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() \
        and x.dtype != torch.bool


def _token_rows(prompts: Any, attention_mask: Any) -> list[list[int]]:
    """Token ids per prompt from a 2-D tensor (+ mask) or a list of 1-D tensors, checked."""
    if isinstance(prompts, torch.Tensor):
        if not _is_int_tensor(prompts) or prompts.ndim != 2:
            raise TLSpecError(
                f"token input must be a [batch, pos] integer tensor, got a {prompts.ndim}-D "
                f"{prompts.dtype} tensor of shape {tuple(prompts.shape)}; a single prompt's ids "
                "go in as tokens[None] (shape [1, pos])"
            )
        rows = prompts.detach().cpu()
        if attention_mask is None:
            return [r.tolist() for r in rows]
        mask = torch.as_tensor(attention_mask).detach().cpu()
        if tuple(mask.shape) != tuple(rows.shape):
            raise TLSpecError(
                f"attention_mask has shape {tuple(mask.shape)} but the tokens are "
                f"{tuple(rows.shape)}; pass the mask that came with these tokens (1 = real token)"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise TLSpecError("attention_mask must hold only 0 (padding) and 1 (real token)")
        out = []
        for i, (r, m) in enumerate(zip(rows, mask.bool())):
            pos = torch.nonzero(m).flatten()
            if pos.numel() and int(pos[-1] - pos[0]) + 1 != pos.numel():
                raise TLSpecError(
                    f"attention_mask row {i} has padding between real tokens; tl_spec takes "
                    "left- or right-padded rows (one run of real tokens per row)"
                )
            out.append(r[m].tolist())
        return out
    if attention_mask is not None:
        raise TLSpecError(
            "attention_mask goes with a [batch, pos] token tensor; for text prompts or a list of "
            "1-D token tensors leave it None (their lengths are known)"
        )
    out = []
    for i, row in enumerate(prompts):
        if not _is_int_tensor(row) or row.ndim != 1:
            raise TLSpecError(
                f"prompt {i} is not a 1-D integer tensor ({type(row).__name__}); a list of token "
                "tensors must hold one 1-D tensor of ids per prompt"
            )
        out.append(row.detach().cpu().tolist())
    return out


def _is_token_input(prompts: Any) -> bool:
    if isinstance(prompts, torch.Tensor):
        return True
    if isinstance(prompts, (str, bytes, PromptSet)) or not isinstance(prompts, Sequence):
        return False
    return len(prompts) > 0 and all(isinstance(p, torch.Tensor) for p in prompts)


def prepare_inputs(
    model: Any,
    prompts: PromptInput,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    max_length: int,
    prepend_bos: bool | None = None,
    min_tokens: int = 2,
    route: str = "tl_spec",
) -> Inputs:
    """Validate and tokenize ``prompts`` (text or token ids) for a run on ``model``.

    Args:
        model: the TransformerLens model (its ``to_tokens`` for text; ``cfg.d_vocab`` to check ids).
        prompts: a list of strings, a :class:`~tl_spec.prompts.PromptSet`, a ``[batch, pos]``
            integer tensor or a list of 1-D integer tensors.
        attention_mask: with a token tensor, 1 on real tokens and 0 on padding (either side).
        max_length: longer prompts are truncated, with a warning; capped at the model's
            context ``cfg.n_ctx`` when that is shorter (also with a warning, only if a prompt
            is longer).
        prepend_bos: for text only (``None``: the model's default); token ids are used as given.
        min_tokens: prompts with fewer tokens are refused.
        route: ``"tl_spec"``, or a reproduction route of the SI (see :func:`route_inputs`):
            text is then tokenized by the model's tokenizer with its own special tokens, and
            every prompt padded to ``max_length``.

    Returns:
        :class:`Inputs` with the token ids per prompt, the texts and the provenance record.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(cfg=SimpleNamespace(d_vocab=10))
    >>> ids = torch.tensor([[1, 5, 6], [1, 7, 0]])
    >>> prepare_inputs(m, ids, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
    ...                max_length=8).tokenized.ids
    ((1, 5, 6), (1, 7))
    """
    if not _is_token_input(prompts):
        if attention_mask is not None:
            raise TLSpecError(
                "attention_mask goes with a [batch, pos] token tensor, not with text prompts; "
                "text prompts are tokenized and masked by tl_spec"
            )
        pset = as_prompt_set(prompts) if isinstance(prompts, PromptSet) else None
        texts = validate_prompts(pset.prompts if pset else prompts)
        if getattr(model, "tokenizer", "absent") is None:
            raise TLSpecError(
                f"the model has no tokenizer, so text prompts cannot be tokenized; pass token ids "
                f"instead (a [batch, pos] integer tensor with its attention_mask, or a list of "
                f"1-D tensors), or attach a tokenizer to the model"
            )
        info = dict((pset or as_prompt_set(texts)).hashes())
        if route != "tl_spec":
            if prepend_bos is not None:
                raise TLSpecError(f"route={route!r} uses the tokenizer's own special tokens; "
                                  "leave prepend_bos=None")
            return route_inputs(model, Inputs(Tokenized((), 0, None, max_length), tuple(texts),
                                               info), route=route, max_length=max_length,
                                min_tokens=min_tokens)
        tokenized = tokenize(model, texts, max_length=max_length, prepend_bos=prepend_bos,
                             min_tokens=min_tokens)
        info["token_ids_sha256"] = token_ids_sha256(tokenized.ids)
        return Inputs(tokenized, tuple(texts), info)
    if prepend_bos is not None:
        raise TLSpecError(
            "prepend_bos applies to text prompts; token ids are used exactly as given (add or "
            "drop the BOS id in the tensor itself), so leave prepend_bos=None"
        )
    if not isinstance(max_length, int) or max_length < 2:
        raise TLSpecError(
            f"max_length must be an integer >= 2 (a pattern needs two tokens), got {max_length!r}"
        )
    rows = _token_rows(prompts, attention_mask)
    if not rows:
        raise TLSpecError("the token input holds no prompts; pass at least one row of ids")
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    for i, row in enumerate(rows):
        bad = [t for t in row if t < 0 or (d_vocab is not None and t >= int(d_vocab))]
        if bad:
            raise TLSpecError(
                f"prompt {i} holds token id {bad[0]}, outside the model's vocabulary "
                f"(0..{int(d_vocab) - 1 if d_vocab else '?'}); were these ids made by another "
                "tokenizer?"
            )

    def too_short(i: int, n: int) -> str:
        return (f"prompt {i} has {n} real token(s); attention statistics need at least "
                f"{min_tokens}. Drop it or check its attention_mask row.")

    ids, truncated = _truncated(rows, max_length, min_tokens, too_short, n_ctx=_n_ctx(model))
    tokenized = Tokenized(tuple(ids), truncated, None, max_length)
    info = {"name": "token ids", "n_prompts": len(ids), "source": "token ids",
            "token_ids_sha256": token_ids_sha256(tokenized.ids)}
    if route != "tl_spec":
        return route_inputs(model, Inputs(tokenized, None, info), route=route,
                            max_length=max_length, min_tokens=min_tokens)
    return Inputs(tokenized, None, info)


def _route_padding(model: Any, route: str, from_tokens: bool) -> tuple[Any, int, PaddingSide]:
    """The tokenizer, pad id and padding side a reproduction route pads with (clear errors)."""
    tok = getattr(model, "tokenizer", None)
    what = "token ids" if from_tokens else "text prompts"
    if tok is None:
        raise TLSpecError(
            f"route={route!r} pads every prompt to max_length with the tokenizer's pad token, as "
            f"the paper's notebooks did, but the model has no tokenizer ({what} given); attach "
            "the tokenizer, or use route='tl_spec' (which needs none for token ids)"
        )
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:  # the notebooks set pad_token = eos_token
        pad = getattr(tok, "eos_token_id", None)
    if pad is None:
        raise TLSpecError(
            f"route={route!r} pads with the tokenizer's pad token (or EOS, as the notebooks "
            "did), but the tokenizer has neither; set tokenizer.pad_token first"
        )
    side = getattr(tok, "padding_side", "right")
    if side not in ("left", "right"):
        raise TLSpecError(f"the tokenizer's padding_side is {side!r}; expected 'left' or 'right'")
    return tok, int(pad), side


def route_inputs(
    model: Any,
    inputs: Inputs,
    *,
    route: str,
    max_length: int,
    min_tokens: int = 2,
) -> Inputs:
    """Prompts as a reproduction route of the paper's code prepares them (padded to ``max_length``).

    Text is tokenized by the model's Hugging Face tokenizer exactly as the E11 notebooks called
    it: ``tokenizer(text, truncation=True, max_length=max_length)`` with its default special
    tokens (BOS where the tokenizer adds one); a longer prompt is truncated (with a warning).
    Token ids are used as given (already truncated to ``max_length``). Every prompt is then
    padded to ``max_length`` with the tokenizer's pad id (EOS where it has none, as the
    notebooks set it) on the tokenizer's padding side, which :func:`batches` honours. A model
    without a tokenizer is an error: the route needs its pad token.

    Args:
        model: the model whose tokenizer pads (and tokenizes text).
        inputs: the prompts (text or token ids) from :func:`prepare_inputs`.
        route: the SI route name (``"e11_masked"``, ``"e11_unmasked"``, ``"metrics_py"``).
        max_length: the padded length (128 in the paper); at most the model's ``cfg.n_ctx``.
        min_tokens: prompts with fewer real tokens are refused.

    Returns:
        :class:`Inputs` whose ``tokenized`` has ``pad_to=max_length``.

    >>> inputs = prepare_inputs(model, ["Hi there"], max_length=128, route="e11_unmasked")  # doctest: +SKIP
    >>> inputs.tokenized.pad_to  # doctest: +SKIP
    128
    """
    tok, pad, side = _route_padding(model, route, inputs.from_tokens)
    n_ctx = _n_ctx(model)
    if n_ctx is not None and max_length > n_ctx:
        raise TLSpecError(
            f"route={route!r} pads every prompt to max_length={max_length}, beyond the model's "
            f"context of {n_ctx} tokens (cfg.n_ctx); use max_length <= {n_ctx}"
        )
    if inputs.texts is None:
        ids = list(inputs.tokenized.ids)
        truncated = inputs.tokenized.n_truncated
    else:
        ids, truncated = [], 0
        for i, text in enumerate(inputs.texts):
            row = list(tok(text)["input_ids"])
            if len(row) > max_length:
                truncated += 1
                row = list(tok(text, truncation=True, max_length=max_length)["input_ids"])
            if len(row) < min_tokens:
                raise TLSpecError(f"prompt {i} ({text!r}) has {len(row)} token(s); attention "
                                  f"statistics need at least {min_tokens}")
            ids.append(tuple(int(t) for t in row))
        if truncated:
            warnings.warn(
                f"{truncated} of {len(ids)} prompts were longer than max_length={max_length} "
                f"tokens and were truncated by the tokenizer (truncation=True), as route "
                f"{route!r} reproduces; raise max_length to keep them whole.",
                TLSpecWarning,
                stacklevel=3,
            )
    tokenized = Tokenized(tuple(ids), truncated, None, max_length, route=route,
                          pad_to=max_length, pad_token=pad, pad_side=side)
    info = dict(inputs.info, token_ids_sha256=token_ids_sha256(tokenized.ids), route=route,
                padded_to=max_length, pad_token_id=pad, padding_side=side)
    return Inputs(tokenized, inputs.texts, info)


def _n_ctx(model: Any) -> int | None:
    """The model's context length (``cfg.n_ctx``), or ``None`` when it does not say."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    try:
        return int(n_ctx) if n_ctx is not None and int(n_ctx) > 0 else None
    except (TypeError, ValueError):
        return None


def _truncated(rows: Sequence[Sequence[int]], max_length: int, min_tokens: int,
               too_short: Any, *, n_ctx: int | None = None) -> tuple[list[tuple[int, ...]], int]:
    """Rows cut to ``max_length``, capped at the model's context ``n_ctx`` (counted and warned
    about); a row under ``min_tokens`` is an error whose message ``too_short(index, n_tokens)``
    gives.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     ids, n = _truncated([[1, 2, 3, 4], [5, 6]], 8, 2, str, n_ctx=3)
    >>> ids, n
    ([(1, 2, 3), (5, 6)], 1)
    >>> "context of 3 tokens" in str(caught[0].message)
    True
    """
    capped = n_ctx is not None and n_ctx < max_length
    limit = n_ctx if capped else max_length
    ids, truncated = [], 0
    for i, row in enumerate(rows):
        if len(row) > limit:
            truncated += 1
            row = row[:limit]
        if len(row) < min_tokens:
            raise TLSpecError(too_short(i, len(row)))
        ids.append(tuple(int(t) for t in row))
    if truncated and capped:
        warnings.warn(
            f"{truncated} of {len(ids)} prompts were longer than the model's context of {n_ctx} "
            f"tokens (cfg.n_ctx, below max_length={max_length}) and were truncated to it; a "
            "model cannot attend beyond its context, so use shorter prompts to keep them whole.",
            TLSpecWarning,
            stacklevel=4,
        )
    elif truncated:
        warnings.warn(
            f"{truncated} of {len(ids)} prompts were longer than max_length={max_length} tokens "
            "and were truncated; raise max_length to keep them whole.",
            TLSpecWarning,
            stacklevel=4,
        )
    return ids, truncated


def pad_id(model: Any) -> int:
    """The id used for padding: the tokenizer's pad, else EOS, else 0 (it is always masked)."""
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if value is not None:
            return int(value)
    return 0


#: Fixed cost of one forward pass, in padded token rows, used to plan batches: a forward of a few
#: short rows is not free (measured on CPU with the benchmark model: about 32 token rows).
FORWARD_COST_TOKENS = 32


def plan_batches(
    lengths: Sequence[int], *, batch_size: int, forward_cost: int = FORWARD_COST_TOKENS
) -> list[list[int]]:
    """Group items into batches of at most ``batch_size`` minimising padded work.

    Items are sorted by length; the cuts minimise the sum over batches of
    (rows x longest length + ``forward_cost``), by dynamic programming. Deterministic.

    >>> plan_batches([110, 24, 23, 31, 30], batch_size=4)
    [[2, 1, 4, 3], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - batch_size), j):
            cost = best[i] + (j - i) * longest + forward_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def pad_batch(
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    padding_side: PaddingSide = "right",
    device: torch.device | str | None = None,
    width: int | None = None,
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Pad token sequences to one width: ``(tokens, attention_mask)`` with 1 on real tokens.

    ``width`` pads to that many positions (at least the longest sequence); by default to the
    longest.

    >>> pad_batch([(1, 5, 6), (1, 7)], pad_id=0, padding_side="left")[1].tolist()
    [[1, 1, 1], [0, 1, 1]]
    >>> pad_batch([(1, 7)], pad_id=0, width=4)[0].tolist()
    [[1, 7, 0, 0]]
    """
    width = max([len(s) for s in seqs] + [width or 0])
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        sl = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
        tokens[row, sl] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, sl] = 1
    return tokens.to(device), mask.to(device)


def batches(
    tokenized: Tokenized,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: PaddingSide = "right",
    device: torch.device | str | None = None,
    order: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]]:
    """Yield ``(prompt indices, tokens, attention_mask)`` with prompts bucketed by length.

    Batches come from :func:`plan_batches` (little padding, few forwards); ``order`` overrides
    the plan with fixed chunks of ``batch_size`` in that order. A reproduction route's
    ``tokenized`` (``pad_to`` set) pads every batch to ``pad_to`` with its own pad id and side,
    overriding ``pad_id`` and ``padding_side``.

    >>> t = Tokenized(((1, 5, 6), (1, 7)), 0, True, 8)
    >>> [(i, m.tolist()) for i, _, m in batches(t, batch_size=2, pad_id=0, padding_side="left")]
    [([1, 0], [[0, 1, 1], [1, 1, 1]])]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TLSpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    if padding_side not in ("left", "right"):
        raise TLSpecError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    lengths = tokenized.lengths
    if order is not None:
        plan = [list(order)[i : i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        plan = plan_batches(lengths, batch_size=batch_size)
    if tokenized.pad_to is not None:
        pad_id = tokenized.pad_token if tokenized.pad_token is not None else pad_id
        padding_side = tokenized.pad_side or padding_side
    for chunk in plan:
        tokens, mask = pad_batch([tokenized.ids[i] for i in chunk], pad_id=pad_id,
                                 padding_side=padding_side, device=device,
                                 width=tokenized.pad_to)
        yield chunk, tokens, mask


def real_tokens(
    mask: torch.Tensor | None, batch: int, n: int, device: torch.device, *, owner: str = "hooks"
) -> Bool[torch.Tensor, "batch pos"]:
    """The real tokens of a batch from its attention mask (``None``: all real), shape-checked.

    What every hook that reads ``owner.attention_mask`` uses; a mask of another batch is a clear
    error instead of a silent broadcast.

    >>> real_tokens(None, 1, 2, torch.device("cpu")).tolist()
    [[True, True]]
    """
    if mask is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    if tuple(mask.shape) != (batch, n):
        raise TLSpecError(
            f"attention_mask has shape {tuple(mask.shape)} but the batch is {batch} prompts x "
            f"{n} positions; set {owner}.attention_mask to the mask of the batch being run (or "
            "None for unpadded input)"
        )
    return mask.to(device).bool()


def real_spans(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Each row's run of real tokens as (first position, count), from a left- or right-padded mask.

    >>> real_spans(torch.tensor([[0, 1, 1], [1, 1, 0]]))
    [(1, 2), (0, 2)]
    """
    real = mask.bool().cpu()
    return list(zip(real.int().argmax(-1).tolist(), real.sum(-1).tolist()))
