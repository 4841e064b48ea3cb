"""TransformerLens hook names and layer ranges: the one helper for each.

Every hook tl_spec attaches is named through :func:`hook_name`, and every layer range a user
writes (``"early"``, ``"0:11"``, ``(0, 11)``, ``[3, 5]``) goes through :func:`parse_layers` (text
from a command line or study file) and :func:`resolve_layers` (indices for a model).

>>> hook_name("pattern", 3), hook_name("attn_out", 0)
('blocks.3.attn.hook_pattern', 'blocks.0.hook_attn_out')
>>> resolve_layers(parse_layers("0:3"), 32)
[0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tl_spec.errors import TLSpecError

__all__ = ["HOOKS", "HookPoint", "LayerSpec", "head_label", "head_labels", "hook_name",
           "parse_layers", "resolve_layers"]

HookPoint = Literal["pattern", "attn_scores", "q", "k", "v", "z", "attn_out", "resid_pre",
                    "resid_mid", "resid_post"]
#: The TransformerLens names of the per-layer hook points tl_spec uses (both backends).
HOOKS: dict[str, str] = {
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
}
LayerSpec = str | tuple[int, int] | Sequence[int]
_NAMED = ("early", "middle", "late", "all")


def hook_name(point: HookPoint, layer: int) -> str:
    """The TransformerLens hook name of ``point`` in layer ``layer``.

    >>> hook_name("z", 2)
    'blocks.2.attn.hook_z'
    """
    if point not in HOOKS:
        raise TLSpecError(f"unknown hook point {point!r}; choose one of {', '.join(HOOKS)}")
    return HOOKS[point].format(layer=int(layer))


def head_label(layer: int, head: int) -> str:
    """``"L{layer}H{head}"``, the label of one head.

    >>> head_label(3, 7)
    'L3H7'
    """
    return f"L{int(layer)}H{int(head)}"


def head_labels(n_layers: int, n_heads: int) -> list[list[str]]:
    """``"L{layer}H{head}"`` labels, ``[layers][heads]``.

    >>> head_labels(1, 2)
    [['L0H0', 'L0H1']]
    """
    return [[head_label(layer, h) for h in range(n_heads)] for layer in range(n_layers)]


def parse_layers(text: str) -> LayerSpec:
    """A layer range written as text: ``early|middle|late|all``, ``START:STOP`` or ``3,5,7``.

    >>> parse_layers("middle"), parse_layers("0:11"), parse_layers("3,5")
    ('middle', (0, 11), [3, 5])
    """
    text = text.strip()
    if text in _NAMED:
        return text
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            return (int(start), int(stop))
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TLSpecError(
            f"layer range {text!r} is not one of {', '.join(_NAMED)}, START:STOP or "
            "comma-separated layer indices"
        ) from None
    if not layers:
        raise TLSpecError("the layer range is empty; give early|middle|late|all, START:STOP or "
                          "layer indices")
    return layers


def resolve_layers(spec: LayerSpec, n_layers: int) -> list[int]:
    """Layer indices of ``"early"``/``"middle"``/``"late"`` (thirds), ``"all"``, ``(start, stop)``
    or an explicit list.

    Thirds split at round(n/3) and round(2n/3): 32 layers give [0, 11), [11, 21), [21, 32).

    >>> resolve_layers("late", 32)[:2], resolve_layers((0, 3), 32), resolve_layers([5, 1], 32)
    ([21, 22], [0, 1, 2], [1, 5])
    """
    a, b = round(n_layers / 3), round(2 * n_layers / 3)
    named = {"all": (0, n_layers), "early": (0, a), "middle": (a, b), "late": (b, n_layers)}
    if isinstance(spec, str):
        if spec not in named:
            raise TLSpecError(
                f"unknown layer range {spec!r}; use 'early', 'middle', 'late', 'all', a (start, "
                "stop) tuple or a list of layer indices"
            )
        layers = list(range(*named[spec]))
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        layers = list(range(spec[0], spec[1]))
        if not 0 <= spec[0] < spec[1] <= n_layers:
            raise TLSpecError(
                f"layer range {spec} is out of range for a model with {n_layers} layers; use "
                f"0 <= start < stop <= {n_layers}"
            )
    else:
        try:
            layers = sorted({int(x) for x in spec})
        except (TypeError, ValueError):
            raise TLSpecError(f"layers {spec!r} must be a named range, a (start, stop) tuple or "
                              "a list of integers") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise TLSpecError(
            f"layers {bad or spec!r} are out of range (the model has layers 0..{n_layers - 1})"
        )
    return layers
