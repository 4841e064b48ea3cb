"""Named hook points for TransformerLens models: pattern capture, noise injection, attention
variants, and per-batch features for cross-model comparisons.

>>> from tl_spec.hooks import PatternStats, attention_variant, noise
"""

from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.features import BatchFeatures
from tl_spec.hooks.noising import NoiseDraws, NoiseHooks, noise, resolve_layers
from tl_spec.hooks.variants import AttentionVariant, attention_variant, static_patterns

__all__ = ["AttentionVariant", "BatchFeatures", "NoiseDraws", "NoiseHooks", "PatternStats",
           "attention_variant", "noise", "resolve_layers", "static_patterns"]
