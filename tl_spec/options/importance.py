"""Options of head importance (loss increase when one head's output is ablated).

:class:`ImportanceOptions` is the one place the defaults of
:func:`~tl_spec.experiments.importance.head_importance` live.

>>> ImportanceOptions().ablations, ImportanceOptions.build(ablations="zero").ablations
(('mean', 'zero'), ('zero',))
>>> ImportanceOptions(ablations=("mean", "random"))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: unknown ablation 'random'; choose from 'mean', 'zero'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.options.base import Options, option

__all__ = ["ABLATIONS", "ImportanceOptions", "parse_ablations"]

#: How a head's output ``z`` is removed: replaced by its mean over the data's real tokens, or by 0.
ABLATIONS: tuple[str, ...] = ("mean", "zero")


def parse_ablations(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"mean,zero"`` (command line) or a sequence of names -> a tuple of names.

    >>> parse_ablations("mean, zero"), parse_ablations(["zero"])
    (('mean', 'zero'), ('zero',))
    """
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return tuple(value)


@dataclass(frozen=True)
class ImportanceOptions(Options):
    """How head importance is measured.

    Attributes:
        ablations: which ablations to run, in order: ``"mean"`` (the head's ``z`` replaced by its
            mean over the real tokens of the data) and/or ``"zero"`` (``z`` set to 0).
        max_length: prompts are truncated to this many tokens (with a warning).
        batch_size: prompts per forward pass of the clean run.
        heads_per_pass: heads ablated in one forward call (``None``: all heads of a layer); a
            call runs ``batch_size x heads_per_pass`` sequences, so this bounds the memory.

    >>> ImportanceOptions.build(heads_per_pass=2).to_dict()["heads_per_pass"]
    2
    """

    family = "importance"

    ablations: tuple[str, ...] = option(ABLATIONS, "ablations to run: mean and/or zero",
                                        parse=parse_ablations, metavar="mean,zero")
    max_length: int = option(128, "truncate prompts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(8, "prompts per forward pass", minimum=1, integer=True)
    heads_per_pass: int | None = option(None, "heads ablated per forward call (default: all "
                                        "heads of a layer)", minimum=1, integer=True)

    def __post_init__(self) -> None:
        raw: Any = self.ablations
        if not isinstance(raw, (str, Sequence)):
            raise TLSpecError(f"ablations must be a list of names from {ABLATIONS}, got {raw!r}")
        object.__setattr__(self, "ablations", parse_ablations(raw))
        super().__post_init__()

    def validate(self) -> None:
        if not self.ablations:
            raise TLSpecError(f"ablations is empty; choose one or more of {', '.join(ABLATIONS)}")
        for name in self.ablations:
            if name not in ABLATIONS:
                listed = ", ".join(repr(a) for a in ABLATIONS)
                raise TLSpecError(f"unknown ablation {name!r}; choose from {listed}")
        if len(set(self.ablations)) != len(self.ablations):
            raise TLSpecError(f"ablations {list(self.ablations)} name one ablation twice")
