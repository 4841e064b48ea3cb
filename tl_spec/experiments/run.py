"""The model-running loop, re-exported from :mod:`tl_spec.running` (where it now lives, below the hooks).

>>> from tl_spec.experiments.run import run_batches, model_device
>>> run_batches is __import__("tl_spec.running", fromlist=["run_batches"]).run_batches
True
"""

from __future__ import annotations

from tl_spec.running import model_device, run_batches

__all__ = ["model_device", "run_batches"]
