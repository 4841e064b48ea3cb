"""Named hook points for TransformerLens models: pattern capture and noise injection.

>>> from tl_spec.hooks import PatternStats, noise
"""

from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.noising import NoiseHooks, noise, resolve_layers

__all__ = ["NoiseHooks", "PatternStats", "noise", "resolve_layers"]
