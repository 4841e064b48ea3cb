"""The zoo's corpus: kept importable here; it lives in :mod:`tl_spec.corpus`.

>>> from tl_spec.zoo.corpus import heldout_texts  # the same function as tl_spec.corpus's
"""

from tl_spec.corpus import *  # noqa: F401,F403
from tl_spec.corpus import __all__  # noqa: F401
