"""The experiments a study can run: which function, how many models, where the seed goes.

Each kind maps one cell (models, prompt set, one seed, options) to one call of a public
tl_spec function. Its options are the fields of the function's options classes
(:mod:`tl_spec.options`, the single source of every default) plus a few keyword arguments of the
function itself, so the defaults that go into a cell's key are exactly the ones the function uses.

>>> KINDS["probe"].seed_param, KINDS["delta"].arity
('seeds', 'twin')
>>> [k for k in KINDS][:6]
['si', 'delta', 'probe', 'sweep', 'sensitivity', 'stability']
>>> sorted(KINDS["si"].defaults())[:3]
['aggregate', 'batch_size', 'max_length']
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tl_spec.errors import TLSpecError
from tl_spec.options.base import split_options

__all__ = ["KINDS", "Arity", "Kind", "run_kind"]

Arity = Literal["one", "twin", "group"]
# options that never change the numbers (or cannot be written in a study file)
_NOT_OPTIONS = frozenset({"progress", "stat_dtype"})
_SI = "tl_spec.options.si:SIOptions"
_STATS = "tl_spec.options.si:StatsOptions"
_NOISE = "tl_spec.options.noise"
# kinds whose intervals resample prompts (so they need two or more)
_PROMPT_RESAMPLING = ("delta", "probe")


@dataclass(frozen=True)
class Kind:
    """An experiment kind: ``func`` (``module:name``), arity, seed parameter, default prompts.

    ``families`` name the options classes (``module:Class``) whose fields are the kind's options;
    ``extra`` are keyword arguments of the function itself that a study may set; ``overrides``
    are the function's own defaults where they differ from its options classes' (the sweep's
    SI method).
    """

    name: str
    func: str
    arity: Arity
    seed_param: str | None
    default_prompts: str
    families: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    help: str = ""

    def function(self) -> Any:
        module, _, name = self.func.partition(":")
        return getattr(importlib.import_module(module), name)

    def option_classes(self) -> list[Any]:
        """The options classes of this kind (imported from :mod:`tl_spec.options`)."""
        out = []
        for path in self.families:
            module, _, name = path.partition(":")
            out.append(getattr(importlib.import_module(module), name))
        return out

    def _all_defaults(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for cls in self.option_classes():
            out.update(cls.defaults())
        if self.extra:
            sig = inspect.signature(self.function())
            out.update({k: sig.parameters[k].default for k in self.extra})
        out.update(dict(self.overrides))
        return out

    def defaults(self) -> dict[str, Any]:
        """Options and their defaults (the seed parameter excluded)."""
        return {k: v for k, v in self._all_defaults().items()
                if k not in _NOT_OPTIONS and k != self.seed_param}

    def default_seeds(self) -> list[int] | None:
        """The function's own default seeds, split into cells (``None``: no seed)."""
        if self.seed_param is None:
            return None
        default = self._all_defaults()[self.seed_param]
        return [int(s) for s in default] if self.seed_param == "seeds" else [int(default)]

    def build_options(self, options: dict[str, Any]) -> list[Any]:
        """Each options class built from ``options`` (validated; an unknown name is refused)."""
        values = {k: v for k, v in options.items() if k not in self.extra}
        return split_options(values, *((cls, None) for cls in self.option_classes()))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("si", "tl_spec.experiments.si:specialization_index", "one", None, "standard10",
         families=(_SI,), help="Specialization Index of each model"),
    Kind("delta", "tl_spec.experiments.delta:delta_si", "twin", "seed", "standard10",
         families=(_SI, _STATS), extra=("chat_template", "allow_different_tokenizers"),
         help="ΔSI of each twin pair (seed: the bootstrap's)"),
    Kind("probe", "tl_spec.experiments.probe:perturbation_probe", "one", "seeds", "standard10",
         families=(f"{_NOISE}:ProbeOptions", _SI, _STATS),
         help="perturbation probe of each model (seed: the noise seed)"),
    Kind("sweep", "tl_spec.experiments.probe:probe_sweep", "one", "seeds", "standard10",
         families=(f"{_NOISE}:SweepOptions", _SI), overrides=(("method", "entropy_profile"),),
         help="E11-T sweep of each model (seed: the noise seed)"),
    Kind("sensitivity", "tl_spec.experiments.sensitivity:noise_sensitivity", "one", "seeds",
         "e06", families=(f"{_NOISE}:SensitivityOptions",),
         help="perplexity slope against sigma of each model (seed: the noise seed)"),
    Kind("stability", "tl_spec.experiments.stability:head_stability", "group", "seed",
         "standard10", families=("tl_spec.options.stability:StabilityOptions",
                                 "tl_spec.options.stability:StabilityStatsOptions"),
         help="head stability of each group of models (seed: the null's and bootstrap's)"),
    Kind("deconstruct", "tl_spec.experiments.deconstruct:deconstruct", "one", "seed",
         "standard10_e06", families=("tl_spec.options.deconstruct:DeconstructOptions",),
         help="loss and kept-layer SI under attention variants of each model (seed: the "
         "bootstrap's)"),
)}


def layer_spec(value: Any) -> Any:
    """``"A:B"`` -> ``(A, B)`` (a layer range, as on the command line); other values unchanged.

    >>> layer_spec("1:3"), layer_spec("late"), layer_spec([0, 2])
    ((1, 3), 'late', [0, 2])
    """
    if isinstance(value, str) and ":" in value:
        start, _, stop = value.partition(":")
        try:
            return (int(start), int(stop))
        except ValueError:
            raise TLSpecError(f"layer range {value!r} must be START:STOP with integers, e.g. "
                              "'0:2'") from None
    return value


def call_options(kind: Kind, options: dict[str, Any]) -> dict[str, Any]:
    """Study options (JSON values) as the function's arguments (layer ranges, region lists)."""
    out = dict(options)
    if "layers" in out:
        out["layers"] = layer_spec(out["layers"])
    if "regions" in out:
        out["regions"] = [layer_spec(r) if isinstance(r, str) else tuple(r) if
                          isinstance(r, list) and len(r) == 2 else r for r in out["regions"]]
    for name in ("sigmas",):
        if name in out:
            out[name] = tuple(out[name])
    return out


def check_kind_options(kind: Kind, options: dict[str, Any], n_prompts: int) -> None:
    """Validate option values with the experiment's own options classes, before anything runs."""
    o = {**kind.defaults(), **options}
    for built in kind.build_options(o):
        if kind.name in _PROMPT_RESAMPLING and hasattr(built, "check_units"):
            built.check_units(n_prompts)
    call_options(kind, {k: o[k] for k in ("layers", "regions") if k in o})


def run_kind(kind: Kind, models: Sequence[Any], prompts: Any, options: dict[str, Any],
             seed: int | None) -> Any:
    """Run one cell: the kind's function on ``models`` and ``prompts``, ``options``, ``seed``."""
    fn = kind.function()
    kwargs = call_options(kind, options)
    if kind.seed_param == "seeds":
        kwargs["seeds"] = (int(seed),)  # type: ignore[arg-type]
    elif kind.seed_param == "seed":
        kwargs["seed"] = int(seed)  # type: ignore[arg-type]
    if kind.arity == "one":
        return fn(models[0], prompts, **kwargs)
    if kind.arity == "twin":
        return fn(models[0], models[1], prompts, **kwargs)
    return fn(list(models), prompts, **kwargs)
