"""Options objects: one frozen, self-validating dataclass per experiment family.

Each is the single source of its family's defaults for the Python API, the ``tl-spec`` flags and
study files. Pass one as ``options=`` or give the same names as keyword arguments.

>>> from tl_spec.options import SIOptions
>>> SIOptions.build(method="entropy_profile").method
'entropy_profile'
"""

from tl_spec.options.base import Options, check_choice, check_number, option, split_options
from tl_spec.options.si import (
    METHODS,
    Aggregate,
    Method,
    PaddingSide,
    Region,
    SIOptions,
    StatDtype,
    StatsOptions,
)

__all__ = ["METHODS", "Aggregate", "Method", "Options", "PaddingSide", "Region", "SIOptions",
           "StatDtype", "StatsOptions", "check_choice", "check_number", "option",
           "split_options"]
