"""The sweep engine: many noise conditions for close to the cost of the forward passes they need.

- The clean run happens once (SI statistics, per-prompt loss, the site's RMS, and the residual
  stream at each condition's first noised layer, per prompt).
- Conditions with sigma = 0 are the clean run; they are not run again.
- Conditions that differ only in seed run together: rows are (prompt, seed) pairs, grouped by
  length into batches of at most ``batch_size`` rows with the least padded work
  (:func:`~tl_spec.tokens.plan_batches`).
- Where the model can resume mid-way (:func:`~tl_spec.resume.can_start_at_layer`: a probe that
  the resumed forward is bit-identical; ``HookedTransformer`` and TransformerLens 4's bridge)
  each noised forward starts at the first noised layer from the cached residual
  (:func:`~tl_spec.resume.forward_from_layer`); statistics of earlier layers are the clean ones. A group whose
  noised layers extend another group's (``all`` extends ``early``) starts where that one's
  noise ends, from the residual captured in that run (the noise is a pure function of seed,
  prompt, layer and site, so it is the same residual). Elsewhere (TransformerLens 3's bridge
  raises on ``start_at_layer``) the forward is whole.
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
from tl_spec.running import model_device
from tl_spec.hooks.capture import PatternStats
from tl_spec.hooks.noising import NoiseDraws, NoiseHooks, prompt_key, site_hook_name
from tl_spec.metrics.patterns import Region
from tl_spec.resume import can_start_at_layer, forward_from_layer
from tl_spec.names import hook_name
from tl_spec.options.si import ROUTES_WITH_PAD_ROWS, SIOptions
from tl_spec.tokens import PaddingSide, Tokenized, pad_batch, pad_id, plan_batches, real_spans

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
    #: every forward pass run, in order: (kind, start layer, prompt index of each row); what a
    #: benchmark replays without hooks as the floor
    forward_plan: list[tuple[str, int, list[int]]] = field(default_factory=list)


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
    for r, (part, (start, _)) in enumerate(zip(parts, real_spans(mask))):
        out[r, start : start + part.shape[0]] = part
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
        # a reproduction route (SIOptions.route) pads to tokenized.pad_to and its pad rows
        # matter: whole forwards, the padding mask applied inside the hooks
        self.routed = tokenized.pad_to is not None
        self.can_start = can_start_at_layer(model) and not self.routed
        if self.routed:
            self.pad = tokenized.pad_token if tokenized.pad_token is not None else self.pad
            self.side = tokenized.pad_side or self.side
        self.forwards: dict[str, int] = defaultdict(int)
        self.resid_store: dict[tuple[Any, int, int, int], torch.Tensor] = {}
        self.plan: list[tuple[str, int, list[int]]] = []
        self.rms_site: tuple[str, list[int]] = ("attn_out", [])

    def _chunks(self, rows: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        rows = sorted(rows)
        plan = plan_batches([len(self.tok.ids[p]) for p, _ in rows], batch_size=self.batch_size)
        return [[rows[i] for i in group] for group in plan]

    def forward(self, rows: list[tuple[int, int]], *, noise: NoiseHooks | None, start: int,
                resid: dict[tuple[int, int], torch.Tensor] | None,
                capture_resid: Sequence[int] = (), source: Any = "clean",
                site_sq: dict[int, list[float]] | None = None, kind: str,
                stats_from: int = 0) -> dict[str, np.ndarray]:
        """Run ``rows`` ((prompt, seed) pairs); return per-row stats in the given row order.

        The rows run in length-grouped batches under one ``model.hooks`` context, with one
        :class:`~tl_spec.hooks.PatternStats` for all of them: the hooks read the batch being run
        from ``batch`` (and the bound statistics and noise), so nothing is attached per batch.
        """
        pstats = None
        hooks: list[tuple[str, Any]] = []
        if self.stats and stats_from < self.n_layers:
            pstats = PatternStats(self.model, stats=self.stats, region=self.region,
                                  layers=range(stats_from, self.n_layers),
                                  dtype=self.stat_dtype, eager_padding=self.routed,
                                  rows="all" if self.tok.route in ROUTES_WITH_PAD_ROWS
                                  else "valid")
            hooks += pstats.fwd_hooks
        if noise is not None:
            hooks += noise.fwd_hooks
        batch: dict[str, Any] = {}  # the batch being run: its mask and the residuals grabbed
        for layer in capture_resid:
            hooks.append((hook_name("resid_pre", layer),
                          lambda x, hook, layer=layer: batch["grabbed"].__setitem__(layer, x)))
        if site_sq is not None:
            hooks += self._rms_hooks(site_sq, batch)
        losses: dict[str, list[np.ndarray]] = defaultdict(list)
        ran: list[tuple[int, int]] = []
        return_type = "logits" if self.loss else None
        with torch.inference_mode(), self.model.hooks(fwd_hooks=hooks):
            for chunk in self._chunks(list(rows)):
                prompts = [p for p, _ in chunk]
                tokens, mask = pad_batch([self.tok.ids[p] for p in prompts], pad_id=self.pad,
                                         padding_side=self.side, device=self.device,
                                         width=self.tok.pad_to)
                model_mask = (torch.ones_like(mask) if self.side == "right" or self.routed
                              else mask)
                batch.update(mask=mask, grabbed={})
                if pstats is not None:
                    pstats.attention_mask = mask
                if noise is not None:
                    noise.bind(tokens, mask, seeds=[s for _, s in chunk],
                               keys=[self.keys[p] for p in prompts])
                if start > 0 and self.can_start and resid is not None:
                    x = _pad_resid([resid[row] for row in chunk], mask)
                    logits = forward_from_layer(self.model, x, start, tokens=tokens,
                                                attention_mask=model_mask,
                                                return_type=return_type)
                else:
                    logits = self.model(tokens, attention_mask=model_mask,
                                        return_type=return_type)
                self.forwards[kind] += 1
                self.plan.append((kind, start if resid is not None else 0, prompts))
                if self.loss:
                    nll, n = _Loss.of(logits, tokens, mask)
                    losses["nll_sum"].append(nll)
                    losses["n_predicted"].append(n)
                for layer, x in batch["grabbed"].items():
                    for r, (p, seed) in enumerate(chunk):
                        self.resid_store[(source, p, seed, layer)] = x[r][mask[r].bool()].clone()
                ran.extend(chunk)
        out = {k: np.concatenate(v) for k, v in losses.items()}
        if pstats is not None:
            out.update(pstats.collect())  # batches in the order run, like ``ran``
        index = {r: i for i, r in enumerate(ran)}
        take = [index[r] for r in rows]
        return {k: v[take] for k, v in out.items()}

    def _rms_hooks(self, site_sq: dict[int, list[float]], batch: dict[str, Any]) -> list:
        site, layers = self.rms_site
        def make(layer: int):
            def hook(x: torch.Tensor, hook: Any) -> None:
                valid = batch["mask"].bool()
                vals = x[valid].float() if site != "pattern" else x.float()
                site_sq[layer][0] += float(vals.pow(2).sum())
                site_sq[layer][1] += float(vals.numel())
            return hook
        return [(site_hook_name(site, x), make(x)) for x in layers]


def _plan_donors(keys: list[tuple]) -> dict[tuple, tuple[tuple, int]]:
    """For each group, a group with the same sigma and site whose noised layers are exactly this
    group's layers below some layer ``b`` of it: its run's residual at ``b`` is this group's
    (noise is a pure function of seed, prompt, layer and site), so this group starts at ``b``.

    >>> _plan_donors([((0, 1, 2), 0.1, "attn_out"), ((0, 1, 2, 3, 4, 5), 0.1, "attn_out")])
    {((0, 1, 2, 3, 4, 5), 0.1, 'attn_out'): (((0, 1, 2), 0.1, 'attn_out'), 3)}
    """
    plan: dict[tuple, tuple[tuple, int]] = {}
    for key in keys:
        layers, sigma, site = key
        for other in keys:
            dl, ds, dsite = other
            if ds != sigma or dsite != site or len(dl) >= len(layers):
                continue
            rest = [x for x in layers if x > dl[-1]]
            if rest and tuple(x for x in layers if x <= dl[-1]) == dl:
                if key not in plan or rest[0] > plan[key][1]:
                    plan[key] = (other, rest[0])
    return plan


def run_sweep(
    model: Any,
    tokenized: Tokenized,
    conditions: Sequence[NoiseCondition],
    *,
    stats: Sequence[str] = (),
    region: Region = "lower",
    loss: bool = False,
    relative: bool = False,
    batch_size: int = SIOptions.batch_size,
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
                           capture_resid=capture, site_sq=site_sq, kind="clean", source="clean")
    rms = {x: (v[0] / v[1]) ** 0.5 for x, v in site_sq.items()} if site_sq else {}
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, c in enumerate(conditions):
        groups[(c.layers, c.sigma, c.site)].append(i)
    skipped = {k for k in groups if k[1] == 0 or (
        fast and not loss and min(k[0]) + (k[2] in _AFTER_PATTERN) >= runner.n_layers)}
    donors = _plan_donors([k for k in groups if k not in skipped]) if (
        fast and runner.can_start) else {}
    captures: dict[tuple, list[int]] = defaultdict(list)
    for donor, b in donors.values():
        captures[donor].append(b)
    draws = NoiseDraws()  # conditions that differ only in sigma share their draws
    results: list[dict[str, np.ndarray] | None] = [None] * len(conditions)
    done: dict[tuple, dict[int, dict[str, np.ndarray]]] = {}
    iterator: Any = sorted(groups.items(), key=lambda kv: (len(kv[0][0]), kv[0]))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(groups), desc="noise conditions", unit="cond")
    for key, members in iterator:
        layers, sigma, site = key
        if key in skipped:  # sigma = 0, or nothing the measurement sees can change
            for i in members:
                results[i] = {k: v.copy() for k, v in clean.items()}
            continue
        seeds = sorted({conditions[i].seed for i in members})
        done[key] = {}
        for seed_group in ([seeds] if fast else [[s] for s in seeds]):
            hooks = NoiseHooks(model, sigma=sigma, layers=list(layers), site=site,
                               relative=relative, draws=draws)
            if relative:
                hooks.calibrate(rms)
            grid = [(p, s) for s in seed_group for p in range(n_prompts)]
            donor, start = donors.get(key, (None, 0))
            after = int(site in _AFTER_PATTERN)
            if donor is not None and all(s in done.get(donor, {}) for s in seed_group):
                resid = {(p, s): runner.resid_store[(donor, p, s, start)] for p, s in grid}
                below = {s: done[donor][s] for s in seed_group}  # same noise below ``start``
                first = start + after
            else:
                start = min(layers) if (fast and runner.can_start) else 0
                resid = {(p, s): runner.resid_store[("clean", p, 0, start)]
                         for p, s in grid} if start else None
                below = {s: clean for s in seed_group}
                first = min(layers) + after if fast else 0
            # patterns before ``first`` are the donor's (or the clean ones): noise entering at or
            # after a layer's attention output (attn_out, z) cannot change that layer's pattern
            got = runner.forward(grid, noise=hooks, start=start, resid=resid, kind="noised",
                                 stats_from=first, capture_resid=captures.get(key, ()),
                                 source=key)
            for j, seed in enumerate(seed_group):
                part = {k: v[j * n_prompts : (j + 1) * n_prompts] for k, v in got.items()}
                for stat in stats:
                    if stat not in part:  # no layer after the noise: every pattern is clean
                        part[stat] = below[seed][stat].copy()
                    elif first > 0:
                        part[stat] = np.concatenate([below[seed][stat][:, :first], part[stat]],
                                                    axis=1)
                done[key][seed] = part
                for i in members:
                    if conditions[i].seed == seed:
                        results[i] = part
    assert all(r is not None for r in results)
    return SweepStats(clean=clean, conditions=list(conditions), noised=results,  # type: ignore[arg-type]
                      rms=rms, forwards=dict(runner.forwards), forward_plan=runner.plan)
