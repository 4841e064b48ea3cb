"""Options of the attention-variant experiments (seed 003): ``deconstruct`` and the trained-variant study.

:class:`DeconstructOptions` is the one place the defaults of :func:`tl_spec.deconstruct` live (the
API, the ``tl-spec deconstruct`` flags and study files read them from here);
:class:`VariantStudyOptions` those of :func:`tl_spec.trained_variants_study`. Both validate
themselves on construction, so a misspelt variant or a ``"hybrid:0"`` placement is an error before
any model is loaded.

>>> DeconstructOptions().placements, DeconstructOptions(variants="uniform,form").variants
(('all', 'hybrid:2', 'single'), ('uniform', 'form'))
>>> DeconstructOptions(placements=("hybrid:0",))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: 'hybrid:0': use 'hybrid:k' with an integer k >= 2 (standard attention kept in every k-th layer)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal

from tl_spec.errors import TLSpecError
from tl_spec.names import parse_layers
from tl_spec.options.base import option
from tl_spec.options.si import StatsOptions

__all__ = ["FORMS", "VARIANTS", "DeconstructOptions", "Form", "TextBootstrapOptions", "Variant",
           "VariantStudyOptions", "check_placement", "hybrid_period", "split_names"]

Variant = Literal["no_mixing", "uniform", "static", "form", "decoupled"]
Form = Literal["relu", "sigmoid", "softmax"]
#: The attention variants, each relaxing one principle of dot-product attention.
VARIANTS: tuple[str, ...] = ("no_mixing", "uniform", "static", "form", "decoupled")
#: Normalisations of the ``"form"`` variant (``"softmax"`` is the control).
FORMS: tuple[str, ...] = ("relu", "sigmoid", "softmax")


def split_names(value: Any) -> tuple[Any, ...]:
    """A tuple from a comma-separated string (as on the command line) or any iterable.

    >>> split_names("uniform, form"), split_names(["all", [0, 2]])
    (('uniform', 'form'), ('all', [0, 2]))
    """
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    if not isinstance(value, Iterable):
        raise TLSpecError(f"expected a list or a comma-separated string, got {value!r}")
    return tuple(value)


def hybrid_period(text: str) -> int | None:
    """``k`` of a ``"hybrid:k"`` placement (checked: an integer >= 2), else ``None``.

    >>> hybrid_period("hybrid:3"), hybrid_period("all")
    (3, None)
    """
    if not text.startswith("hybrid:"):
        return None
    k = text.split(":", 1)[1].strip()
    if not k.isdigit() or int(k) < 2:
        raise TLSpecError(f"{text!r}: use 'hybrid:k' with an integer k >= 2 (standard attention "
                          "kept in every k-th layer)")
    return int(k)


def check_placement(placement: Any) -> str:
    """One placement, checked and written as text (how it is labelled in results).

    Placements: ``"all"``, ``"early"`` / ``"middle"`` / ``"late"``, ``"hybrid:k"`` (standard
    attention kept in every k-th layer), ``"single"`` (one condition per layer), ``"START:STOP"``,
    layer numbers joined by ``+`` (``"0+2"``), or layer indices as a list (``[0, 2]`` becomes
    ``"0,2"``) or a ``(start, stop)`` tuple (``(0, 2)`` becomes ``"0,1"``). Whether the layers
    exist is checked against the model.

    >>> check_placement([2, 0]), check_placement((1, 3)), check_placement("0+2")
    ('0,2', '1,2', '0+2')
    >>> check_placement("none")
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: placement 'none' changes no layer; drop it
    """
    if isinstance(placement, (list, set, frozenset)) or (
            isinstance(placement, tuple) and not _is_range(placement)):
        layers = _ints(placement)
        if not layers:
            raise TLSpecError(f"placement {placement!r} changes no layer; drop it")
        return ",".join(str(x) for x in sorted(set(layers)))
    if isinstance(placement, tuple):  # (start, stop)
        start, stop = int(placement[0]), int(placement[1])
        if not 0 <= start < stop:
            raise TLSpecError(f"placement {placement!r}: a (start, stop) layer range needs "
                              "0 <= start < stop")
        return ",".join(str(x) for x in range(start, stop))
    if not isinstance(placement, str):
        raise TLSpecError(f"placement {placement!r} must be a string (all, hybrid:K, single, "
                          "early|middle|late, START:STOP, 0+2) or a list of layer indices")
    text = placement.strip()
    if text == "none":
        raise TLSpecError("placement 'none' changes no layer; drop it")
    if text == "single" or hybrid_period(text) is not None:
        return text
    if text.replace("+", "").isdigit():
        return text
    try:
        spec = parse_layers(text)
    except TLSpecError:
        raise TLSpecError(
            f"unknown placement {placement!r}; use all, hybrid:K (K >= 2), single, "
            "early|middle|late, START:STOP or layer numbers joined by + (0+2)") from None
    if isinstance(spec, list) and any(x < 0 for x in spec):
        raise TLSpecError(f"placement {placement!r}: layer indices must be >= 0")
    return text


def _is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_range(value: tuple) -> bool:
    return len(value) == 2 and all(_is_int(x) for x in value)


def _ints(values: Any) -> list[int]:
    out = []
    for x in values:
        if not _is_int(x) or x < 0:
            raise TLSpecError(f"layer indices must be integers >= 0, got {x!r} in {values!r}")
        out.append(int(x))
    return out


@dataclass(frozen=True)
class TextBootstrapOptions(StatsOptions):
    """:class:`~tl_spec.options.StatsOptions` of a bootstrap over texts (2,000 resamples).

    >>> TextBootstrapOptions().n_resamples
    2000
    """

    family = "bootstrap"

    confidence: float = option(0.95, "confidence level of the loss-change intervals, strictly "
                               "between 0 and 1", minimum=0, exclusive_min=True)
    n_resamples: int = option(2000, "bootstrap resamples over texts", minimum=100, integer=True)
    seed: int = option(0, "seed of the bootstrap", minimum=0, integer=True)


@dataclass(frozen=True)
class DeconstructOptions(TextBootstrapOptions):
    """How :func:`tl_spec.deconstruct` replaces attention and measures the cost.

    Attributes:
        variants: attention variants to apply (``no_mixing``, ``uniform``, ``static``, ``form``,
            ``decoupled``); a comma-separated string is split.
        placements: where each variant goes: ``all``, ``hybrid:K`` (standard attention kept in
            every K-th layer), ``single`` (each layer on its own), ``early|middle|late``,
            ``START:STOP``, ``0+2`` or a list of layer indices.
        form: normalisation of the ``form`` variant: ``relu``, ``sigmoid`` or ``softmax``.
        source_layer: ``decoupled``: queries and keys come from this layer's ``resid_pre``.
        max_length: texts are truncated to this many tokens (with a warning).
        batch_size: texts per forward pass.
        confidence: level of the loss-change intervals.
        n_resamples: bootstrap resamples (at least 100).
        seed: seed of the bootstrap.

    >>> DeconstructOptions.build(form="sigmoid", n_resamples=500).to_dict()["form"]
    'sigmoid'
    >>> DeconstructOptions(variants=("softmax",))
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: unknown attention variant(s) ['softmax']; choose from no_mixing, uniform, static, form, decoupled
    """

    family = "deconstruct"

    variants: tuple[str, ...] = option(
        VARIANTS, "attention variants, comma-separated: no_mixing, uniform, static, form, "
        "decoupled", parse=split_names, metavar="V,V")
    placements: tuple[str, ...] = option(
        ("all", "hybrid:2", "single"), "where each variant goes, comma-separated: all, hybrid:K, "
        "single, early|middle|late, START:STOP, 0+2", parse=split_names, metavar="P,P")
    form: Form = option("relu", "normalisation of the form variant: relu, sigmoid or softmax")
    source_layer: int = option(0, "decoupled: queries and keys from this layer's resid_pre",
                               minimum=0, integer=True)
    max_length: int = option(128, "truncate texts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(8, "texts per forward pass", minimum=1, integer=True)

    def __post_init__(self) -> None:
        variants = split_names(self.variants)
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            raise TLSpecError(f"unknown attention variant(s) {bad or list(variants)!r}; choose "
                              f"from {', '.join(VARIANTS)}")
        placements = split_names(self.placements)
        if not placements:
            raise TLSpecError("placements is empty; give at least one (e.g. all, hybrid:2, single)")
        object.__setattr__(self, "variants", tuple(str(v) for v in variants))
        object.__setattr__(self, "placements", tuple(check_placement(p) for p in placements))
        super().__post_init__()



@dataclass(frozen=True)
class VariantStudyOptions(TextBootstrapOptions):
    """How :func:`tl_spec.trained_variants_study` measures held-out loss and its intervals.

    Attributes:
        max_length: texts are truncated to this many tokens (with a warning).
        batch_size: texts per forward pass.
        confidence: level of the loss-change intervals.
        n_resamples: bootstrap resamples (at least 100).
        seed: seed of the bootstrap.

    >>> VariantStudyOptions().n_resamples
    2000
    """

    family = "variant study"

    max_length: int = option(128, "truncate texts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(16, "texts per forward pass", minimum=1, integer=True)
