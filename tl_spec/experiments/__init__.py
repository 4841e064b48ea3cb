"""Experiments: the modules that run models. Importing this package registers every result kind."""

from tl_spec.experiments import (
    controlled,
    deconstruct,
    delta,
    importance,
    length,
    probe,
    sensitivity,
    si,
    stability,
    stability_study,
    variant_study,
)

__all__ = ["controlled", "deconstruct", "delta", "importance", "length", "probe", "sensitivity", "si", "stability",
           "stability_study", "variant_study"]
