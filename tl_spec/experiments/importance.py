"""Head importance: loss increase on held-out text when one head is ablated (mean or zero).

One clean pass collects the loss and every head's mean output ``z`` over the real tokens of the
data. Then, layer by layer, the batch is repeated once per head and each copy ablates a
different head at ``blocks.{l}.attn.hook_z`` (set to the head's data mean, or to zero), so a
layer's heads cost one forward call, not one per head. Where the model can resume mid-way
(:func:`~tl_spec.resume.can_start_at_layer`) the ablated passes start at layer ``l`` from the
clean residual stream (:func:`~tl_spec.resume.forward_from_layer`).

Prompts are text (a list of strings or a PromptSet) or token ids (a ``[batch, pos]`` tensor with
an optional ``attention_mask``, or a list of 1-D tensors); options are
:class:`~tl_spec.options.importance.ImportanceOptions` fields, as keywords or ``options=``.

>>> from tl_spec.experiments.importance import head_importance
>>> imp = head_importance(model, texts)          # doctest: +SKIP
>>> imp.mean_ablation.shape  # [layers, heads], loss increase in nats  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError
from tl_spec.running import model_device
from tl_spec.models import model_id, require_pattern_hooks
from tl_spec.names import head_label, hook_name
from tl_spec.options.importance import ABLATIONS, ImportanceOptions
from tl_spec.resume import can_start_at_layer, forward_from_layer
from tl_spec.records import Result, array, provenance
from tl_spec.tokens import PromptInput, batches, pad_id, prepare_inputs

__all__ = ["ABLATIONS", "ImportanceOptions", "ImportanceResult", "head_importance",
           "token_losses"]

_MEANING = ("loss increase in nats per predicted token; mean ablation replaces a head's z by its "
            "mean over the real tokens of these texts")


@dataclass(repr=False)
class ImportanceResult(Result):
    """Per head ``[layers, heads]``: mean loss increase (nats/token) under each ablation.

    ``mean_ablation`` / ``zero_ablation`` are ``None`` for an ablation that was not run.
    """

    kind = "head_importance"
    decoders = {"mean_ablation": array, "zero_ablation": array}
    model: str
    clean_loss: float
    mean_ablation: Float[np.ndarray, "n_layers n_heads"] | None
    zero_ablation: Float[np.ndarray, "n_layers n_heads"] | None
    n_tokens: int
    settings: dict[str, Any]
    provenance: dict[str, Any] = field(repr=False)

    def scores(self) -> dict[str, np.ndarray]:
        """``{ablation: [layers, heads] loss increase}`` for the ablations run, in run order."""
        run = {"mean": self.mean_ablation, "zero": self.zero_ablation}
        order = [a for a in self.settings.get("ablations", ABLATIONS) if a in run]
        order += [a for a in ABLATIONS if a not in order]
        return {a: run[a] for a in order if run[a] is not None}

    def _first(self) -> tuple[str, np.ndarray]:
        name, values = next(iter(self.scores().items()))
        return name, values

    def top(self, k: int = 5, ablation: str | None = None) -> list[tuple[str, float]]:
        """The ``k`` heads whose ablation raises the loss most, as ``("L3H7", nats)``.

        >>> imp.top(2)  # doctest: +SKIP
        [('L1H5', 0.31), ('L0H2', 0.12)]
        """
        scores = self.scores()
        name = ablation or next(iter(scores))
        if name not in scores:
            raise TLSpecError(f"ablation {name!r} was not run; this result has {list(scores)}")
        flat = scores[name].ravel()
        ok = np.flatnonzero(~np.isnan(flat))
        picked = ok[np.argsort(flat[ok])][::-1][:k]
        n_heads = scores[name].shape[1]
        return [(head_label(i // n_heads, i % n_heads), float(flat[i])) for i in picked]

    def tags(self) -> list[str]:
        """The ablations run, e.g. ``["mean+zero"]``."""
        return ["+".join(self.scores())]

    def headline(self) -> dict[str, Any]:
        """Clean loss, the most important head under the first ablation and its loss increase."""
        name, _ = self._first()
        (label, value), = self.top(1, name)
        return {"clean loss": self.clean_loss, "top head": label,
                f"Δloss ({name})": value, "tokens": self.n_tokens}

    def heat(self) -> tuple[str, np.ndarray, bool | None]:
        """Per-head loss increase under the first ablation run (nats per token)."""
        name, values = self._first()
        return f"loss increase under {name} ablation (nats/token)", values, None

    def summary(self) -> str:
        """Clean loss, then per ablation the most important heads and a per-layer table."""
        lines = [f"head importance of {', '.join(self.model_names()) or self.model}: clean loss "
                 f"{self.clean_loss:.4f} nats/token over {self.n_tokens} predicted tokens"]
        for name, values in self.scores().items():
            top = ", ".join(f"{label} {v:+.4f}" for label, v in self.top(5, name))
            lines.append(f"{name} ablation, loss increase (nats/token); top heads: {top}")
            lines.append(f"{'layer':>5}  {'mean':>9}  {'max':>9}  {'max head':>8}")
            for layer, row in enumerate(values):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, best = float(np.nanmean(row)), int(np.nanargmax(row))
                lines.append(f"{layer:>5}  {mean:+9.4f}  {row[best]:+9.4f}  "
                             f"{head_label(layer, best):>8}")
        return "\n".join(lines)

    def to_frame(self) -> Any:
        """Tidy table, one row per (ablation, layer, head): the loss increase in nats/token.

        >>> imp.to_frame().query("ablation == 'mean'").nlargest(3, "loss_increase")  # doctest: +SKIP
        """
        import pandas as pd

        model = (self.model_names() or [self.model])[0]
        rows = [{"model": model, "ablation": name, "layer": layer, "head": head,
                 "label": head_label(layer, head), "loss_increase": float(values[layer, head]),
                 "clean_loss": self.clean_loss}
                for name, values in self.scores().items()
                for layer in range(values.shape[0]) for head in range(values.shape[1])]
        return pd.DataFrame(rows)


def token_losses(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """Per sequence: summed next-token cross-entropy (float64) and number of predicted tokens.

    >>> logits = torch.zeros(1, 3, 4); tokens = torch.tensor([[0, 1, 2]])
    >>> total, n = token_losses(logits, tokens, torch.ones(1, 3))
    >>> round(float(total / n), 6) == round(float(np.log(4)), 6)
    True
    """
    keep = (mask[:, :-1] * mask[:, 1:]).to(torch.float64)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:],
                          reduction="none").to(torch.float64)
    return (nll * keep).sum(-1), keep.sum(-1)


def _nonfinite_clean(model: Any, tokens: torch.Tensor, mask: torch.Tensor) -> str:
    """The message for a clean run whose loss is NaN/Inf: where the residual stream first breaks."""
    n_layers = int(model.cfg.n_layers)
    first: list[str] = []

    def check(name: str) -> Any:
        def hook(x: torch.Tensor, hook: Any = None) -> None:
            if not first and not bool(torch.isfinite(x[mask.bool()]).all()):
                first.append(name)
        return hook

    names = ["hook_embed"] + [hook_name("resid_post", layer) for layer in range(n_layers)]
    names = [n for n in names if n in model.hook_dict]
    with torch.inference_mode():
        model.run_with_hooks(tokens, attention_mask=torch.ones_like(mask), return_type=None,
                             fwd_hooks=[(n, check(n)) for n in names])
    where = (f"the residual stream is first non-finite at {first[0]}" if first else
             "the residual stream is finite, so the final norm or the unembedding breaks")
    return ("the clean run gives a non-finite loss (NaN or Inf), so no head's loss increase is "
            f"defined; {where}. Check the model's weights (a NaN/Inf parameter) and dtype "
            "(float32 avoids most overflows).")


def head_importance(
    model: Any,
    prompts: PromptInput = None,
    *,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    options: ImportanceOptions | None = None,
    progress: bool = False,
    **option_values: Any,
) -> ImportanceResult:
    """Loss increase per head under mean and/or zero ablation of its output ``z``.

    ``heads_per_pass`` (default: all heads of a layer) bounds the forward's memory: a call runs
    ``batch_size x heads_per_pass`` sequences. With prefix reuse the clean residual stream of
    every batch and layer is kept (``prompts x tokens x layers x d_model`` floats): pass fewer
    prompts per call for large models.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: held-out text (a list of strings or a PromptSet), a ``[batch, pos]`` token
            tensor or a list of 1-D token tensors (token ids need no tokenizer).
        attention_mask: with a token tensor, 1 on real tokens (either padding side).
        options: an :class:`~tl_spec.options.importance.ImportanceOptions`; keyword options
            override its fields.
        progress: show a progress bar over the ablation passes.
        **option_values: any ``ImportanceOptions`` field (``ablations``, ``max_length``,
            ``batch_size``, ``heads_per_pass``).

    Returns:
        :class:`ImportanceResult`.

    >>> head_importance(model, texts, ablations=("zero",)).zero_ablation  # doctest: +SKIP
    """
    if prompts is None and "texts" in option_values:  # the argument's name before 0.3
        warnings.warn("head_importance(texts=...) is deprecated; pass the prompts positionally "
                      "or as prompts=", DeprecationWarning, stacklevel=2)
        prompts = option_values.pop("texts")
    opts = ImportanceOptions.build(options, **option_values)
    if prompts is None:
        raise TLSpecError("head_importance needs prompts: held-out texts or token ids")
    require_pattern_hooks(model)
    inputs = prepare_inputs(model, prompts, attention_mask=attention_mask,
                            max_length=opts.max_length)
    tokenized = inputs.tokenized
    ablations, batch_size = opts.ablations, opts.batch_size
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    per_pass = min(opts.heads_per_pass or n_heads, n_heads)
    device = model_device(model)
    plan = list(batches(tokenized, batch_size=batch_size, pad_id=pad_id(model), device=device))
    z_sum: dict[int, torch.Tensor] = {}
    count = torch.zeros((), dtype=torch.float64)
    clean_total, clean_n = 0.0, 0.0

    def collect(layer: int) -> Any:
        def hook(z: torch.Tensor, *, hook: Any = None) -> None:
            valid = current["mask"].to(z.device).to(torch.float64)
            total = torch.einsum("bp,bphd->hd", valid, z.detach().to(torch.float64))
            z_sum[layer] = z_sum.get(layer, 0) + total
        return hook

    current: dict[str, torch.Tensor] = {}
    can_start = can_start_at_layer(model)  # prefix reuse: layers before l are unchanged
    resid: dict[tuple[int, int], torch.Tensor] = {}

    def keep(b: int, layer: int) -> Any:
        def hook(x: torch.Tensor, *, hook: Any = None) -> None:
            resid[(b, layer)] = x.detach()
        return hook

    hooks = [(hook_name("z", layer), collect(layer)) for layer in range(n_layers)]
    for b, (_, tokens, mask) in enumerate(plan):
        extra = ([(hook_name("resid_pre", layer), keep(b, layer))
                  for layer in range(1, n_layers)] if can_start else [])
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks + extra):
            current["mask"] = mask
            logits = model(tokens, attention_mask=torch.ones_like(mask), return_type="logits")
            total, n = token_losses(logits, tokens, mask)
        if not bool(torch.isfinite(total).all()):
            raise TLSpecError(_nonfinite_clean(model, tokens, mask))
        clean_total += float(total.sum())
        clean_n += float(n.sum())
        count += mask.sum().to(torch.float64).cpu()
    if clean_n == 0:
        raise TLSpecError("the texts give no next-token predictions; pass texts of 2+ tokens")
    means = {layer: (z_sum[layer] / count.to(z_sum[layer].device)) for layer in range(n_layers)}
    clean = clean_total / clean_n
    out: dict[str, np.ndarray] = {}
    steps = [(a, layer, h0) for a in ablations for layer in range(n_layers)
             for h0 in range(0, n_heads, per_pass)]
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="ablations", unit="pass")
    for ablation, layer, h0 in steps:
        heads = list(range(h0, min(h0 + per_pass, n_heads)))
        totals = np.zeros(len(heads))

        def ablate(z: torch.Tensor, *, hook: Any = None, heads: list[int] = heads,
                   ablation: str = ablation, layer: int = layer) -> torch.Tensor:
            z = z.clone()
            view = z.view(len(heads), -1, *z.shape[1:])
            for r, h in enumerate(heads):
                view[r, :, :, h] = means[layer][h].to(z.dtype) if ablation == "mean" else 0.0
            return z

        name = hook_name("z", layer)
        with torch.inference_mode(), model.hooks(fwd_hooks=[(name, ablate)]):
            for b, (_, tokens, mask) in enumerate(plan):
                rep = tokens.repeat(len(heads), 1)
                rep_mask = mask.repeat(len(heads), 1)
                ones = torch.ones_like(rep_mask)
                if (b, layer) in resid:
                    x = resid[(b, layer)].repeat(len(heads), 1, 1)
                    logits = forward_from_layer(model, x, layer, tokens=rep,
                                                attention_mask=ones, return_type="logits")
                else:
                    logits = model(rep, attention_mask=ones, return_type="logits")
                total, _ = token_losses(logits, rep, rep_mask)
                totals += total.view(len(heads), -1).sum(-1).cpu().numpy()
        bad = [h for h, t in zip(heads, totals) if not np.isfinite(t)]
        if bad:
            raise TLSpecError(
                f"{ablation}-ablating head {head_label(layer, bad[0])} gives a non-finite loss "
                f"(NaN or Inf; {len(bad)} of layer {layer}'s heads in this pass) although the "
                f"clean loss is finite ({clean:.4f}), so its importance is undefined; check the "
                "model's weights and dtype (float32 avoids most overflows), or leave this "
                "ablation out")
        out.setdefault(ablation, np.zeros((n_layers, n_heads)))[layer, heads] = totals / clean_n - clean
    settings = dict(opts.to_dict(), heads_per_pass=per_pass, n_texts=len(inputs),
                    n_truncated=tokenized.n_truncated, prefix_reuse=can_start,
                    input="token ids" if inputs.from_tokens else "text", meaning=_MEANING)
    return ImportanceResult(
        model=model_id(model), clean_loss=float(clean), mean_ablation=out.get("mean"),
        zero_ablation=out.get("zero"), n_tokens=int(clean_n), settings=settings,
        provenance=provenance(model, prompts=inputs.info, options=settings),
    )
