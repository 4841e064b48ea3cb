"""The zoo: small causal LMs trained offline on real English (Python's own documentation).

Importing the zoo registers the attention-variant checkpoint extension with
:func:`tl_spec.load_model` (:mod:`tl_spec.zoo.variant_models`). The package only re-exports its
submodules' names; no submodule imports the package itself.

>>> from tl_spec import zoo
>>> model = zoo.load("base-gqa")      # doctest: +SKIP
>>> [e.name for e in zoo.available()][:2]
['base-gqa', 'base-mha']
"""

from tl_spec.zoo import variant_models
from tl_spec.zoo.registry import (
    SETS,
    ZooEntry,
    ZooModel,
    available,
    build,
    cache_dir,
    load,
    model_dir,
    refit_groups,
    twin_families,
    variant_groups,
)

__all__ = ["SETS", "ZooEntry", "ZooModel", "available", "build", "cache_dir", "load", "model_dir",
           "refit_groups", "twin_families", "variant_groups",
           "variant_models"]
