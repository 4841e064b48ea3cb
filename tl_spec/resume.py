"""Resuming a forward pass mid-way: whether a model can, and doing it (prefix reuse).

Experiments that change only later layers (the noise sweep, head importance, deconstruct) run
the unchanged prefix once and resume each condition from the cached residual stream. Whether a
model can is decided once per model by :func:`probe_start_at_layer` (bit-identical logits from a
full and a resumed forward), not by its backend's name; :func:`forward_from_layer` resumes
(``HookedTransformer``'s own ``start_at_layer``; on the TransformerLens 4 bridge the earlier
blocks are made pass-throughs, since its ``start_at_layer`` still runs them).

>>> can_start_at_layer(object())
False
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_spec.models import backend_name, tl_major
from tl_spec.names import hook_name

__all__ = ["can_start_at_layer", "forward_from_layer", "probe_start_at_layer"]

#: Per model: whether resuming at a middle layer reproduced the full forward (see the probe).
_RESUME_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def can_start_at_layer(model: Any) -> bool:
    """Whether :func:`forward_from_layer` (``start_at_layer``) equals the full forward from ``l`` on.

    Decided per model, by what it does rather than by backend name: ``HookedTransformer``, or a
    ``TransformerBridge`` of TransformerLens 4 or later (3.x's bridge raises on
    ``start_at_layer``), that passes :func:`probe_start_at_layer` (cached per model). Always
    False when the positional embedding enters every layer (``shortformer``) or a trained-in
    ``decoupled`` variant reads an earlier layer's input.

    >>> can_start_at_layer(object())
    False
    """
    kind = backend_name(model)
    if kind not in ("hooked", "bridge") or (kind == "bridge" and tl_major() < 4):
        return False
    if getattr(model.cfg, "positional_embedding_type", None) == "shortformer":
        return False
    spec = getattr(model, "tl_spec_variant", None)
    if spec is not None and spec.variant == "decoupled":
        return False
    try:
        return _RESUME_PROBED[model]
    except TypeError:  # not weak-referenceable: probe every time
        return probe_start_at_layer(model)
    except KeyError:
        _RESUME_PROBED[model] = answer = probe_start_at_layer(model)
        return answer


def probe_start_at_layer(model: Any) -> bool:
    """Run a tiny batch whole and again from a middle layer; True iff the logits are bit-identical.

    Two rows of 8 tokens, the second left-padded by 3 (so mask-derived positions are checked
    too); the residual entering layer ``n_layers // 2`` is captured in the full run and fed to
    :func:`forward_from_layer`, then the full forward runs once more (the resumed one must leave
    nothing behind). The comparisons are exact (``torch.equal``, no tolerance): the runs do the
    same arithmetic from that layer on, so any difference means the resumed forward is not the
    same computation. Any exception (a backend without ``start_at_layer``) is False.

    >>> probe_start_at_layer(model)  # doctest: +SKIP
    True
    """
    try:
        n_layers, vocab = int(model.cfg.n_layers), int(model.cfg.d_vocab)
        layer = n_layers // 2
        device = next(model.parameters()).device
        tokens = (torch.arange(16, device=device).view(2, 8) * 7 + 3) % vocab
        mask = torch.ones_like(tokens)
        mask[1, :3] = 0
        got: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor, hook: Any) -> None:
            got["resid"] = x.clone()

        with torch.inference_mode():
            full = model.run_with_hooks(tokens, attention_mask=mask, return_type="logits",
                                        fwd_hooks=[(hook_name("resid_pre", layer), grab)])
            resumed = forward_from_layer(model, got["resid"], layer, tokens=tokens,
                                         attention_mask=mask, return_type="logits")
            again = model(tokens, attention_mask=mask, return_type="logits")  # nothing left over
        return bool(torch.equal(full, resumed) and torch.equal(full, again))
    except Exception:  # noqa: BLE001 - any failure means "cannot resume here"
        return False


def forward_from_layer(
    model: Any,
    resid: Float[torch.Tensor, "batch pos d_model"],
    start: int,
    *,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"],
    return_type: str | None = "logits",
) -> Any:
    """The forward pass from layer ``start`` on, with ``resid`` the residual entering it.

    ``HookedTransformer``: its own ``start_at_layer``. ``TransformerBridge`` (TransformerLens
    4): its ``start_at_layer`` (which still runs blocks ``0 .. start-1`` and discards their
    output) with those blocks made pass-throughs for the call, so they cost nothing and their
    hooks do not fire, as on ``HookedTransformer``; a left-padded mask gets the mask-derived
    positions the bridge gives token inputs. Only call it where :func:`can_start_at_layer` is True.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        resid: the residual stream entering block ``start``.
        start: the first block to run.
        tokens: the batch's token ids (positions and masks are built from them).
        attention_mask: 1 on the tokens the model may attend to.
        return_type: as the model's forward (``"logits"`` or ``None``).

    Returns:
        What ``model(...)`` returns for ``return_type``.

    >>> logits = forward_from_layer(model, resid, 2, tokens=tokens, attention_mask=mask)  # doctest: +SKIP
    """
    if backend_name(model) != "bridge":
        return model(resid, start_at_layer=start, tokens=tokens, attention_mask=attention_mask,
                     return_type=return_type)
    kwargs: dict[str, Any] = {}
    mask = attention_mask.long()
    derived = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    arange = torch.arange(mask.shape[1], device=mask.device).expand_as(derived)
    moved = ((derived != arange) & (mask != 0)).any(-1, keepdim=True)
    if bool(moved.any()):  # left padding: the bridge's mask-derived positions, row by row
        kwargs["position_ids"] = torch.where(moved, derived, arange)
    with _pass_through(list(model.blocks)[:start]):
        return model(resid, start_at_layer=start, attention_mask=attention_mask,
                     return_type=return_type, **kwargs)


def _hidden_states(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _pass_through(blocks: list[Any]) -> Any:
    """Make ``blocks`` return their input unchanged (an instance ``forward``) for the duration."""
    patched = [b for b in blocks if "forward" not in vars(b)]
    try:
        for block in patched:  # object's setattr: the bridge's would pass it to the HF module
            object.__setattr__(block, "forward", _hidden_states)
        yield
    finally:
        for block in patched:
            vars(block).pop("forward", None)
