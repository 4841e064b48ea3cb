"""The experiments a study can run: which function, how many models, where the seed goes.

Each kind maps one cell (models, prompt set, one seed, options) to one call of a public
tl_spec function. Its options are that function's keyword arguments (read from its signature),
so the defaults that go into a cell's key are exactly the ones the function would use.

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

__all__ = ["KINDS", "Arity", "Kind", "run_kind"]

Arity = Literal["one", "twin", "group"]
# keyword arguments that never change the numbers (or cannot be written in a study file)
_NOT_OPTIONS = frozenset({"progress", "stat_dtype"})
# delta_si passes these on to specialization_index
_SI_OPTIONS = ("region", "aggregate", "max_length", "batch_size", "prepend_bos", "padding_side")


@dataclass(frozen=True)
class Kind:
    """An experiment kind: ``func`` (``module:name``), arity, seed parameter, default prompts."""

    name: str
    func: str
    arity: Arity
    seed_param: str | None
    default_prompts: str
    extra: tuple[str, ...] = ()
    help: str = ""

    def function(self) -> Any:
        module, _, name = self.func.partition(":")
        return getattr(importlib.import_module(module), name)

    def defaults(self) -> dict[str, Any]:
        """Keyword options and their defaults (the seed parameter excluded)."""
        out = {}
        sig = inspect.signature(self.function())
        for p in sig.parameters.values():
            skip = p.name in _NOT_OPTIONS or p.name == self.seed_param
            if p.kind is p.KEYWORD_ONLY and not skip:
                out[p.name] = p.default
        if self.extra:
            si = inspect.signature(importlib.import_module("tl_spec.experiments.si")
                                   .specialization_index)
            out.update({k: si.parameters[k].default for k in self.extra})
        return out

    def default_seeds(self) -> list[int] | None:
        """The function's own default seeds, split into cells (``None``: no seed)."""
        if self.seed_param is None:
            return None
        default = inspect.signature(self.function()).parameters[self.seed_param].default
        return [int(s) for s in default] if self.seed_param == "seeds" else [int(default)]


_DECONSTRUCT = Kind("deconstruct", "tl_spec.experiments.deconstruct:deconstruct", "one", "seed",
                    "standard10_e06", help="loss and kept-layer SI under attention variants of "
                    "each model (seed: the bootstrap's)")

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("si", "tl_spec.experiments.si:specialization_index", "one", None, "standard10",
         help="Specialization Index of each model"),
    Kind("delta", "tl_spec.experiments.delta:delta_si", "twin", "seed", "standard10",
         extra=_SI_OPTIONS, help="ΔSI of each twin pair (seed: the bootstrap's)"),
    Kind("probe", "tl_spec.experiments.probe:perturbation_probe", "one", "seeds", "standard10",
         help="perturbation probe of each model (seed: the noise seed)"),
    Kind("sweep", "tl_spec.experiments.probe:probe_sweep", "one", "seeds", "standard10",
         help="E11-T sweep of each model (seed: the noise seed)"),
    Kind("sensitivity", "tl_spec.experiments.sensitivity:noise_sensitivity", "one", "seeds",
         "e06", help="perplexity slope against sigma of each model (seed: the noise seed)"),
    Kind("stability", "tl_spec.experiments.stability:head_stability", "group", "seed",
         "standard10", help="head stability of each group of models (seed: the null's and "
         "bootstrap's)"),
) + ((_DECONSTRUCT,) if importlib.util.find_spec("tl_spec.experiments.deconstruct") else ())}


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
    """Validate option values with the experiment's own checks, before anything runs."""
    from tl_spec.experiments.delta import check_stats_options
    from tl_spec.experiments.si import check_options
    from tl_spec.hooks.noising import check_noise_options

    o = {**kind.defaults(), **options}
    si_args = (o.get("method") or "pattern", o.get("region", "lower"), o.get("aggregate", "prompt"),
               o.get("batch_size", 16), o.get("max_length", 128), o.get("padding_side", "right"))
    if kind.name in ("si", "delta"):
        check_options(*si_args)
    if kind.name in ("delta", "probe"):
        check_stats_options(o["confidence"], o["n_resamples"], n_prompts)
    if kind.name in ("probe", "sweep", "sensitivity"):
        sigmas = o.get("sigmas") or [o.get("sigma", 0.0)]
        if not isinstance(sigmas, (list, tuple)):
            raise TLSpecError(f"sigmas must be a list of numbers, got {sigmas!r}")
        check_options(si_args[0], "lower", "prompt", si_args[3], si_args[4])
        check_noise_options(site=o.get("site", "attn_out"), sigmas=list(sigmas))
        call_options(kind, {k: o[k] for k in ("layers", "regions") if k in o})
    if kind.name == "sensitivity" and len(set(o["sigmas"])) < 3:
        raise TLSpecError(f"a slope needs at least 3 distinct sigmas, got {list(o['sigmas'])}")
    if kind.name == "stability":
        from tl_spec.experiments.stability import _check_options

        _check_options(o["measure"], o["region"], o["null"], o["n_blocks"] or 2, o["batch_size"],
                       o["n_resamples"])
    if kind.name == "deconstruct":
        from tl_spec.experiments.deconstruct import _check

        _check(list(o["variants"]), o["form"], o["n_resamples"])


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
