"""tl_spec: attention-head specialization for TransformerLens models.

Specialization Index (three published definitions, by name), capture hooks that reduce
patterns inside the forward pass, model loading for both TransformerLens backends.

>>> import tl_spec
>>> model = tl_spec.load_model("path/to/hf_checkpoint")                       # doctest: +SKIP
>>> si = tl_spec.specialization_index(model, tl_spec.prompts.STANDARD_10)     # doctest: +SKIP
>>> print(si.summary())                                                       # doctest: +SKIP
>>> tl_spec.SIOptions(method="entropy_profile").method
'entropy_profile'
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tl_spec import hooks, names, options, prompts, stats, viz, zoo
from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec.experiments.deconstruct import DeconstructResult, deconstruct
from tl_spec.experiments.delta import DeltaResult, delta_from_results, delta_si
from tl_spec.experiments.importance import ImportanceResult, head_importance
from tl_spec.experiments.probe import ProbeResult, SweepResult, perturbation_probe, probe_sweep
from tl_spec.experiments.sensitivity import (
    SensitivityComparison,
    SensitivityResult,
    compare_sensitivity,
    noise_sensitivity,
)
from tl_spec.experiments.si import SIResult, specialization_index
from tl_spec.experiments.stability import StabilityResult, head_stability
from tl_spec.experiments.stability_study import StudyGroup, StudyResult, stability_study
from tl_spec.experiments.variant_study import VariantStudyResult, trained_variants_study
from tl_spec.hooks.capture import PatternStats
from tl_spec.metrics.specialization import si_from_entropy_profile
from tl_spec.models import ModelFacts, describe, load_model
from tl_spec.options import (
    DeconstructOptions,
    ImportanceOptions,
    ProbeOptions,
    SensitivityOptions,
    SIOptions,
    StabilityOptions,
    StatsOptions,
    SweepOptions,
    VariantStudyOptions,
)
from tl_spec.results import load_result

try:
    __version__ = version("tl_spec")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = [
    "DeconstructOptions",
    "DeconstructResult",
    "DeltaResult",
    "ImportanceOptions",
    "ImportanceResult",
    "ModelFacts",
    "PatternStats",
    "ProbeOptions",
    "ProbeResult",
    "SIOptions",
    "SIResult",
    "SensitivityComparison",
    "SensitivityOptions",
    "SensitivityResult",
    "StabilityOptions",
    "StabilityResult",
    "StatsOptions",
    "StudyGroup",
    "StudyResult",
    "SweepOptions",
    "SweepResult",
    "TLSpecError",
    "TLSpecWarning",
    "VariantStudyOptions",
    "VariantStudyResult",
    "__version__",
    "compare_sensitivity",
    "deconstruct",
    "delta_from_results",
    "delta_si",
    "describe",
    "head_importance",
    "head_stability",
    "hooks",
    "load_model",
    "load_result",
    "names",
    "noise_sensitivity",
    "options",
    "perturbation_probe",
    "probe_sweep",
    "prompts",
    "si_from_entropy_profile",
    "specialization_index",
    "stability_study",
    "stats",
    "trained_variants_study",
    "viz",
    "zoo",
]
