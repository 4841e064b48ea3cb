"""Experiments: the modules that run models. Importing this package registers every result kind."""

from tl_spec.experiments import delta, si

__all__ = ["delta", "si"]
