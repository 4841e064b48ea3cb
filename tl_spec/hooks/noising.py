"""Named hook points that add Gaussian noise N(0, sigma^2) at a site of chosen layers.

The noise is a pure function of (seed, prompt tokens, layer, site): each prompt's noise is drawn
from its own generator, seeded from a hash of those four things, for the prompt's real tokens
only, and placed at them whatever the batch size, batch order or padding side. The global RNG is
neither used nor changed. Bind the batch (tokens, mask, per-row seeds) before each forward.

>>> noise = tl_spec.hooks.noise(model, sigma=0.05, layers="late")            # doctest: +SKIP
>>> noise.bind(tokens)                                                       # doctest: +SKIP
>>> logits = model.run_with_hooks(tokens, fwd_hooks=noise.fwd_hooks)         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError
from tl_spec.hooks.base import HookSet
from tl_spec.metrics.patterns import entry_mask
from tl_spec.models import describe, layer_windows
from tl_spec.names import HOOKS, LayerSpec, hook_name, parse_layers, resolve_layers
from tl_spec.options.noise import NOISE_SITES, Site, check_seeds, check_sigma, check_site
from tl_spec.tokens import real_spans

__all__ = [
    "SITES",
    "LayerSpec",
    "NoiseDraws",
    "NoiseHooks",
    "Site",
    "check_noise_options",
    "noise",
    "prompt_key",
    "resolve_layers",
    "site_hook_name",
]

#: Noise sites and their TransformerLens hook names (``{layer}`` filled per layer).
SITES: dict[str, str] = {site: HOOKS[site] for site in NOISE_SITES}
_HEADED = ("z", "pattern")


def check_noise_options(
    *, site: str = "attn_out", sigmas: Sequence[float] = (), seeds: Sequence[int] | None = None
) -> None:
    """Deprecated: build :class:`~tl_spec.options.noise.ProbeOptions`, ``SweepOptions`` or
    ``SensitivityOptions`` instead (they validate themselves).

    >>> check_noise_options(site="attn_out", sigmas=[0, 0.05], seeds=[42, 123])
    >>> check_noise_options(sigmas=[-1])
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: sigma must be a finite number >= 0, got -1
    """
    warnings.warn("check_noise_options is deprecated; the noise options classes "
                  "(tl_spec.options.noise) validate themselves", DeprecationWarning, stacklevel=2)
    check_site(site)
    for s in sigmas:
        check_sigma(s)
    if seeds is not None:
        check_seeds(seeds)


def site_hook_name(site: str, layer: int) -> str:
    """TransformerLens hook name of ``site`` in ``layer``.

    >>> site_hook_name("attn_out", 3)
    'blocks.3.hook_attn_out'
    """
    check_site(site)
    return hook_name(site, layer)  # type: ignore[arg-type]


def _seed_of(*parts: Any) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def prompt_key(ids: Sequence[int]) -> str:
    """A stable identity of a prompt: the hash of its real token ids.

    >>> prompt_key([1, 2, 3]) == prompt_key((1, 2, 3))
    True
    """
    data = b"".join(int(t).to_bytes(8, "little", signed=True) for t in ids)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


#: What a :class:`NoiseDraws` keeps by default: the draws of a sweep's 5 sigmas x 3 seeds for a
#: few layers of a large model; past it the oldest draws are dropped (and drawn again if needed).
DRAW_CACHE_BYTES = 256 * 2**20


class NoiseDraws:
    """A bounded store of standard-normal draws, shared by noise hooks that differ only in sigma.

    A row's noise is ``sigma`` times a standard-normal draw that depends on (seed, prompt, layer,
    site) alone, so the conditions of a sweep that differ only in sigma can reuse one draw instead
    of drawing it again: the values are the same tensor either way. The least recently used
    draws are dropped past ``max_bytes``.

    >>> draws = NoiseDraws(max_bytes=64)
    >>> draws.put(("a",), torch.zeros(8)); draws.get(("a",)).shape  # 32 bytes: kept
    torch.Size([8])
    >>> draws.put(("b",), torch.zeros(16)); draws.get(("a",)) is None  # 96 bytes: "a" dropped
    True
    """

    def __init__(self, max_bytes: int = DRAW_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, key: tuple) -> torch.Tensor | None:
        """The draw stored under ``key`` (do not modify it), or None."""
        draw = self._store.get(key)
        if draw is not None:
            self._store.move_to_end(key)
            self.hits += 1
        return draw

    def put(self, key: tuple, draw: torch.Tensor) -> None:
        """Keep ``draw`` under ``key``, dropping the least recently used past the budget."""
        size = draw.numel() * draw.element_size()
        if size > self.max_bytes or key in self._store:
            return
        self._store[key] = draw
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


class NoiseHooks(HookSet):
    """Forward hooks adding N(0, sigma^2) noise at ``site`` in ``layers``; iterable as (name, fn).

    A :class:`~tl_spec.hooks.base.HookSet`: :meth:`bind` takes the batch (and, beyond the
    protocol, per-row ``seeds`` and prompt ``keys``) before each forward.

    Args:
        model: the TransformerLens model the hooks attach to.
        sigma: noise standard deviation (``0`` adds nothing: the forward is exactly the clean one).
        layers: ``early|middle|late|all``, ``"START:STOP"``, a ``(start, stop)`` tuple or indices.
        site: one of :data:`SITES` (``attn_out``, ``z``, ``pattern``, ``resid_pre``).
        heads: restrict ``"z"`` / ``"pattern"`` noise to these query heads (or ``kv_group``:
            the query heads sharing that KV head).
        relative: multiply sigma by the site's RMS per layer, measured on the clean run and given
            to :meth:`calibrate`, so models of different width get matched noise budgets.
        seed: the default noise seed of every row (``bind(..., seeds=...)`` sets one per row).
        draws: a :class:`NoiseDraws` to share standard-normal draws with other hooks (a sweep's
            conditions that differ only in sigma); ``None`` draws every time.

    >>> hooks = NoiseHooks(model, sigma=0.05, layers="late", seed=42)             # doctest: +SKIP
    >>> model.run_with_hooks(tokens, fwd_hooks=[*hooks.bind(tokens, mask)])      # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        *,
        sigma: float,
        layers: LayerSpec = "all",
        site: Site = "attn_out",
        heads: Sequence[int] | None = None,
        kv_group: int | None = None,
        relative: bool = False,
        seed: int = 0,
        draws: NoiseDraws | None = None,
    ) -> None:
        check_site(site)
        sigma = check_sigma(sigma)
        facts = describe(model)
        spec = parse_layers(layers) if isinstance(layers, str) else layers
        self.layers = resolve_layers(spec, facts.n_layers)
        if (heads is not None or kv_group is not None) and site not in _HEADED:
            raise TLSpecError(
                f"site {site!r} has no heads; heads/kv_group apply to 'z' or 'pattern' only"
            )
        if kv_group is not None:
            if not 0 <= kv_group < facts.n_kv_heads:
                raise TLSpecError(f"kv_group must lie in 0..{facts.n_kv_heads - 1}")
            size = facts.n_heads // facts.n_kv_heads
            heads = list(range(kv_group * size, (kv_group + 1) * size))
        if heads is not None:
            heads = sorted({int(h) for h in heads})
            if not heads or not all(0 <= h < facts.n_heads for h in heads):
                raise TLSpecError(f"heads must lie in 0..{facts.n_heads - 1}, got {heads}")
        missing = [site_hook_name(site, x) for x in self.layers
                   if site_hook_name(site, x) not in model.hook_dict]
        if missing:
            raise TLSpecError(f"the model has no hook point {missing[0]}; cannot add noise there")
        self.sigma, self.site, self.seed, self.relative = float(sigma), site, int(seed), relative
        self.heads = heads
        self.n_heads = facts.n_heads
        self.windows = layer_windows(model)
        self.rms: dict[int, float] | None = None
        self._keys: list[str] | None = None
        self._seeds: list[int] | None = None
        self._mask: torch.Tensor | None = None
        self._spans: list[tuple[int, int]] = []
        self.draws = draws

    def calibrate(self, rms: dict[int, float]) -> NoiseHooks:
        """Set the clean-run RMS of the site per layer (needed when ``relative=True``)."""
        missing = [x for x in self.layers if x not in rms]
        if missing:
            raise TLSpecError(f"calibration lacks the RMS of layers {missing}")
        self.rms = {int(k): float(v) for k, v in rms.items()}
        return self

    def bind(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        *,
        seeds: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
    ) -> NoiseHooks:
        """Bind the next forward's batch: real tokens (mask), per-row seeds, per-row prompt keys.

        ``seeds`` default to the hooks' own seed for every row; ``keys`` (each prompt's identity,
        :func:`prompt_key`) default to the hash of each row's real tokens. Returns ``self``.
        """
        if tokens is None:
            raise TLSpecError("bind the token batch: the noise is drawn per prompt from its tokens")
        super().bind(tokens, attention_mask)
        mask = torch.ones_like(tokens) if attention_mask is None else attention_mask
        if mask.shape != tokens.shape:
            raise TLSpecError(f"attention_mask shape {tuple(mask.shape)} != tokens {tuple(tokens.shape)}")
        rows = tokens.shape[0]
        seeds = [self.seed] * rows if seeds is None else [int(s) for s in seeds]
        if len(seeds) != rows:
            raise TLSpecError(f"{len(seeds)} seeds for a batch of {rows} rows")
        if keys is None:
            keys = [prompt_key(t[m.bool()].tolist()) for t, m in zip(tokens.cpu(), mask.cpu())]
        self._keys, self._seeds, self._mask = list(keys), seeds, mask.bool()
        self._spans = real_spans(self._mask)  # found once per batch, read by every layer
        return self

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """``(hook name, function)`` pairs for ``run_with_hooks`` or ``model.hooks``."""
        return [(site_hook_name(self.site, x), self._make_hook(x)) for x in self.layers]

    def _make_hook(self, layer: int) -> Callable[..., Any]:
        def hook(activation: torch.Tensor, *, hook: Any = None) -> torch.Tensor | None:
            if self.sigma == 0:
                return None
            return self.apply(layer, activation)

        hook.__name__ = f"tl_spec_noise_{self.site}_L{layer}"
        return hook

    def _scale(self, layer: int) -> float:
        if not self.relative:
            return self.sigma
        if self.rms is None:
            raise TLSpecError("relative=True needs the clean-run RMS: call .calibrate(rms) first")
        return self.sigma * self.rms[layer]

    def _draw(self, row: int, layer: int, shape: tuple[int, ...],
              device: torch.device) -> torch.Tensor:
        """Row ``row``'s standard-normal draw at ``layer`` (float32; shared: do not modify)."""
        assert self._keys is not None and self._seeds is not None
        key = (self._seeds[row], self._keys[row], layer, self.site, shape, str(device))
        if self.draws is not None and (draw := self.draws.get(key)) is not None:
            return draw
        gen = torch.Generator(device=device)
        gen.manual_seed(_seed_of(self._seeds[row], self._keys[row], layer, self.site))
        draw = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        if self.draws is not None:
            self.draws.put(key, draw)
        return draw

    def apply(self, layer: int, x: Float[torch.Tensor, "..."]) -> torch.Tensor:
        """``x`` plus this layer's noise for the bound batch (a new tensor; ``x`` is untouched)."""
        if self._mask is None:
            raise TLSpecError(
                "the noise hooks are not bound to a batch: call .bind(tokens, attention_mask) "
                "before the forward, so the noise can be a pure function of each prompt"
            )
        if x.shape[0] != self._mask.shape[0]:
            raise TLSpecError(f"bound batch has {self._mask.shape[0]} rows, activation {x.shape[0]}")
        if self.site == "pattern":
            return self._noisy_pattern(layer, x)
        out = x.clone()
        scale = self._scale(layer)
        for row, (start, n) in enumerate(self._spans):
            noise = self._draw(row, layer, (n, *x.shape[2:]), x.device) * scale
            if self.heads is not None:  # z: [n, heads, d_head]
                keep = torch.zeros(self.n_heads, dtype=torch.bool, device=x.device)
                keep[self.heads] = True
                noise = noise * keep[None, :, None]
            out[row, start : start + n] += noise.to(x.dtype)
        return out

    def _noisy_pattern(self, layer: int, p: torch.Tensor) -> torch.Tensor:
        """Noise on the entries a head can attend to, clamped at 0 and renormalized per row."""
        assert self._mask is not None
        out = p.clone()
        scale = self._scale(layer)
        for row, (start, n) in enumerate(self._spans):
            block = p[row, :, start : start + n, start : start + n].float()
            noise = self._draw(row, layer, tuple(block.shape), p.device) * scale
            allowed = entry_mask(torch.ones(1, n, dtype=torch.bool, device=p.device),
                                 region="lower", window=self.windows[layer])[0]
            if self.heads is not None:
                keep = torch.zeros(self.n_heads, dtype=torch.bool, device=p.device)
                keep[self.heads] = True
                noise = noise * keep[:, None, None]
            noisy = torch.where(allowed, (block + noise).clamp_min(0.0), 0.0)
            total = noisy.sum(-1, keepdim=True)
            noisy = torch.where(total > 0, noisy / total.clamp_min(1e-30), block)
            out[row, :, start : start + n, start : start + n] = noisy.to(p.dtype)
        return out


def noise(
    model: Any,
    *,
    sigma: float,
    layers: LayerSpec = "all",
    site: Site = "attn_out",
    heads: Sequence[int] | None = None,
    kv_group: int | None = None,
    relative: bool = False,
    seed: int = 0,
) -> NoiseHooks:
    """Gaussian-noise hook points for ``run_with_hooks`` / ``model.hooks`` (see :class:`NoiseHooks`).

    >>> hooks = noise(model, sigma=0.05, layers=(0, 11), site="attn_out", seed=42)  # doctest: +SKIP
    >>> with model.hooks(fwd_hooks=hooks.bind(tokens).fwd_hooks): model(tokens)     # doctest: +SKIP
    """
    return NoiseHooks(model, sigma=sigma, layers=layers, site=site, heads=heads,
                      kv_group=kv_group, relative=relative, seed=seed)
