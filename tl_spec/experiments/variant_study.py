"""Seed 003 with the variant trained in: held-out loss of each variant model against standard.

For every (variant, placement) group of models trained from several seeds (the zoo's
``variants`` set by default) and the standard-attention models of the same recipe, each text's
mean next-token loss is measured; per text the seeds are averaged, and the group's loss change
against standard gets a paired bootstrap interval over texts (the spread over seeds is reported
beside it).

>>> from tl_spec.experiments.variant_study import trained_variants_study
>>> study = trained_variants_study()   # needs `tl-spec zoo build variants`   # doctest: +SKIP
>>> print(study.table())                                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tl_spec.errors import TLSpecError
from tl_spec.experiments.importance import token_losses
from tl_spec.experiments.run import model_device
from tl_spec.records import Result, provenance
from tl_spec.stats import interval_records, paired_bootstrap
from tl_spec.tokens import pad_batch, pad_id, tokenize

__all__ = ["VariantStudyResult", "text_losses", "trained_variants_study", "zoo_variant_groups"]


def text_losses(model: Any, texts: Sequence[str], *, max_length: int = 128,
                batch_size: int = 16) -> np.ndarray:
    """Each text's mean next-token loss (nats) under ``model`` (right-padded batches).

    >>> text_losses(model, ["Return a list.", "Raise an error."]).shape  # doctest: +SKIP
    (2,)
    """
    tok = tokenize(model, list(texts), max_length=max_length)
    out = np.zeros(len(texts))
    device = model_device(model)
    for start in range(0, len(texts), batch_size):
        idx = list(range(start, min(start + batch_size, len(texts))))
        tokens, mask = pad_batch([tok.ids[i] for i in idx], pad_id=pad_id(model),
                                 padding_side="right", device=device)
        with torch.inference_mode():
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
        total, n = token_losses(logits, tokens, mask)
        out[idx] = (total / n.clamp_min(1)).cpu().numpy()
    return out



@dataclass
class VariantStudyResult(Result):
    """Per (variant, placement): mean loss over seeds and its change against standard [CI]."""

    kind = "variant_study"
    decoders = {"rows": interval_records}
    standard_loss: float
    standard_seed_losses: list[float]
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def table(self) -> str:
        """Text table: loss change against standard attention with its interval, per group."""
        lines = [f"standard attention: loss {self.standard_loss:.4f} (seeds "
                 + ", ".join(f"{x:.4f}" for x in self.standard_seed_losses) + ")",
                 f"{'variant':<11} {'placement':<9} {'loss':>7} {'Δ vs standard':>13} "
                 f"{'95% CI':>19}  seeds"]
        for r in self.rows:
            ci = r["interval"]
            lines.append(f"{r['variant']:<11} {r['placement']:<9} {r['loss']:7.4f} "
                         f"{r['delta_loss']:+13.4f} [{ci.low:+8.4f},{ci.high:+8.4f}]  "
                         + ", ".join(f"{x:.3f}" for x in r["seed_losses"]))
        return "\n".join(lines)


def zoo_variant_groups(*, backend: str = "auto") -> tuple[list[Any], dict[tuple[str, str], list[Any]]]:
    """The zoo's ``variants`` set: (standard models, {(variant, placement): models})."""
    from tl_spec.zoo import registry

    standard, groups = [], {}
    for m in registry.SETS["variants"]:
        model = registry.load(m.name, backend=backend)
        if m.config is None or m.config.variant is None:
            standard.append(model)
        else:
            placement = m.name.split("-")[-2]
            groups.setdefault((m.config.variant["variant"], placement), []).append(model)
    return standard, groups


def trained_variants_study(
    standard: Sequence[Any] | None = None,
    groups: Mapping[tuple[str, str], Sequence[Any]] | None = None,
    *,
    texts: Sequence[str] | None = None,
    max_length: int = 128,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    backend: str = "auto",
) -> VariantStudyResult:
    """Loss change of models trained with each variant against standard attention (see module).

    ``texts`` default to 64 held-out zoo documents (300 characters each).

    >>> trained_variants_study(standard_models, {("uniform", "all"): uniform_models})  # doctest: +SKIP
    """
    if (standard is None) != (groups is None):
        raise TLSpecError("give both standard= and groups=, or neither (the zoo's variants set)")
    if standard is None:
        standard, groups = zoo_variant_groups(backend=backend)
    assert groups is not None
    if not standard or not groups or any(len(v) == 0 for v in groups.values()):
        raise TLSpecError("every group needs at least one model, and standard models are needed")
    if texts is None:
        from tl_spec.zoo.corpus import heldout_texts

        texts = heldout_texts(64)
    texts = list(texts)
    std = np.stack([text_losses(m, texts, max_length=max_length) for m in standard])
    base = std.mean(0)
    rows = []
    for (variant, placement), models in groups.items():
        losses = np.stack([text_losses(m, texts, max_length=max_length) for m in models])
        diff = losses.mean(0) - base
        ci = paired_bootstrap(lambda i, d=diff: d[i].mean(-1), len(texts), confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
        rows.append(dict(variant=variant, placement=placement, n_seeds=len(models),
                         loss=float(losses.mean()), delta_loss=float(diff.mean()), interval=ci,
                         seed_losses=[float(x) for x in losses.mean(1)],
                         layers=list(getattr(getattr(models[0], "tl_spec_variant", None),
                                             "layers", []) or [])))
    settings = dict(n_texts=len(texts), max_length=max_length, confidence=confidence,
                    n_resamples=n_resamples, seed=seed, n_standard=len(standard),
                    interval="paired bootstrap over texts of the seed-averaged loss change")
    return VariantStudyResult(standard_loss=float(std.mean()),
                              standard_seed_losses=[float(x) for x in std.mean(1)], rows=rows,
                              settings=settings, provenance=provenance(standard[0], options=settings))
