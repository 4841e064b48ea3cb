"""Experiments: the modules that run models. Importing this package registers every result kind."""

from tl_spec.experiments import delta, importance, probe, sensitivity, si, stability, stability_study

__all__ = ["delta", "importance", "probe", "sensitivity", "si", "stability", "stability_study"]
