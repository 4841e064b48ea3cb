"""Options of the noise experiments: the perturbation probe, the E11-T sweep, noise sensitivity.

:class:`NoiseOptions` holds what every noise experiment shares (seeds, site, relative sigma, the
fast engine); :class:`ProbeOptions`, :class:`SweepOptions` and :class:`SensitivityOptions` add
each experiment's own. They are the one place these defaults live: the API, the ``tl-spec``
flags and study files read them from here. The probe and the sweep take their SI options from
:class:`~tl_spec.options.SIOptions` (and the probe its interval's from
:class:`~tl_spec.options.StatsOptions`).

Layer ranges are stored as text (``"late"``, ``"0:11"``, ``"3,5"``), the form
:func:`tl_spec.names.parse_layers` reads, so they survive JSON unchanged; any layer spec
(a name, a ``(start, stop)`` tuple, a list of indices) is accepted.

>>> ProbeOptions(layers=(0, 11)).layers, ProbeOptions.build(seeds=[7]).seeds
('0:11', (7,))
>>> SweepOptions(sigmas=parse_sigmas("0, 0.1"), regions=("early", (0, 2))).regions
('early', '0:2')
>>> ProbeOptions(seeds=(1.5, 2))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: seeds must be integers, got 1.5 (float)
"""

from __future__ import annotations

import argparse
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from tl_spec.errors import TLSpecError

# names.py imports only errors (no cycle); it is the one parser of layer-range text
from tl_spec.names import LayerSpec, parse_layers
from tl_spec.options.base import Options, option
from tl_spec.options.si import PaddingSide

__all__ = [
    "NOISE_SITES",
    "NoiseOptions",
    "OptionTextError",
    "ProbeOptions",
    "SensitivityOptions",
    "Site",
    "SweepOptions",
    "check_seeds",
    "check_sigma",
    "check_site",
    "layer_text",
    "parse_regions",
    "parse_seeds",
    "parse_sigmas",
]

Site = Literal["attn_out", "z", "pattern", "resid_pre"]
#: The sites noise can be added at (TransformerLens hook points of every layer).
NOISE_SITES: tuple[str, ...] = typing.get_args(Site)
_DEFAULT_SIGMAS = (0, 0.01, 0.02, 0.05, 0.1, 0.2)


class OptionTextError(TLSpecError, argparse.ArgumentTypeError):
    """Bad option text (a flag's value): a TLSpecError that argparse prints as it is."""


def check_site(site: Any) -> None:
    """Raise a TLSpecError unless ``site`` is one of :data:`NOISE_SITES`.

    >>> check_site("mlp_out")
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: unknown noise site 'mlp_out'; choose one of attn_out, z, pattern, resid_pre
    """
    if site not in NOISE_SITES:
        raise TLSpecError(f"unknown noise site {site!r}; choose one of {', '.join(NOISE_SITES)}")


def check_sigma(value: Any, name: str = "sigma") -> float:
    """``value`` as a float, or a TLSpecError unless it is a finite number >= 0.

    >>> check_sigma(0.05), check_sigma(0)
    (0.05, 0.0)
    >>> check_sigma(-1)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: sigma must be a finite number >= 0, got -1
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or value < 0:
        raise TLSpecError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_seeds(values: Any) -> tuple[int, ...]:
    """``values`` as a tuple of ints, or a TLSpecError unless they are distinct integers.

    Text is parsed as comma-separated integers.

    >>> check_seeds([42, 123]), check_seeds("7")
    ((42, 123), (7,))
    >>> check_seeds([1, 1])
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: seeds must be a non-empty list of distinct integers, got [1, 1]
    """
    seeds = _tuple_of(values, parse_seeds, "seeds", "(42, 123)")
    for s in seeds:
        if not _is_int(s):
            raise TLSpecError(f"seeds must be integers, got {s!r} ({type(s).__name__})")
    out = tuple(int(s) for s in seeds)
    if not out or len(set(out)) != len(out):
        raise TLSpecError(f"seeds must be a non-empty list of distinct integers, got {list(out)!r}")
    return out


def _split(text: str, what: str, example: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise OptionTextError(f"{what} is empty; give comma-separated values, e.g. {example}")
    if not all(parts):
        raise OptionTextError(f"{what} {text!r} has an empty entry; give comma-separated values, "
                         f"e.g. {example}")
    return parts


def _numbers(text: str, kind: type, what: str, kinds: str, example: str) -> tuple[Any, ...]:
    out = []
    for part in _split(text, what, example):
        try:
            out.append(kind(part))
        except ValueError:
            raise OptionTextError(f"{what} must be comma-separated {kinds}, got {part!r} in "
                                  f"{text!r}") from None
    return tuple(out)


def parse_sigmas(text: str) -> tuple[float, ...]:
    """Comma-separated noise levels (command line, study file) as a tuple of floats.

    >>> parse_sigmas("0,0.05, 0.1")
    (0.0, 0.05, 0.1)
    >>> parse_sigmas("")
    Traceback (most recent call last):
    ...
    tl_spec.options.noise.OptionTextError: sigmas is empty; give comma-separated values, e.g. 0,0.05,0.1
    """
    return _numbers(text, float, "sigmas", "numbers", "0,0.05,0.1")


def parse_seeds(text: str) -> tuple[int, ...]:
    """Comma-separated integer seeds as a tuple.

    >>> parse_seeds("42,123")
    (42, 123)
    >>> parse_seeds("1.5")
    Traceback (most recent call last):
    ...
    tl_spec.options.noise.OptionTextError: seeds must be comma-separated integers, got '1.5' in '1.5'
    """
    return _numbers(text, int, "seeds", "integers", "42,123,456")


def parse_regions(text: str) -> tuple[str, ...]:
    """Comma-separated layer regions (``early|middle|late|all`` or ``START:STOP``) as text.

    >>> parse_regions("early,0:2")
    ('early', '0:2')
    """
    return tuple(layer_text(p) for p in _split(text, "regions", "early,middle,late,all"))


def layer_text(spec: LayerSpec) -> str:
    """A layer spec in its text form: ``"late"``, ``(0, 11)`` -> ``"0:11"``, ``[3, 5]`` -> ``"3,5"``.

    Text is checked with :func:`tl_spec.names.parse_layers`; whether the layers exist is checked
    against the model later (:func:`tl_spec.names.resolve_layers`).

    >>> layer_text("middle"), layer_text((0, 11)), layer_text([5, 3]), layer_text(" 1:3 ")
    ('middle', '0:11', '5,3', '1:3')
    """
    if isinstance(spec, str):
        try:
            spec = parse_layers(spec)
        except TLSpecError as err:
            raise OptionTextError(str(err)) from None
        if isinstance(spec, str):
            return spec
    if isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(x) for x in spec):
        start, stop = int(spec[0]), int(spec[1])
        if not 0 <= start < stop:
            raise TLSpecError(f"layer range {spec} must have 0 <= start < stop")
        return f"{start}:{stop}"
    want = ("must be early|middle|late|all, a (start, stop) tuple, START:STOP text or a list of "
            "layer indices")
    if isinstance(spec, (bytes, dict, numbers.Number)):
        raise TLSpecError(f"layers {spec!r} {want}")
    try:
        items = list(spec)
    except TypeError:
        raise TLSpecError(f"layers {spec!r} {want}") from None
    bad = [x for x in items if not _is_int(x) or x < 0]
    if bad or not items:
        raise TLSpecError(f"layers {items!r} must be a non-empty list of layer indices "
                          f"(integers >= 0){f', got {bad[0]!r}' if bad else ''}")
    return ",".join(str(int(x)) for x in items)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _tuple_of(value: Any, parse: Any, name: str, example: str) -> tuple[Any, ...]:
    """A sequence option as a tuple (text is parsed; a bare number is refused with a hint)."""
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, (numbers.Number, bytes, dict)):
        raise TLSpecError(f"{name} must be a list, got {value!r}; e.g. {name}={example}")
    try:
        return tuple(value)
    except TypeError:
        raise TLSpecError(f"{name} must be a list, got {value!r}; e.g. {name}={example}") from None


@dataclass(frozen=True)
class NoiseOptions(Options):
    """What every noise experiment shares: seeds, site, sigma units, the fast engine.

    Attributes:
        seeds: noise seeds (distinct integers); the noise is a pure function of seed, prompt,
            layer and site.
        site: where the noise is added: ``"attn_out"`` (attention output, the paper's site),
            ``"z"`` (per-head attention values), ``"pattern"`` (attention probabilities,
            renormalized) or ``"resid_pre"`` (residual stream entering the layer).
        relative: sigma in units of the site's RMS per layer (measured on the clean run), so
            models of different width get matched noise.
        fast: reuse the clean run and shared prefixes; ``False`` runs every condition from
            scratch (the same numbers to 1e-6, much slower).

    >>> NoiseOptions(site="mlp")
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: unknown noise site 'mlp'; choose one of attn_out, z, pattern, resid_pre
    """

    family = "noise"

    seeds: tuple[int, ...] = option((42, 123, 456), "noise seeds (distinct integers)",
                                    parse=parse_seeds, metavar="S1,S2,...")
    site: Site = option("attn_out", "where the noise is added: attn_out, z, pattern, resid_pre")
    relative: bool = option(False, "sigma in units of the site's RMS per layer (clean run)")
    fast: bool = option(True, "reuse the clean run and shared prefixes (no: every condition "
                        "from scratch, the same numbers)")

    def __post_init__(self) -> None:
        check_site(self.site)
        object.__setattr__(self, "seeds", check_seeds(self.seeds))
        super().__post_init__()

    def _set_layers(self, name: str) -> None:
        object.__setattr__(self, name, layer_text(getattr(self, name)))

    def _set_sigmas(self) -> None:
        sigmas = _tuple_of(self.sigmas, parse_sigmas, "sigmas", "(0, 0.05, 0.1)")  # type: ignore[attr-defined]
        if not sigmas:
            raise TLSpecError("sigmas is empty; give at least one noise level, e.g. (0, 0.05, 0.1)")
        object.__setattr__(self, "sigmas", tuple(check_sigma(s) for s in sigmas))


@dataclass(frozen=True)
class ProbeOptions(NoiseOptions):
    """The perturbation probe (paper Sec. 2.4, Table 2): one sigma, one layer range, the bands.

    Attributes:
        sigma: noise standard deviation (RMS units with ``relative``).
        layers: noised layers: ``early|middle|late|all`` (thirds), ``START:STOP`` or indices.
        stable_band: a response within +-this many percent reads as stable (healthy).
        suppressed_above: a response above this many percent reads as suppressed (pathological).

    >>> ProbeOptions.build(sigma=0.1, layers="late").to_dict()["layers"]
    'late'
    """

    family = "probe"

    sigma: float = option(0.05, "noise standard deviation (RMS units with --relative)",
                          metavar="X")
    layers: LayerSpec = option("all", "noised layers: early|middle|late|all, START:STOP or "
                               "comma-separated indices", parse=layer_text, metavar="LAYERS")
    stable_band: float = option(5.0, "a response within +-this many percent is stable (healthy)",
                                minimum=0)
    suppressed_above: float = option(20.0, "a response above this many percent is suppressed "
                                     "(pathological)", minimum=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        self._set_layers("layers")
        super().__post_init__()

    def validate(self) -> None:
        if self.suppressed_above < self.stable_band:
            raise TLSpecError(f"suppressed_above ({self.suppressed_above:g}) must be >= "
                              f"stable_band ({self.stable_band:g})")


@dataclass(frozen=True)
class SweepOptions(NoiseOptions):
    """The E11-T sweep: SI over layer regions x sigmas x seeds.

    Its SI method defaults to ``"entropy_profile"`` (:attr:`default_method`, the E11-T route)
    unless ``method`` or an :class:`~tl_spec.options.SIOptions` is given.

    Attributes:
        sigmas: noise levels (sigma 0 is the clean run, not run again).
        regions: layer regions, each ``early|middle|late|all``, ``START:STOP`` or indices.
        target_si: an SI to recover towards (e.g. the base twin's); adds a recovery column.

    >>> SweepOptions(regions=["late", [3, 5]]).regions
    ('late', '3,5')
    """

    family = "sweep"
    default_method: ClassVar[str] = "entropy_profile"

    sigmas: tuple[float, ...] = option(_DEFAULT_SIGMAS, "noise levels", parse=parse_sigmas,
                                       metavar="X1,X2,...")
    regions: tuple[LayerSpec, ...] = option(("early", "middle", "late", "all"), "layer regions "
                                            "(early|middle|late|all or START:STOP)",
                                            parse=parse_regions, metavar="R1,R2,...")
    target_si: float | None = option(None, "an SI to recover towards (adds a recovery column)")

    def __post_init__(self) -> None:
        self._set_sigmas()
        regions = tuple(layer_text(r) for r in _tuple_of(self.regions, parse_regions, "regions",
                                                         '("early", "late")'))
        if not regions or len(set(regions)) != len(regions):
            raise TLSpecError(f"regions must be a non-empty list of distinct layer ranges, got "
                              f"{list(regions)!r}")
        object.__setattr__(self, "regions", regions)
        target = self.target_si
        if target is not None and (not isinstance(target, numbers.Real) or isinstance(target, bool)
                                   or not math.isfinite(target)):
            raise TLSpecError(f"target_si must be a finite number or None, got {target!r}")
        super().__post_init__()


@dataclass(frozen=True)
class SensitivityOptions(NoiseOptions):
    """Noise sensitivity (paper E06, Table 5): perplexity against sigma, and its slope.

    Attributes:
        sigmas: noise levels of the curve (at least 3 distinct, for a slope).
        layers: noised layers: ``early|middle|late|all`` (thirds), ``START:STOP`` or indices.
        min_r2: fits of PPL against sigma with a lower r^2 are reported and warned about.
        max_length: texts are truncated to this many tokens (with a warning).
        batch_size: rows (text x seed) per forward pass.
        prepend_bos: prepend BOS to text input; ``None`` follows the model's default. Token
            inputs are used as given.
        padding_side: where pads go inside a batch; results do not depend on it.

    >>> SensitivityOptions(sigmas=(0, 0.1))
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: a slope needs at least 3 distinct sigmas, got [0.0, 0.1]
    """

    family = "sensitivity"

    sigmas: tuple[float, ...] = option(_DEFAULT_SIGMAS, "noise levels (at least 3 distinct)",
                                       parse=parse_sigmas, metavar="X1,X2,...")
    layers: LayerSpec = option("all", "noised layers: early|middle|late|all, START:STOP or "
                               "comma-separated indices", parse=layer_text, metavar="LAYERS")
    min_r2: float = option(0.5, "warn about PPL-vs-sigma fits with a lower r^2", minimum=0,
                           maximum=1)
    max_length: int = option(128, "truncate texts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(16, "rows (text x seed) per forward pass", minimum=1, integer=True)
    prepend_bos: bool | None = option(None, "prepend BOS to text input (default: the model's "
                                      "own setting)")
    padding_side: PaddingSide = option("right", "padding side inside a batch (results do not "
                                       "depend on it)")

    def __post_init__(self) -> None:
        self._set_sigmas()
        self._set_layers("layers")
        super().__post_init__()

    def validate(self) -> None:
        if len(set(self.sigmas)) < 3:
            raise TLSpecError(f"a slope needs at least 3 distinct sigmas, got {list(self.sigmas)}")
