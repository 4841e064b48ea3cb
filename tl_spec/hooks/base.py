"""The protocol every tl_spec hook object follows, so they compose in your own TransformerLens code.

A hook object (:class:`~tl_spec.hooks.PatternStats`, :class:`~tl_spec.hooks.NoiseHooks`,
:class:`~tl_spec.hooks.AttentionVariant`, :class:`~tl_spec.hooks.BatchFeatures`) offers:

- ``fwd_hooks``: ``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``;
- iteration over the same pairs, so ``model.hooks(fwd_hooks=[*stats, *noise])`` works;
- ``bind(tokens, attention_mask)``: the batch about to run (its real tokens), returning the object.

>>> with model.hooks(fwd_hooks=[*stats.bind(tokens, mask), *noise.bind(tokens, mask)]):  # doctest: +SKIP
...     model(tokens, attention_mask=mask)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from jaxtyping import Int

__all__ = ["HookSet"]

H = TypeVar("H", bound="HookSet")


class HookSet:
    """Base of the hook objects: ``fwd_hooks``, iteration as ``(name, fn)`` pairs, ``bind``.

    Subclasses implement :attr:`fwd_hooks`; :meth:`bind` records the batch's tokens and
    attention mask (1 = real token; ``None``: every token is real) for the hooks to read.
    """

    tokens: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[str, Callable[..., Any]]]:
        return iter(self.fwd_hooks)

    def bind(self: H, tokens: Int[torch.Tensor, "batch pos"] | None = None,
             attention_mask: Int[torch.Tensor, "batch pos"] | None = None) -> H:
        """Bind the next forward pass's batch (its tokens and attention mask); returns ``self``."""
        self.tokens = tokens
        self.attention_mask = attention_mask
        return self
