"""The base of every options object: frozen, validated on construction, one source of defaults.

An experiment family (SI, statistics, noise, stability, ...) declares its options once, as a
frozen dataclass deriving from :class:`Options`. Each field carries its default and its help
text; the same class gives the API defaults, the ``tl-spec`` flags (with help and defaults) and
the option names a study file may use. Values are checked in ``__post_init__``, so a bad option
is a :class:`~tl_spec.errors.TLSpecError` before any model is loaded.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(Options):
...     family = "demo"
...     size: int = option(4, "how many", minimum=1)
>>> Demo.build(size=2).size, Demo.defaults()
(2, {'size': 4})
>>> Demo.build(sise=2)
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: unknown demo option 'sise' (did you mean 'size'?); the demo options are: size
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from tl_spec.errors import TLSpecError

__all__ = ["Options", "check_choice", "check_number", "option", "split_options"]

O = TypeVar("O", bound="Options")


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_min: bool = False,
    integer: bool = False,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A field of an options class: its default, help text and bounds (checked on construction).

    ``parse`` turns a command-line string into the value (e.g. ``"0,0.1"`` into a tuple);
    ``cli=False`` keeps the option out of the generated flags.

    >>> option(1, "how many").metadata["help"]
    'how many'
    """
    meta = dict(help=help, minimum=minimum, maximum=maximum, exclusive_min=exclusive_min,
                integer=integer, parse=parse, metavar=metavar, cli=cli)
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def check_number(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, exclusive_min: bool = False,
                 integer: bool = False, family: str = "") -> None:
    """Raise a TLSpecError unless ``value`` is a finite number within the bounds.

    >>> check_number(0, "n_resamples", minimum=1, integer=True)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: n_resamples must be an integer >= 1, got 0
    """
    kind = "an integer" if integer else "a number"
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_min else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    want = f"{name} must be {kind}" + (f" {' and '.join(bounds)}" if bounds else "")
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type:
        raise TLSpecError(f"{want}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise TLSpecError(f"{want}, got {value!r}")
    low_bad = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        raise TLSpecError(f"{want}, got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[Any], why: str = "") -> None:
    """Raise a TLSpecError unless ``value`` is one of ``choices``.

    >>> check_choice("left", "padding_side", ("left", "right"))
    """
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(repr(c) for c in choices)
        raise TLSpecError(f"unknown {name} {value!r}{hint}; choose one of {listed}{why}")


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (also inside ``Optional``), else ``None``."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        found = _literal_choices(arg)
        if found is not None:
            return found
    return None


@dataclasses.dataclass(frozen=True)
class Options:
    """Frozen, self-validating options of one experiment family (see the module docstring).

    Subclasses set ``family`` (the name used in messages and study files) and declare fields
    with :func:`option`; ``Literal`` annotations are checked automatically, numbers against
    their bounds, and :meth:`validate` adds the checks that involve several fields.
    """

    family: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = _literal_choices(hints.get(f.name))
            if choices is not None and not (value is None and type(None) in
                                            typing.get_args(hints[f.name])):
                check_choice(value, f.name, choices)
            meta = f.metadata
            bounded = any(meta.get(k) is not None for k in ("minimum", "maximum"))
            if (bounded or meta.get("integer")) and not (value is None and f.default is None):
                check_number(value, f.name, minimum=meta.get("minimum"),
                             maximum=meta.get("maximum"), exclusive_min=meta.get("exclusive_min"),
                             integer=bool(meta.get("integer")), family=self.family)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; subclasses override (the per-field checks have already run)."""

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{name: default}`` for every option."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls: type[O], options: O | Mapping[str, Any] | None = None, /,
              **overrides: Any) -> O:
        """An instance from an existing one (or a mapping) plus keyword overrides, validated.

        Unknown names are refused with the closest valid name.
        """
        base: dict[str, Any] = {}
        if isinstance(options, cls):
            base = options.to_kwargs()
        elif isinstance(options, Options):
            raise TLSpecError(f"expected {cls.__name__}, got {type(options).__name__}")
        elif isinstance(options, Mapping):
            base = dict(options)
        elif options is not None:
            raise TLSpecError(f"options must be a {cls.__name__} or a mapping, got "
                              f"{type(options).__name__}")
        base.update(overrides)
        cls.check_names(base)
        return cls(**base)

    @classmethod
    def check_names(cls, names: Mapping[str, Any] | Sequence[str]) -> None:
        """Refuse names that are not options of this family, suggesting the closest one."""
        valid = cls.names()
        for name in names:
            if name not in valid:
                close = difflib.get_close_matches(str(name), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TLSpecError(f"unknown {cls.family} option {name!r}{hint}; the "
                                  f"{cls.family} options are: {', '.join(valid)}")

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(ours, rest)``: the entries of ``kwargs`` that are options of this family, and the rest."""
        names = set(cls.names())
        return ({k: v for k, v in kwargs.items() if k in names},
                {k: v for k, v in kwargs.items() if k not in names})

    def replace(self: O, **changes: Any) -> O:
        """A copy with ``changes`` applied (validated again)."""
        self.check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_kwargs(self) -> dict[str, Any]:
        """``{name: value}`` as Python values (for calling the API)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """``{name: value}`` with JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.to_kwargs().items()}

    # -- command line ------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *,
                      exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> None:
        """Add one ``--flag`` per option to ``parser``, with help text and the default shown.

        Flags not given on the command line are absent from the namespace, so
        :meth:`from_namespace` uses the class defaults for them.
        """
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name in exclude or (only is not None and f.name not in only) or not meta.get("cli", True):
                continue
            flag = "--" + f.name.replace("_", "-")
            text = meta.get("help", "")
            if "default" not in text:  # a help text may say its default in words
                text += f" (default: {_shown(f.default)})"
            kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
            tp = hints.get(f.name)
            choices = _literal_choices(tp)
            if tp is bool or (f.default is None and bool in typing.get_args(tp)):
                kw["action"] = argparse.BooleanOptionalAction
            elif meta.get("parse") is not None:
                kw["type"], kw["metavar"] = meta["parse"], meta.get("metavar") or "VALUE"
            elif choices is not None:
                kw["choices"] = [c for c in choices if c is not None]
            elif tp is int or meta.get("integer"):
                kw["type"], kw["metavar"] = int, meta.get("metavar") or "N"
            elif tp is float or tp == float | None:
                kw["type"], kw["metavar"] = float, meta.get("metavar") or "X"
            parser.add_argument(flag, **kw)

    @classmethod
    def from_namespace(cls: type[O], args: argparse.Namespace, **overrides: Any) -> O:
        """An instance from the flags :meth:`add_arguments` added (absent flags keep defaults)."""
        given = {k: v for k, v in vars(args).items() if k in cls.names()}
        given.update(overrides)
        return cls.build(**given)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def split_options(values: Mapping[str, Any], *families: tuple[type[Options], Any]) -> list[Any]:
    """Build several option families from one set of keyword values.

    ``families`` are ``(OptionsClass, given_instance_or_None)`` pairs; each keyword goes to the
    family that declares it, and a keyword no family declares is refused, naming them all.

    >>> from tl_spec.options.si import SIOptions, StatsOptions
    >>> si, st = split_options({"method": "entropy_profile", "seed": 3},
    ...                        (SIOptions, None), (StatsOptions, None))
    >>> si.method, st.seed
    ('entropy_profile', 3)
    """
    rest = dict(values)
    out = []
    for cls, given in families:
        ours, rest = cls.split(rest)
        out.append(cls.build(given, **ours))
    if rest:
        name = next(iter(rest))
        valid = [n for cls, _ in families for n in cls.names()]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TLSpecError(f"unknown option {name!r}{hint}; valid options here: {', '.join(valid)}")
    return out

