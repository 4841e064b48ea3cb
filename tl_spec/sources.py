"""Named model sources that a higher layer (the zoo) registers for the experiments below it.

Experiments never import the zoo; the zoo registers its loaders here when it is imported (as
``import tl_spec`` does), and the deprecated zoo-backed defaults of a few experiments look them
up by name.

>>> register_source("demo", lambda: ["m"]); source("demo")()
['m']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["register_source", "source"]

_SOURCES: dict[str, Callable[..., Any]] = {}


def register_source(name: str, loader: Callable[..., Any]) -> None:
    """Make ``loader`` the source called ``name`` (a later registration replaces it)."""
    _SOURCES[name] = loader


def source(name: str) -> Callable[..., Any]:
    """The loader registered as ``name``; a clear error when nothing registered it."""
    if name not in _SOURCES:
        raise TLSpecError(
            f"no model source {name!r} is registered: it comes with tl_spec.zoo (import "
            "tl_spec or tl_spec.zoo first), or pass the models explicitly"
        )
    return _SOURCES[name]
