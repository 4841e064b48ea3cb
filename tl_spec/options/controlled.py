"""Options of the controlled alignment study (SFT / DPO twins of several attention types).

:class:`ControlledOptions` says at which prompt lengths, by which SI definitions and on which
reproduction routes the study measures; :class:`ControlledStatsOptions` is
:class:`~tl_spec.options.StatsOptions` with the study's own default of 2000 resamples (one
bootstrap per reported quantity, all driven by the same prompt resamples).

>>> ControlledOptions().lengths, ControlledOptions.build(methods="pattern").methods
((128, 24), ('pattern',))
>>> ControlledOptions(lengths=(1,))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: lengths must be integers >= 2 (tokens, BOS included), got 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.options.base import Options, option
from tl_spec.options.noise import OptionTextError
from tl_spec.options.si import METHODS, ROUTE_METHOD, StatsOptions

__all__ = ["ControlledOptions", "ControlledStatsOptions", "DEFAULT_ROUTE", "available_routes",
           "parse_lengths", "parse_names"]

DEFAULT_ROUTE = "tl_spec"


def available_routes() -> tuple[str, ...]:
    """``"tl_spec"`` and every reproduction route this tl_spec knows (``ROUTE_METHOD``).

    >>> available_routes()[0]
    'tl_spec'
    """
    return (DEFAULT_ROUTE, *ROUTE_METHOD)


def parse_lengths(text: str) -> tuple[int, ...]:
    """Comma-separated prompt lengths (tokens) as a tuple.

    >>> parse_lengths("128, 24")
    (128, 24)
    """
    try:
        return tuple(int(p) for p in str(text).split(","))
    except ValueError:
        raise OptionTextError(f"lengths must be comma-separated integers, got {text!r} "
                              "(e.g. 128,24)") from None


def parse_names(text: str) -> tuple[str, ...]:
    """Comma-separated names as a tuple (empty entries dropped).

    >>> parse_names("pattern, entropy_profile")
    ('pattern', 'entropy_profile')
    """
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


def _names(value: Any, what: str) -> tuple[str, ...]:
    names = parse_names(value) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise TLSpecError(f"{what} must be a non-empty list of distinct names, got {value!r}")
    return names


@dataclass(frozen=True)
class ControlledOptions(Options):
    """Where the controlled study measures.

    Attributes:
        lengths: prompt lengths in tokens (BOS included); every prompt is cut to each. The
            default pairs 128 (the paper's length, where a window of 32 binds) with 24 (where
            no window of 32 or more binds: a query sees keys at distance < window only).
        methods: SI definitions measured on the default route (``pattern``: the project's
            default, Eq. 1; ``entropy_profile``: the definition behind the paper's Table 4).
        routes: ``"tl_spec"`` (the library's own measurement) and any reproduction route of
            the paper's code; a non-default route uses the one method it reproduces.
    """

    family = "controlled study"

    lengths: tuple[int, ...] = option(
        (128, 24), "prompt lengths in tokens, BOS included (default: 128,24: a window of 32 "
        "binds at 128, not at 24)", parse=parse_lengths, metavar="L1,L2")
    methods: tuple[str, ...] = option(
        ("pattern", "entropy_profile"), "SI definitions on the default route (default: "
        "pattern,entropy_profile)", parse=parse_names, metavar="M1,M2")
    routes: tuple[str, ...] = option(
        (DEFAULT_ROUTE,), "measurement routes: tl_spec and reproduction routes of the paper's "
        "code, where available (default: tl_spec)", parse=parse_names, metavar="R1,R2")

    def __post_init__(self) -> None:
        lengths = parse_lengths(self.lengths) if isinstance(self.lengths, str) else self.lengths
        try:
            lengths = tuple(lengths)
        except TypeError:
            raise TLSpecError(f"lengths must be a list of integers, got {self.lengths!r}") from None
        for n in lengths:
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise TLSpecError(f"lengths must be integers >= 2 (tokens, BOS included), got {n!r}")
        if not lengths or len(set(lengths)) != len(lengths):
            raise TLSpecError(f"lengths must be a non-empty list of distinct integers, got "
                              f"{list(lengths)!r}")
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "methods", _names(self.methods, "methods"))
        object.__setattr__(self, "routes", _names(self.routes, "routes"))
        super().__post_init__()

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise TLSpecError(f"unknown SI method {bad[0]!r}; choose among {', '.join(METHODS)}")
        known = available_routes()
        for r in self.routes:
            if r not in known:
                extra = ("" if ROUTE_METHOD else "; this tl_spec has no reproduction routes "
                         "(SIOptions.route) yet")
                raise TLSpecError(f"unknown route {r!r}; choose among {', '.join(known)}{extra}")

    def conditions(self) -> list[tuple[str, str, int]]:
        """``(route, method, length)`` of every measurement, routes first, then lengths.

        >>> ControlledOptions(methods=("pattern",)).conditions()
        [('tl_spec', 'pattern', 128), ('tl_spec', 'pattern', 24)]
        """
        out = []
        for route in self.routes:
            methods = self.methods if route == DEFAULT_ROUTE else (ROUTE_METHOD[route],)
            for method in methods:
                out += [(route, method, n) for n in self.lengths]
        return out


@dataclass(frozen=True)
class ControlledStatsOptions(StatsOptions):
    """:class:`~tl_spec.options.StatsOptions` with the study's default of 2000 resamples.

    >>> ControlledStatsOptions().n_resamples
    2000
    """

    n_resamples: int = option(2000, "bootstrap resamples of the prompts (the same resamples "
                              "for every model)", minimum=100, integer=True)
