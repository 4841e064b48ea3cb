"""Options of the length profile: the truncation lengths at which the SI is measured.

:class:`LengthOptions` is the one place these defaults live (the API, the ``tl-spec length``
flags). The SI itself is measured with :class:`~tl_spec.options.SIOptions` and its intervals with
:class:`~tl_spec.options.StatsOptions`.

>>> LengthOptions().lengths
(16, 24, 32, 48, 64, 96, 128)
>>> LengthOptions(lengths=parse_lengths("64, 16")).lengths
(16, 64)
>>> LengthOptions(lengths=(32, 16, 32))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: lengths must be distinct, got 32 more than once in (32, 16, 32); give each truncation length once, e.g. 16,32,64
"""

from __future__ import annotations

import argparse
import numbers
from dataclasses import dataclass
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.options.base import Options, option

__all__ = ["DEFAULT_LENGTHS", "LengthOptions", "LengthTextError", "check_lengths", "parse_lengths"]

#: The truncation lengths measured by default (tokens); 128 is the paper's MAX_LENGTH.
DEFAULT_LENGTHS: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128)


class LengthTextError(TLSpecError, argparse.ArgumentTypeError):
    """Bad ``--lengths`` text: a TLSpecError that argparse prints as it is."""


def check_lengths(values: Any) -> tuple[int, ...]:
    """``values`` as a sorted tuple of distinct integers >= 2, or a TLSpecError saying why not.

    A length is a number of tokens a prompt is truncated to; a pattern needs two tokens.

    >>> check_lengths([64, 16])
    (16, 64)
    >>> check_lengths([0, 16])
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: lengths must be integers >= 2 (a prompt truncated to fewer than 2 tokens has no attention pattern to measure), got 0 in (0, 16)
    """
    if isinstance(values, str):
        values = parse_lengths(values)
    try:
        given = tuple(values)
    except TypeError:
        raise TLSpecError(f"lengths must be a sequence of integers, e.g. (16, 32, 64), got "
                          f"{values!r}") from None
    if not given:
        raise TLSpecError("lengths is empty; give at least one truncation length, e.g. 16,32,64")
    for v in given:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TLSpecError(f"lengths must be integers, got {v!r} ({type(v).__name__}) in "
                              f"{given!r}")
        if v < 2:
            raise TLSpecError(
                f"lengths must be integers >= 2 (a prompt truncated to fewer than 2 tokens has "
                f"no attention pattern to measure), got {v!r} in {given!r}"
            )
    seen: set[int] = set()
    for v in given:
        if int(v) in seen:
            raise TLSpecError(f"lengths must be distinct, got {int(v)} more than once in "
                              f"{given!r}; give each truncation length once, e.g. 16,32,64")
        seen.add(int(v))
    return tuple(sorted(int(v) for v in given))


def parse_lengths(text: str) -> tuple[int, ...]:
    """Comma-separated lengths (``"16,24,32"``) as integers (checked by :func:`check_lengths`).

    >>> parse_lengths("16, 24,32")
    (16, 24, 32)
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise LengthTextError("--lengths is empty; give comma-separated token counts, e.g. "
                              "16,32,64")
    out = []
    for p in parts:
        try:
            out.append(int(p))
        except ValueError:
            raise LengthTextError(f"--lengths: {p!r} is not an integer; give comma-separated "
                                  "token counts, e.g. 16,32,64") from None
    return tuple(out)


@dataclass(frozen=True)
class LengthOptions(Options):
    """How the SI-versus-length profile is measured.

    Attributes:
        lengths: the truncation lengths in tokens (any order, distinct, each >= 2; stored
            sorted). Each prompt is truncated to ``min(its length, L)`` tokens, exactly what
            ``specialization_index(..., max_length=L)`` measures. None may exceed the SI
            options' ``max_length`` or the model's context.
        reuse: ``True``: one forward pass at the longest length gives every length's statistics
            (exact for causal decoder-only models: a truncated prompt's pattern is the top-left
            block of the full one); ``False``: one ``specialization_index`` run per length
            (the reference, for checks and timing).

    >>> LengthOptions.build(lengths=(48, 16)).to_dict()
    {'lengths': [16, 48], 'reuse': True}
    """

    family = "length"

    lengths: tuple[int, ...] = option(DEFAULT_LENGTHS, "truncation lengths in tokens, "
                                      "comma-separated (each prompt is cut to min(its length, "
                                      "L))", parse=parse_lengths, metavar="L1,L2,...")
    reuse: bool = option(True, "one forward at the longest length gives every length (exact "
                         "for causal models); --no-reuse runs one SI per length (default: reuse)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", check_lengths(self.lengths))
        if not isinstance(self.reuse, bool):
            raise TLSpecError(f"reuse must be True or False, got {self.reuse!r}")
        super().__post_init__()
