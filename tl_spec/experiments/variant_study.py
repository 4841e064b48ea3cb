"""Seed 003 with the variant trained in: held-out loss of each variant model against standard.

For every (variant, placement) group of models trained from several seeds and the
standard-attention models of the same recipe, each text's mean next-token loss is measured; per
text the seeds are averaged, and the group's loss change against standard gets a paired bootstrap
interval over texts (the spread over seeds is reported beside it).

The models come from the caller; the zoo's ``variants`` set (``tl-spec zoo build variants``) is
:func:`tl_spec.zoo.variant_groups`. Options are
:class:`~tl_spec.options.deconstruct.VariantStudyOptions` fields, as keywords or ``options=``.

>>> from tl_spec import zoo
>>> from tl_spec.experiments.variant_study import trained_variants_study
>>> standard, groups = zoo.variant_groups()                                  # doctest: +SKIP
>>> study = trained_variants_study(standard, groups, texts=texts)           # doctest: +SKIP
>>> print(study.summary())                                                   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from tl_spec.corpus import heldout_texts
from tl_spec.display import short_name
from tl_spec.errors import TLSpecError
from tl_spec.experiments.deconstruct import costliest
from tl_spec.experiments.importance import token_losses
from tl_spec.models import model_id
from tl_spec.options.deconstruct import VariantStudyOptions
from tl_spec.records import Result, provenance
from tl_spec.running import model_device
from tl_spec.sources import source
from tl_spec.stats import interval_records, paired_bootstrap
from tl_spec.tokens import Inputs, PromptInput, Tokenized, pad_batch, pad_id, prepare_inputs

__all__ = ["VariantStudyOptions", "VariantStudyResult", "text_losses", "trained_variants_study",
           "zoo_variant_groups"]

#: How many held-out zoo documents the study reads when no texts are given (deprecated default).
N_HELDOUT_TEXTS = 64


def _losses(model: Any, tokenized: Tokenized, batch_size: int) -> Float[np.ndarray, "n_texts"]:
    """Each sequence's mean next-token loss (nats) under ``model`` (right-padded batches)."""
    n = len(tokenized.ids)
    out = np.zeros(n)
    device = model_device(model)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        tokens, mask = pad_batch([tokenized.ids[i] for i in idx], pad_id=pad_id(model),
                                 padding_side="right", device=device)
        with torch.inference_mode():
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
        total, count = token_losses(logits, tokens, mask)
        out[idx] = (total / count.clamp_min(1)).cpu().numpy()
    return out


def text_losses(model: Any, texts: PromptInput, *,
                attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
                max_length: int = VariantStudyOptions.max_length,
                batch_size: int = VariantStudyOptions.batch_size) -> Float[np.ndarray, "n_texts"]:
    """Each text's mean next-token loss (nats) under ``model`` (right-padded batches).

    Args:
        model: a TransformerLens model.
        texts: strings or token ids (a ``[batch, pos]`` tensor with ``attention_mask``, or a
            list of 1-D tensors).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        max_length: texts are truncated to this many tokens.
        batch_size: texts per forward pass.

    Returns:
        ``[n_texts]`` mean losses.

    >>> text_losses(model, ["Return a list.", "Raise an error."]).shape  # doctest: +SKIP
    (2,)
    """
    inputs = prepare_inputs(model, texts, attention_mask=attention_mask, max_length=max_length)
    return _losses(model, inputs.tokenized, batch_size)


@dataclass(repr=False)
class VariantStudyResult(Result):
    """Per (variant, placement): mean loss over seeds and its change against standard [CI]."""

    kind = "variant_study"
    decoders = {"rows": interval_records}
    standard_loss: float
    standard_seed_losses: list[float]
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def headline(self) -> dict[str, Any]:
        """Standard loss, the number of groups, and the costliest group with its interval."""
        out: dict[str, Any] = {"standard loss": self.standard_loss, "groups": len(self.rows),
                               "texts": self.settings.get("n_texts")}
        out.update(costliest(self.rows))
        return out

    def tags(self) -> list[str]:
        """``["trained variants"]``: the models differ by the attention they were trained with."""
        return ["trained variants"]

    def to_frame(self) -> Any:
        """Tidy table, one row per group (the standard models first, as ``variant="standard"``).

        >>> study.to_frame()[["variant", "placement", "delta_loss", "ci_low"]]  # doctest: +SKIP
        """
        import pandas as pd

        rows = [{"variant": "standard", "placement": "", "layers": "",
                 "n_seeds": len(self.standard_seed_losses), "loss": self.standard_loss,
                 "delta_loss": 0.0, "ci_low": None, "ci_high": None, "ci_level": None,
                 "seed_loss_min": float(np.min(self.standard_seed_losses)),
                 "seed_loss_max": float(np.max(self.standard_seed_losses)),
                 "models": ",".join(short_name(m) for m in
                                    self.provenance.get("standard_models", []))}]
        for r in self.rows:
            ci = r["interval"]
            rows.append({"variant": r["variant"], "placement": r["placement"],
                         "layers": ",".join(map(str, r.get("layers") or [])),
                         "n_seeds": r["n_seeds"], "loss": r["loss"],
                         "delta_loss": r["delta_loss"], "ci_low": ci.low, "ci_high": ci.high,
                         "ci_level": ci.level, "seed_loss_min": float(np.min(r["seed_losses"])),
                         "seed_loss_max": float(np.max(r["seed_losses"])),
                         "models": ",".join(short_name(m) for m in r.get("models", []))})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Text table: loss change against standard attention with its interval, per group."""
        level = self.rows[0]["interval"].level if self.rows else self.settings.get("confidence", 0.95)
        lines = [f"standard attention: loss {self.standard_loss:.4f} (seeds "
                 + ", ".join(f"{x:.4f}" for x in self.standard_seed_losses) + ")",
                 f"{'variant':<11} {'placement':<9} {'loss':>7} {'Δ vs standard':>13} "
                 f"{f'{level:.0%} CI':>19}  seeds"]
        for r in self.rows:
            ci = r["interval"]
            lines.append(f"{r['variant']:<11} {r['placement']:<9} {r['loss']:7.4f} "
                         f"{r['delta_loss']:+13.4f} [{ci.low:+8.4f},{ci.high:+8.4f}]  "
                         + ", ".join(f"{x:.3f}" for x in r["seed_losses"]))
        return "\n".join(lines)


def zoo_variant_groups(*, backend: str = "auto") -> tuple[list[Any], dict[tuple[str, str], list[Any]]]:
    """Deprecated: :func:`tl_spec.zoo.variant_groups` (the zoo's ``variants`` set, loaded)."""
    warnings.warn("zoo_variant_groups is deprecated; use tl_spec.zoo.variant_groups()",
                  DeprecationWarning, stacklevel=2)
    return _zoo_groups(backend)


def _zoo_groups(backend: str) -> tuple[list[Any], dict[tuple[str, str], list[Any]]]:
    # Deprecated paths only (the zoo registers this source when it is imported): delete with
    # zoo_variant_groups and the no-model / no-text forms of trained_variants_study.
    return source("variant_groups")(backend=backend)


def _zoo_texts() -> list[str]:
    return heldout_texts(N_HELDOUT_TEXTS)


def trained_variants_study(
    standard: Sequence[Any] | None = None,
    groups: Mapping[tuple[str, str], Sequence[Any]] | None = None,
    *,
    texts: PromptInput | None = None,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    backend: str = "auto",
    options: VariantStudyOptions | None = None,
    **option_values: Any,
) -> VariantStudyResult:
    """Loss change of models trained with each variant against standard attention (see module).

    Args:
        standard: the standard-attention models (one per seed).
        groups: ``{(variant, placement): models}``, one model per seed. Omitting both (the zoo's
            ``variants`` set) is deprecated: pass ``*tl_spec.zoo.variant_groups()``.
        texts: strings or token ids (a ``[batch, pos]`` tensor with ``attention_mask``, or a list
            of 1-D tensors); at least 2. Default (deprecated): 64 held-out zoo documents.
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        backend: the backend of the deprecated zoo default only.
        options: a :class:`~tl_spec.options.deconstruct.VariantStudyOptions`; keyword options
            override its fields.
        **option_values: any ``VariantStudyOptions`` field (``max_length``, ``batch_size``,
            ``confidence``, ``n_resamples``, ``seed``).

    Returns:
        :class:`VariantStudyResult`.

    >>> trained_variants_study(standard_models, {("uniform", "all"): uniform_models},
    ...                        texts=texts)  # doctest: +SKIP
    """
    opts = VariantStudyOptions.build(options, **option_values)
    if (standard is None) != (groups is None):
        raise TLSpecError("give both standard= and groups=, or neither (the zoo's variants set)")
    if standard is None:
        warnings.warn("trained_variants_study() without models is deprecated; pass "
                      "*tl_spec.zoo.variant_groups() and texts", DeprecationWarning, stacklevel=2)
        standard, groups = _zoo_groups(backend)
    if groups is None or not standard or not groups or any(len(v) == 0 for v in groups.values()):
        raise TLSpecError("every group needs at least one model, and standard models are needed")
    if texts is None:
        warnings.warn("trained_variants_study without texts is deprecated; pass texts= (e.g. "
                      "tl_spec.corpus.heldout_texts(64))", DeprecationWarning, stacklevel=2)
        texts = _zoo_texts()

    def prepared(model: Any) -> Inputs:
        return prepare_inputs(model, texts, attention_mask=attention_mask,
                              max_length=opts.max_length)

    first = prepared(standard[0])
    if len(first) < 2:
        raise TLSpecError(f"the study needs at least 2 texts (the unit of its bootstrap "
                          f"interval), got {len(first)}")
    std = np.stack([_losses(m, prepared(m).tokenized, opts.batch_size) for m in standard])
    base = std.mean(0)
    rows = []
    for (variant, placement), models in groups.items():
        losses = np.stack([_losses(m, prepared(m).tokenized, opts.batch_size) for m in models])
        diff = losses.mean(0) - base
        ci = paired_bootstrap(lambda i, d=diff: d[i].mean(-1), len(first),
                              confidence=opts.confidence, n_resamples=opts.n_resamples,
                              seed=opts.seed)
        rows.append(dict(variant=variant, placement=placement, n_seeds=len(models),
                         loss=float(losses.mean()), delta_loss=float(diff.mean()), interval=ci,
                         seed_losses=[float(x) for x in losses.mean(1)],
                         layers=list(getattr(getattr(models[0], "tl_spec_variant", None),
                                             "layers", []) or []),
                         models=[model_id(m) for m in models]))
    settings = dict(opts.to_dict(), n_texts=len(first), n_standard=len(standard),
                    n_truncated=first.tokenized.n_truncated,
                    input="token ids" if first.from_tokens else "text",
                    interval="paired bootstrap over texts of the seed-averaged loss change")
    every = [model_id(m) for m in standard] + [m for r in rows for m in r["models"]]
    return VariantStudyResult(
        standard_loss=float(std.mean()), standard_seed_losses=[float(x) for x in std.mean(1)],
        rows=rows, settings=settings,
        provenance=provenance(standard[0], prompts=first.info, options=settings, models=every,
                              standard_models=[model_id(m) for m in standard]))
