"""Options objects: one frozen, self-validating dataclass per experiment family.

Each is the single source of its family's defaults for the Python API, the ``tl-spec`` flags and
study files. Pass one as ``options=`` (or the family's own keyword, e.g. ``si_options=``) or give
the same names as keyword arguments; unknown names and bad values are refused on construction,
before any model is loaded.

>>> from tl_spec.options import SIOptions
>>> SIOptions.build(method="entropy_profile").method
'entropy_profile'
"""

from tl_spec.options.base import Options, check_choice, check_number, option, split_options
from tl_spec.options.controlled import ControlledOptions, ControlledStatsOptions
from tl_spec.options.deconstruct import DeconstructOptions, VariantStudyOptions
from tl_spec.options.importance import ImportanceOptions
from tl_spec.options.length import LengthOptions
from tl_spec.options.noise import NoiseOptions, ProbeOptions, SensitivityOptions, SweepOptions
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
from tl_spec.options.stability import (
    MEASURES,
    Measure,
    StabilityOptions,
    StabilityStatsOptions,
    StabilityStudyOptions,
)

__all__ = [
    "ControlledOptions",
    "ControlledStatsOptions",
    "MEASURES",
    "METHODS",
    "Aggregate",
    "DeconstructOptions",
    "ImportanceOptions",
    "LengthOptions",
    "Measure",
    "Method",
    "NoiseOptions",
    "Options",
    "PaddingSide",
    "ProbeOptions",
    "Region",
    "SIOptions",
    "SensitivityOptions",
    "StabilityOptions",
    "StabilityStatsOptions",
    "StabilityStudyOptions",
    "StatDtype",
    "StatsOptions",
    "SweepOptions",
    "VariantStudyOptions",
    "check_choice",
    "check_number",
    "option",
    "split_options",
]
