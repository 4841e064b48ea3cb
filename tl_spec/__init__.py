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

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("tl_spec")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

# Public name -> the module that defines it. Nothing heavy (torch, TransformerLens, the
# experiments) is imported until a name is first used (PEP 562), so ``tl-spec --help`` and
# ``import tl_spec.options`` stay fast; ``from tl_spec import X`` works as before.
_SUBMODULES = ("hooks", "names", "options", "prompts", "stats", "viz", "zoo")
_LAZY: dict[str, str] = {
    "TLSpecError": "tl_spec.errors",
    "TLSpecWarning": "tl_spec.errors",
    "ControlledResult": "tl_spec.experiments.controlled",
    "TwinFamily": "tl_spec.experiments.controlled",
    "controlled_alignment_study": "tl_spec.experiments.controlled",
    "DeconstructResult": "tl_spec.experiments.deconstruct",
    "deconstruct": "tl_spec.experiments.deconstruct",
    "DeltaResult": "tl_spec.experiments.delta",
    "delta_from_results": "tl_spec.experiments.delta",
    "delta_si": "tl_spec.experiments.delta",
    "ImportanceResult": "tl_spec.experiments.importance",
    "head_importance": "tl_spec.experiments.importance",
    "LengthProfileResult": "tl_spec.experiments.length",
    "length_profile": "tl_spec.experiments.length",
    "ProbeResult": "tl_spec.experiments.probe",
    "SweepResult": "tl_spec.experiments.probe",
    "perturbation_probe": "tl_spec.experiments.probe",
    "probe_sweep": "tl_spec.experiments.probe",
    "SensitivityComparison": "tl_spec.experiments.sensitivity",
    "SensitivityResult": "tl_spec.experiments.sensitivity",
    "compare_sensitivity": "tl_spec.experiments.sensitivity",
    "noise_sensitivity": "tl_spec.experiments.sensitivity",
    "SIResult": "tl_spec.experiments.si",
    "specialization_index": "tl_spec.experiments.si",
    "StabilityResult": "tl_spec.experiments.stability",
    "head_stability": "tl_spec.experiments.stability",
    "StudyGroup": "tl_spec.experiments.stability_study",
    "StudyResult": "tl_spec.experiments.stability_study",
    "stability_study": "tl_spec.experiments.stability_study",
    "VariantStudyResult": "tl_spec.experiments.variant_study",
    "trained_variants_study": "tl_spec.experiments.variant_study",
    "PatternStats": "tl_spec.hooks.capture",
    "si_from_entropy_profile": "tl_spec.metrics.specialization",
    "ModelFacts": "tl_spec.models",
    "describe": "tl_spec.models",
    "load_model": "tl_spec.models",
    "ControlledOptions": "tl_spec.options",
    "DeconstructOptions": "tl_spec.options",
    "ImportanceOptions": "tl_spec.options",
    "LengthOptions": "tl_spec.options",
    "ProbeOptions": "tl_spec.options",
    "SensitivityOptions": "tl_spec.options",
    "SIOptions": "tl_spec.options",
    "StabilityOptions": "tl_spec.options",
    "StatsOptions": "tl_spec.options",
    "SweepOptions": "tl_spec.options",
    "VariantStudyOptions": "tl_spec.options",
    "load_result": "tl_spec.results",
    "ClaimsAudit": "tl_spec.audit.report",
    "claims_audit": "tl_spec.audit.report",
}

if TYPE_CHECKING:  # static tools see the eager imports
    from tl_spec import hooks, names, options, prompts, stats, viz, zoo
    from tl_spec.errors import TLSpecError, TLSpecWarning
    from tl_spec.experiments.deconstruct import DeconstructResult, deconstruct
    from tl_spec.experiments.delta import DeltaResult, delta_from_results, delta_si
    from tl_spec.experiments.importance import ImportanceResult, head_importance
    from tl_spec.experiments.length import LengthProfileResult, length_profile
    from tl_spec.experiments.probe import (
        ProbeResult,
        SweepResult,
        perturbation_probe,
        probe_sweep,
    )
    from tl_spec.experiments.controlled import (
        ControlledResult,
        TwinFamily,
        controlled_alignment_study,
    )
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
        ControlledOptions,
        DeconstructOptions,
        ImportanceOptions,
        LengthOptions,
        ProbeOptions,
        SensitivityOptions,
        SIOptions,
        StabilityOptions,
        StatsOptions,
        SweepOptions,
        VariantStudyOptions,
    )
    from tl_spec.audit.report import ClaimsAudit, claims_audit
    from tl_spec.results import load_result


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and cache it in the package namespace."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"tl_spec.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'tl_spec' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ClaimsAudit",
    "ControlledOptions",
    "ControlledResult",
    "DeconstructOptions",
    "DeconstructResult",
    "DeltaResult",
    "ImportanceOptions",
    "ImportanceResult",
    "LengthOptions",
    "LengthProfileResult",
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
    "TwinFamily",
    "VariantStudyOptions",
    "VariantStudyResult",
    "__version__",
    "claims_audit",
    "compare_sensitivity",
    "controlled_alignment_study",
    "deconstruct",
    "delta_from_results",
    "delta_si",
    "describe",
    "head_importance",
    "head_stability",
    "length_profile",
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
