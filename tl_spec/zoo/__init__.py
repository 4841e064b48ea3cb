"""The zoo: small causal LMs trained offline on real English (Python's own documentation).

>>> from tl_spec import zoo
>>> model = zoo.load("base-gqa")      # doctest: +SKIP
>>> [e.name for e in zoo.available()][:2]
['base-gqa', 'base-mha']
"""

from tl_spec.zoo.registry import SETS, ZooEntry, ZooModel, available, build, cache_dir, load, model_dir

__all__ = ["SETS", "ZooEntry", "ZooModel", "available", "build", "cache_dir", "load", "model_dir"]
