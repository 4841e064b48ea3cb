"""Options of head stability across seeds (seed 004) and of the study of its five claims.

:class:`StabilityOptions` is the one place the ``head_stability`` defaults live (the API, the
``tl-spec stability`` flags and study files read them from here); :class:`StabilityStudyOptions`
holds those of ``stability_study``. Both resample prompt blocks with
:class:`StabilityStatsOptions`, the statistics options with this experiment's own default of
1000 resamples (each resample re-matches every layer's heads).

>>> StabilityOptions().measure, StabilityOptions.build(null=0).null
('pattern', 0)
>>> StabilityOptions(null=-1)
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: null must be a number of random-init copies (>= 0) or a list of models, got -1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tl_spec.errors import TLSpecError
from tl_spec.options.base import Options, option
from tl_spec.options.si import Region, StatDtype, StatsOptions, _dtype_name

__all__ = ["ESTIMATORS", "EXACT_MAX_BYTES", "Estimator", "MEASURES", "Measure",
           "StabilityOptions", "StabilityStatsOptions", "StabilityStudyOptions"]

Measure = Literal["pattern", "output"]
MEASURES: tuple[str, ...] = ("pattern", "output")
Estimator = Literal["auto", "exact", "minibatch"]
ESTIMATORS: tuple[str, ...] = ("auto", "exact", "minibatch")
#: ``estimator="auto"`` uses the exact CKA while its per-block sums take at most this many bytes.
EXACT_MAX_BYTES = 2**30

_MEASURE_HELP = ("head similarity: pattern (correlation of attention patterns over valid "
                 "entries) or output (linear CKA of the heads' residual-stream contributions)")
_NULL_HELP = "random-init null copies of the first model (0: none)"
_BLOCKS_HELP = "prompt blocks resampled by the bootstrap"


def _check_null(null: Any) -> None:
    if isinstance(null, bool) or not ((isinstance(null, int) and null >= 0)
                                      or isinstance(null, tuple)):
        raise TLSpecError(f"null must be a number of random-init copies (>= 0) or a list of "
                          f"models, got {null!r}")


@dataclass(frozen=True)
class StabilityOptions(Options):
    """How head stability across independently trained models is measured.

    Attributes:
        measure: ``"pattern"`` (per-prompt correlation of attention patterns over the
            ``region``'s entries, as in SI) or ``"output"`` (linear CKA of each head's
            residual-stream contribution over all real tokens).
        null: the number of random-init copies of the first model used as the null level
            (seeds ``seed + 1, ...``), or a sequence of null models (Python API only).
        resid: also compare ``resid_post`` across models by linear CKA (the residual baseline).
        region: pattern entries correlated (``measure="pattern"``): ``"lower"`` or ``"full"``.
        max_length: prompts are truncated to this many tokens (with a warning).
        batch_size: prompts per forward pass (each model runs once per batch).
        n_blocks: prompts go round-robin into this many bootstrap blocks; ``None``: one block
            per prompt, up to 20.
        prepend_bos: prepend BOS to text prompts; ``None`` follows the first model's default.
            Token inputs are used as given.
        stat_dtype: precision of the features kept inside the hooks.
        estimator: how CKA (``measure="output"`` and ``resid``) is pooled. ``"exact"``: linear
            CKA over all tokens of the resampled blocks, from per-block float64 sums of size
            ``8 blocks layers (pairs (heads d_head)^2 + trained pairs d_model^2)`` bytes (pairs
            with every model itself and the null models included). ``"minibatch"``: minibatch
            CKA (Nguyen, Raghu & Kornblith, 2021): each prompt is a minibatch, its unbiased HSIC
            (Song et al., 2012) per head pair is added to its block, and CKA is ``sum HSIC_ab /
            sqrt(sum HSIC_aa sum HSIC_bb)``; the state is ``8 blocks layers pairs heads^2``
            bytes and the transient at most ``max(256 MiB, 8 models heads max_length^2,
            8 (heads d_head)^2)`` bytes, whatever the width. A minibatch is one block's prompts
            within a batch (prompts are batched block by block), so it centres per minibatch
            and weights pairs of tokens of one prompt heavily: it is a different estimator,
            close to the exact one with minibatches of several prompts on trained models
            (refits, 6 prompts: stability within 0.006) but far above it where position
            structure dominates (random-init models on random tokens: +0.2 to +0.45); use
            blocks of many prompts and a large ``batch_size``. Minibatches of fewer than 4
            real tokens are left out (a warning says how many). ``"auto"``: exact while its
            sums take at most 1 GiB (:data:`EXACT_MAX_BYTES`), minibatch above.

    >>> StabilityOptions.build(measure="output", n_blocks=4).to_dict()["n_blocks"]
    4
    >>> StabilityOptions().estimator_for(2**31), StabilityOptions().estimator_for(2**20)
    ('minibatch', 'exact')
    """

    family = "stability"

    measure: Measure = option("pattern", _MEASURE_HELP)
    null: int | tuple[Any, ...] = option(2, _NULL_HELP + "; the Python API also takes a list "
                                         "of null models", parse=int, metavar="N")
    resid: bool = option(True, "also compare resid_post across models (linear CKA)")
    region: Region = option("lower", "pattern entries used: lower (key <= query, inside any "
                            "window) or full (whole matrix, causal zeros included)")
    max_length: int = option(128, "truncate prompts to this many tokens", minimum=2, integer=True)
    batch_size: int = option(8, "prompts per forward pass", minimum=1, integer=True)
    n_blocks: int | None = option(None, _BLOCKS_HELP + " (default: one per prompt, up to 20)",
                                  minimum=2, integer=True)
    prepend_bos: bool | None = option(None, "prepend BOS to text prompts (default: the model's "
                                      "own setting)")
    stat_dtype: StatDtype = option("float64", "precision of the features inside the hooks")
    estimator: Estimator = option("auto", "CKA estimator: exact (per-block cross-covariance "
                                  "sums), minibatch (per-prompt unbiased HSIC, memory bounded) "
                                  "or auto (exact while its sums fit in 1 GiB)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stat_dtype", _dtype_name(self.stat_dtype))
        if isinstance(self.null, Sequence) and not isinstance(self.null, (str, bytes, tuple)):
            object.__setattr__(self, "null", tuple(self.null))
        super().__post_init__()

    def validate(self) -> None:
        _check_null(self.null)

    @property
    def torch_dtype(self) -> Any:
        """``stat_dtype`` as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.stat_dtype)

    def estimator_for(self, exact_bytes: int) -> str:
        """``"exact"`` or ``"minibatch"``: ``estimator``, or for ``"auto"`` the exact one while
        its per-block sums (``exact_bytes``) fit in :data:`EXACT_MAX_BYTES`."""
        if self.estimator != "auto":
            return self.estimator
        return "exact" if exact_bytes <= EXACT_MAX_BYTES else "minibatch"

    def blocks_for(self, n_prompts: int) -> int:
        """The number of bootstrap blocks for ``n_prompts`` prompts, checked against them.

        >>> StabilityOptions().blocks_for(8), StabilityOptions().blocks_for(50)
        (8, 20)
        """
        n_blocks = min(n_prompts, 20) if self.n_blocks is None else self.n_blocks
        if n_prompts < max(n_blocks, 2):
            raise TLSpecError(f"{n_prompts} prompts cannot fill n_blocks={n_blocks} bootstrap "
                              f"blocks; pass more prompts or n_blocks <= {n_prompts}")
        return n_blocks


@dataclass(frozen=True)
class StabilityStatsOptions(StatsOptions):
    """:class:`~tl_spec.options.StatsOptions` with this experiment's default of 1000 resamples.

    >>> StabilityStatsOptions().n_resamples, StabilityStatsOptions.build(seed=3).seed
    (1000, 3)
    """

    n_resamples: int = option(1000, "bootstrap resamples of the prompt blocks", minimum=100,
                              integer=True)


@dataclass(frozen=True)
class StabilityStudyOptions(Options):
    """How ``stability_study`` measures seed 004's claims on each group of refits.

    Attributes:
        measure: the head similarity of every group's ``head_stability`` (``"output"``: only
            then is claim 5, residual CKA against head stability, on one scale).
        n_blocks: prompt blocks shared by every group (the claims' intervals stay paired).
        null: random-init null copies per group.

    >>> StabilityStudyOptions().measure, StabilityStudyOptions.build(n_blocks=4).n_blocks
    ('output', 4)
    """

    family = "stability study"

    measure: Measure = option("output", _MEASURE_HELP)
    n_blocks: int = option(16, _BLOCKS_HELP + ", the same in every group", minimum=2,
                           integer=True)
    null: int = option(2, _NULL_HELP, minimum=0, integer=True)
