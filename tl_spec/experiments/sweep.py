"""The sweep engine: many noise conditions for close to the cost of the forward passes they need.

- The clean run happens once (SI statistics, per-prompt loss, the site's RMS, and the residual
  stream at each condition's first noised layer, per prompt).
- Conditions with sigma = 0 are the clean run; they are not run again.
- Conditions that differ only in seed run together: rows are (prompt, seed) pairs, bucketed by
  length into batches of ``batch_size`` rows.
- On ``HookedTransformer`` each noised forward starts at the first noised layer from the cached
  residual (``start_at_layer``); statistics of earlier layers are the clean ones. The bridge
  cannot start mid-way (TransformerLens raises), so there the forward is whole.
- Statistics are reduced inside the hooks.

``fast=False`` runs every condition separately from scratch (the plain path the fast one is
tested against).

>>> stats = run_sweep(model, tokenized, conditions, stats=("correlation",))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tl_spec.errors import TLSpecError
from tl_spec.experiments.run import model_device
from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.noising import NoiseHooks, prompt_key, site_hook_name
from tl_spec.metrics.patterns import Region
from tl_spec.models import backend_name
from tl_spec.tokens import PaddingSide, Tokenized, pad_batch, pad_id

__all__ = ["NoiseCondition", "SweepStats", "run_sweep"]

_AFTER_PATTERN = ("attn_out", "z")  # sites whose noise enters after the layer's own pattern


@dataclass(frozen=True)
class NoiseCondition:
    """One cell of a sweep: noise of ``sigma`` at ``site`` in ``layers``, drawn with ``seed``."""

    layers: tuple[int, ...]
    sigma: float
    seed: int
    site: str = "attn_out"
    label: str = ""


@dataclass
class SweepStats:
    """Per-prompt statistics of the clean run and of every condition (prompt order)."""

    clean: dict[str, np.ndarray]
    conditions: list[NoiseCondition]
    noised: list[dict[str, np.ndarray]]
    rms: dict[int, float] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)


class _Loss:
    """Per-row summed next-token NLL and the number of predicted tokens, from logits."""

    @staticmethod
    def of(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1).double()
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        nll = torch.where(valid, nll, 0.0)
        return nll.sum(-1).cpu().numpy(), valid.sum(-1).cpu().numpy()


def _pad_resid(parts: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    out = parts[0].new_zeros((len(parts), mask.shape[1], parts[0].shape[-1]))
    for r, part in enumerate(parts):
        pos = torch.nonzero(mask[r]).flatten()
        out[r, int(pos[0]) : int(pos[0]) + part.shape[0]] = part
    return out


class _Runner:
    def __init__(self, model: Any, tokenized: Tokenized, *, stats: Sequence[str], region: Region,
                 loss: bool, batch_size: int, padding_side: PaddingSide,
                 stat_dtype: torch.dtype) -> None:
        self.model, self.tok = model, tokenized
        self.stats, self.region, self.loss = tuple(stats), region, loss
        self.batch_size, self.side, self.stat_dtype = batch_size, padding_side, stat_dtype
        self.device = model_device(model)
        self.pad = pad_id(model)
        self.n_layers = int(model.cfg.n_layers)
        self.keys = [prompt_key(ids) for ids in tokenized.ids]
        self.can_start = backend_name(model) == "hooked"
        self.forwards: dict[str, int] = defaultdict(int)
        self.resid_store: dict[tuple[int, int], torch.Tensor] = {}
        self.rms_site: tuple[str, list[int]] = ("attn_out", [])

    def _chunks(self, rows: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        rows = sorted(rows, key=lambda r: (len(self.tok.ids[r[0]]), r))
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def forward(self, rows: list[tuple[int, int]], *, noise: NoiseHooks | None, start: int,
                resid: dict[int, torch.Tensor] | None, capture_resid: Sequence[int] = (),
                site_sq: dict[int, list[float]] | None = None, kind: str,
                stats_from: int = 0) -> dict[str, np.ndarray]:
        """Run ``rows`` ((prompt, seed) pairs); return per-row stats in the given row order."""
        out: dict[str, list[np.ndarray]] = defaultdict(list)
        ran: list[tuple[int, int]] = []
        for chunk in self._chunks(list(rows)):
            prompts = [p for p, _ in chunk]
            tokens, mask = pad_batch([self.tok.ids[p] for p in prompts], pad_id=self.pad,
                                     padding_side=self.side, device=self.device)
            model_mask = torch.ones_like(mask) if self.side == "right" else mask
            hooks: list[tuple[str, Any]] = []
            pstats = None
            if self.stats and stats_from < self.n_layers:
                pstats = PatternStats(self.model, stats=self.stats, region=self.region,
                                      layers=range(stats_from, self.n_layers),
                                      dtype=self.stat_dtype)
                pstats.attention_mask = mask
                hooks += pstats.fwd_hooks
            if noise is not None:
                noise.bind(tokens, mask, seeds=[s for _, s in chunk],
                           keys=[self.keys[p] for p in prompts])
                hooks += noise.fwd_hooks
            grabbed: dict[int, torch.Tensor] = {}
            for layer in capture_resid:
                hooks.append((f"blocks.{layer}.hook_resid_pre",
                              lambda x, hook, layer=layer: grabbed.__setitem__(layer, x)))
            if site_sq is not None:
                hooks += self._rms_hooks(site_sq, mask)
            with torch.inference_mode(), self.model.hooks(fwd_hooks=hooks):
                return_type = "logits" if self.loss else None
                if start > 0 and self.can_start and resid is not None:
                    x = _pad_resid([resid[p] for p in prompts], mask)
                    logits = self.model(x, start_at_layer=start, tokens=tokens,
                                        attention_mask=model_mask, return_type=return_type)
                else:
                    logits = self.model(tokens, attention_mask=model_mask, return_type=return_type)
            self.forwards[kind] += 1
            if pstats is not None:
                out.update({k: out[k] + [v] for k, v in pstats.collect().items()})
            if self.loss:
                nll, n = _Loss.of(logits, tokens, mask)
                out["nll_sum"].append(nll)
                out["n_predicted"].append(n)
            for layer, x in grabbed.items():
                for r, p in enumerate(prompts):
                    self.resid_store.setdefault((p, layer), x[r][mask[r].bool()].clone())
            ran.extend(chunk)
        index = {r: i for i, r in enumerate(ran)}
        take = [index[r] for r in rows]
        return {k: np.concatenate(v)[take] for k, v in out.items()}

    def _rms_hooks(self, site_sq: dict[int, list[float]], mask: torch.Tensor) -> list:
        site, layers = self.rms_site
        def make(layer: int):
            def hook(x: torch.Tensor, hook: Any) -> None:
                valid = mask.bool()
                vals = x[valid].float() if site != "pattern" else x.float()
                site_sq[layer][0] += float(vals.pow(2).sum())
                site_sq[layer][1] += float(vals.numel())
            return hook
        return [(site_hook_name(site, x), make(x)) for x in layers]


def run_sweep(
    model: Any,
    tokenized: Tokenized,
    conditions: Sequence[NoiseCondition],
    *,
    stats: Sequence[str] = (),
    region: Region = "lower",
    loss: bool = False,
    relative: bool = False,
    batch_size: int = 16,
    padding_side: PaddingSide = "right",
    stat_dtype: torch.dtype = torch.float64,
    fast: bool = True,
    progress: bool = False,
) -> SweepStats:
    """Clean run plus every condition; per-prompt statistics in prompt order.

    ``stats`` are :class:`~tl_spec.hooks.PatternStats` statistics; ``loss`` adds the summed
    next-token NLL and the number of predicted tokens per prompt.
    """
    if not stats and not loss:
        raise TLSpecError("nothing to measure: ask for pattern statistics, loss, or both")
    if "mean_pattern" in stats:
        raise TLSpecError("sweeps keep per-prompt statistics; 'mean_pattern' pools prompts")
    runner = _Runner(model, tokenized, stats=stats, region=region, loss=loss,
                     batch_size=batch_size, padding_side=padding_side, stat_dtype=stat_dtype)
    n_prompts = len(tokenized.ids)
    sites = {c.site for c in conditions}
    if relative and len(sites) > 1:
        raise TLSpecError("relative noise needs one site per sweep")
    noised_layers = sorted({x for c in conditions for x in c.layers})
    runner.rms_site = (next(iter(sites)) if sites else "attn_out", noised_layers)
    site_sq = {x: [0.0, 0.0] for x in noised_layers} if relative else None
    starts = sorted({min(c.layers) for c in conditions if c.sigma > 0 and min(c.layers) > 0})
    capture = starts if (fast and runner.can_start) else []
    clean = runner.forward([(p, 0) for p in range(n_prompts)], noise=None, start=0, resid=None,
                           capture_resid=capture, site_sq=site_sq, kind="clean")
    rms = {x: (v[0] / v[1]) ** 0.5 for x, v in site_sq.items()} if site_sq else {}
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(conditions):
        groups[(c.layers, c.sigma, c.site)].append(i)
    results: list[dict[str, np.ndarray] | None] = [None] * len(conditions)
    iterator: Any = groups.items()
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(groups), desc="noise conditions", unit="cond")
    for (layers, sigma, site), members in iterator:
        unchanged = fast and not loss and min(layers) + (site in _AFTER_PATTERN) >= runner.n_layers
        if sigma == 0 or unchanged:  # nothing the measurement sees can change
            for i in members:
                results[i] = {k: v.copy() for k, v in clean.items()}
            continue
        seeds = sorted({conditions[i].seed for i in members})
        batches = [seeds] if fast else [[s] for s in seeds]
        for seed_group in batches:
            hooks = NoiseHooks(model, sigma=sigma, layers=list(layers), site=site,
                               relative=relative)
            if relative:
                hooks.calibrate(rms)
            start = min(layers) if (fast and runner.can_start) else 0
            grid = [(p, s) for s in seed_group for p in range(n_prompts)]
            resid = {p: runner.resid_store[(p, start)] for p in range(n_prompts)} if start else None
            # patterns of layers before the first noised one are the clean ones; so is the first
            # noised layer's own pattern when the noise enters after it (attn_out, z)
            first = min(layers) + (site in _AFTER_PATTERN) if fast else 0
            got = runner.forward(grid, noise=hooks, start=start, resid=resid, kind="noised",
                                 stats_from=first)
            for j, seed in enumerate(seed_group):
                part = {k: v[j * n_prompts : (j + 1) * n_prompts] for k, v in got.items()}
                for stat in stats:
                    if stat not in part:  # no layer after the noise: every pattern is clean
                        part[stat] = clean[stat].copy()
                    elif first > 0:
                        part[stat] = np.concatenate([clean[stat][:, :first], part[stat]], axis=1)
                for i in members:
                    if conditions[i].seed == seed:
                        results[i] = part
    assert all(r is not None for r in results)
    return SweepStats(clean=clean, conditions=list(conditions), noised=results,  # type: ignore[arg-type]
                      rms=rms, forwards=dict(runner.forwards))
