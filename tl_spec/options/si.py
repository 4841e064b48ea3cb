"""Options of the Specialization Index and of the statistics over prompts (ΔSI, probe, ...).

:class:`SIOptions` is the one place the SI defaults live: ``specialization_index``, ``delta_si``,
the probe, the ``tl-spec`` flags and study files all read them from here.

>>> SIOptions().method, SIOptions.build(method="entropy_profile").region
('pattern', 'lower')
>>> SIOptions(aggregate="mean_pattern", method="entropy_profile")
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: aggregate='mean_pattern' applies to method='pattern' only, not 'entropy_profile'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tl_spec.errors import TLSpecError
from tl_spec.options.base import Options, option

__all__ = ["METHODS", "ROUTES", "ROUTE_METHOD", "Aggregate", "Method", "PaddingSide", "Region",
           "Route", "ROUTES_WITH_PAD_ROWS", "SIOptions", "StatDtype", "StatsOptions"]

Method = Literal["pattern", "entropy_profile", "normalized_entropy"]
Region = Literal["lower", "full"]
Aggregate = Literal["prompt", "mean_pattern"]
PaddingSide = Literal["left", "right"]
StatDtype = Literal["float64", "float32"]
METHODS: tuple[str, ...] = ("pattern", "entropy_profile", "normalized_entropy")
Route = Literal["tl_spec", "e11_masked", "e11_unmasked", "metrics_py"]
ROUTES: tuple[str, ...] = ("tl_spec", "e11_masked", "e11_unmasked", "metrics_py")
#: The SI method each reproduction route of the paper's code belongs to.
ROUTE_METHOD: dict[str, str] = {"e11_masked": "entropy_profile",
                                "e11_unmasked": "entropy_profile",
                                "metrics_py": "normalized_entropy"}
#: The routes whose statistics average the pad rows in (and normalise by the padded length).
ROUTES_WITH_PAD_ROWS: tuple[str, ...] = ("e11_unmasked", "metrics_py")


def _dtype_name(value: Any) -> Any:
    """``torch.float64`` -> ``"float64"`` without importing torch; other values unchanged."""
    text = str(value)
    return text.removeprefix("torch.") if text.startswith("torch.") else value


@dataclass(frozen=True)
class SIOptions(Options):
    """How a Specialization Index is measured (the three published definitions, by name).

    Attributes:
        method: ``"pattern"`` (paper Eq. 1: 1 - mean Pearson correlation between a layer's
            heads), ``"entropy_profile"`` (the E11 notebooks' route behind the published SI
            values) or ``"normalized_entropy"`` (``src/metrics.py``: 1 - mean row entropy / ln n).
        region: pattern entries correlated: ``"lower"`` (key <= query, inside any window) or
            ``"full"`` (the paper's flattening of the whole matrix, causal zeros included).
        aggregate: ``"prompt"`` (correlate per prompt, then average; needed for intervals) or
            ``"mean_pattern"`` (the paper's snippet: average patterns over prompts first).
        max_length: prompts are truncated to this many tokens (with a warning).
        batch_size: prompts per forward pass (batched by length, padding masked).
        prepend_bos: prepend BOS to text prompts; ``None`` follows the model's default.
            Token inputs are used as given.
        padding_side: where pads go inside a batch; results do not depend on it.
        stat_dtype: precision of the statistics computed inside the hooks.
        route: ``"tl_spec"`` (the clean measurement: each prompt unpadded, valid tokens only) or
            a reproduction of the paper's own code, artifacts included: ``"e11_masked"`` and
            ``"e11_unmasked"`` (``method="entropy_profile"``; every prompt tokenized by the
            tokenizer, padded to ``max_length``; the unmasked route averages the pad rows in),
            ``"metrics_py"`` (``method="normalized_entropy"``: padded to ``max_length``, pad rows
            averaged in, normalised by ln ``max_length``). See ``docs/reproduction/routes.md``.

    >>> SIOptions.build(max_length=64).to_dict()["max_length"]
    64
    """

    family = "SI"

    method: Method = option("pattern", "SI definition: pattern (paper Eq. 1), entropy_profile "
                            "(the E11 notebooks), normalized_entropy (src/metrics.py)")
    region: Region = option("lower", "pattern entries used: lower (key <= query, inside any "
                            "window) or full (whole matrix, causal zeros included)")
    aggregate: Aggregate = option("prompt", "prompt (per prompt, then averaged) or mean_pattern "
                                  "(patterns averaged over prompts first, as the paper's snippet)")
    max_length: int = option(128, "truncate prompts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(16, "prompts per forward pass", minimum=1, integer=True)
    prepend_bos: bool | None = option(None, "prepend BOS to text prompts (default: the model's "
                                      "own setting)")
    padding_side: PaddingSide = option("right", "padding side inside a batch (results do not "
                                       "depend on it)")
    stat_dtype: StatDtype = option("float64", "precision of the statistics inside the hooks")
    route: Route = option("tl_spec", "tl_spec (clean, default) or a reproduction of the paper's "
                          "code, artifacts included: e11_masked, e11_unmasked (method "
                          "entropy_profile), metrics_py (method normalized_entropy)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stat_dtype", _dtype_name(self.stat_dtype))
        super().__post_init__()

    def validate(self) -> None:
        if self.aggregate == "mean_pattern" and self.method != "pattern":
            raise TLSpecError(
                f"aggregate='mean_pattern' applies to method='pattern' only, not {self.method!r}"
            )
        if self.route == "tl_spec":
            return
        needed = ROUTE_METHOD[self.route]
        if self.method != needed:
            raise TLSpecError(
                f"route={self.route!r} reproduces the paper's {needed} code, so it needs "
                f"method={needed!r}, not {self.method!r}; pass method={needed!r} (or "
                "route='tl_spec' for this method)"
            )
        if self.prepend_bos is not None:
            raise TLSpecError(
                f"route={self.route!r} tokenizes as the paper's notebooks did (the tokenizer's own "
                f"special tokens), so prepend_bos must stay None, not {self.prepend_bos!r}; use "
                "route='tl_spec' to choose BOS yourself"
            )

    @property
    def torch_dtype(self) -> Any:
        """``stat_dtype`` as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.stat_dtype)


@dataclass(frozen=True)
class StatsOptions(Options):
    """Resampling statistics over prompts: bootstrap intervals and permutation tests.

    Attributes:
        confidence: level of every interval (e.g. 0.95).
        n_resamples: bootstrap resamples and permutations (at least 100).
        seed: seed of the resampling generator (results are reproducible).

    >>> StatsOptions(confidence=1.5)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: confidence must be strictly between 0 and 1 (e.g. 0.95), got 1.5
    """

    family = "statistics"

    confidence: float = option(0.95, "confidence level of the intervals, strictly between 0 "
                               "and 1", minimum=0, exclusive_min=True)
    n_resamples: int = option(10_000, "bootstrap resamples / permutations", minimum=100,
                              integer=True)
    seed: int = option(0, "seed of the resampling generator", minimum=0, integer=True)

    def validate(self) -> None:
        if self.confidence >= 1:
            raise TLSpecError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got "
                              f"{self.confidence!r}")

    def check_units(self, n_units: int, unit: str = "prompts") -> None:
        """Refuse a resampling over fewer than 2 units (they are the interval's sampling unit)."""
        if n_units < 2:
            raise TLSpecError(
                f"a bootstrap over {unit} needs at least 2 {unit}, got {n_units}; the {unit[:-1]} "
                "is the sampling unit of the interval"
            )
