"""Experiments: the modules that run models. Importing this package registers every result kind."""

from tl_spec.experiments import delta, probe, sensitivity, si

__all__ = ["delta", "probe", "sensitivity", "si"]
