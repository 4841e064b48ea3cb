"""Attention patterns for the drill-down: captured once per prompt, rounded, packed small.

:func:`capture_patterns` runs the model once on one prompt with hooks on
``blocks.{l}.attn.hook_pattern`` and keeps each layer as uint16 values of the lower triangle
rounded to ``decimals`` places; :class:`PatternSet` deflates one chunk per layer (low bytes, then
high bytes; base64), which
the page's script inflates with the browser's own ``DecompressionStream`` when a layer is shown.

>>> import numpy as np
>>> p = np.tril(np.ones((1, 2, 3, 3))) / np.arange(1, 4)[:, None]
>>> ps = PatternSet.from_array(["<bos>", "a", "b"], p, label="toy")
>>> ps.shape, float(ps.decode()[0, 1, 2, 0])
((1, 2, 3), 0.333)
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from tl_spec.errors import TLSpecError
from tl_spec.running import model_device
from tl_spec.models import require_pattern_hooks
from tl_spec.names import hook_name
from tl_spec.options.si import SIOptions
from tl_spec.tokens import tokenize
from tl_spec.viz.html import content_key

__all__ = ["MAX_TOKENS", "PatternSet", "capture_patterns", "check_decimals", "token_strings"]

MAX_TOKENS = 1024  # longer prompts would embed hundreds of MB per page


def check_decimals(decimals: int) -> None:
    """Patterns are stored with 1 to 4 decimal places (uint16 holds up to 10^4)."""
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 1 <= decimals <= 4:
        raise TLSpecError(f"decimals must be an integer from 1 to 4, got {decimals!r} (3 keeps "
                          "attention to 0.001, enough to see any head's structure)")


def _quantize_tril(pattern: Float[np.ndarray, "n_heads n n"], scale: int) -> np.ndarray:
    n = pattern.shape[-1]
    rows, cols = np.tril_indices(n)
    vals = np.nan_to_num(np.asarray(pattern, dtype=np.float64)[:, rows, cols], nan=0.0)
    return np.rint(np.clip(vals, 0.0, 1.0) * scale).astype("<u2")


def _planes(quantized: np.ndarray) -> bytes:
    """uint16 values as two byte planes (all low bytes, then all high bytes): deflates ~20 %
    smaller than interleaved bytes, because the high bytes of rounded attention are nearly all 0."""
    return np.ascontiguousarray(quantized, dtype="<u2").view(np.uint8).reshape(-1, 2).T.tobytes()


@dataclass(frozen=True)
class PatternSet:
    """One model's attention patterns on one prompt: tokens and per-layer packed values."""

    tokens: tuple[str, ...]
    label: str
    prompt: str
    n_layers: int
    n_heads: int
    decimals: int
    layers: tuple[bytes, ...]  # per layer: uint16 [heads, n(n+1)/2] as byte planes, deflated

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_layers, self.n_heads, self.n

    @property
    def key(self) -> str:
        """A content hash: equal data gives the same key (and is embedded once per page)."""
        return content_key(self.label, self.prompt, list(self.tokens), self.decimals,
                           [zlib.crc32(b) for b in self.layers])

    @property
    def nbytes(self) -> int:
        """Size of the packed layers (before base64)."""
        return sum(len(b) for b in self.layers)

    @classmethod
    def from_layers(cls, tokens: Sequence[str], quantized: Sequence[np.ndarray], *, label: str,
                    prompt: str = "", decimals: int = 3) -> PatternSet:
        """Build from per-layer uint16 arrays ``[heads, n(n+1)/2]`` (see :func:`capture_patterns`)."""
        packed = tuple(zlib.compress(_planes(q), 6) for q in quantized)
        return cls(tuple(str(t) for t in tokens), str(label), str(prompt), len(quantized),
                   int(quantized[0].shape[0]) if quantized else 0, decimals, packed)

    @classmethod
    def from_array(
        cls,
        tokens: Sequence[str],
        patterns: Float[np.ndarray, "n_layers n_heads query_pos key_pos"],
        *,
        label: str = "model",
        prompt: str = "",
        decimals: int = 3,
    ) -> PatternSet:
        """Build from a ``[layers, heads, n, n]`` array (synthetic or precomputed patterns)."""
        check_decimals(decimals)
        arr = np.asarray(patterns)
        if arr.ndim != 4 or arr.shape[2] != arr.shape[3] or arr.shape[2] != len(tokens):
            raise TLSpecError(
                f"patterns must be [layers, heads, n, n] with n = len(tokens) = {len(tokens)}, "
                f"got shape {arr.shape}"
            )
        if not 1 <= len(tokens) <= MAX_TOKENS:
            raise TLSpecError(f"a drill-down prompt has 1 to {MAX_TOKENS} tokens, got {len(tokens)}")
        scale = 10 ** decimals
        return cls.from_layers(tokens, [_quantize_tril(layer, scale) for layer in arr],
                               label=label, prompt=prompt, decimals=decimals)

    def decode(self) -> Float[np.ndarray, "n_layers n_heads query_pos key_pos"]:
        """The stored patterns as a float array (upper triangle 0), as the page shows them."""
        n = self.n
        rows, cols = np.tril_indices(n)
        out = np.zeros((self.n_layers, self.n_heads, n, n))
        for layer, blob in enumerate(self.layers):
            raw = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(2, -1)
            vals = (raw[0].astype(np.uint16) | (raw[1].astype(np.uint16) << 8)).reshape(
                self.n_heads, -1)
            out[layer][:, rows, cols] = vals / 10 ** self.decimals
        return out

    def to_json(self) -> dict[str, Any]:
        """The record the page's script reads."""
        return {"v": 1, "encoding": "deflate-uint16-byteplanes-tril", "tokens": list(self.tokens),
                "label": self.label, "prompt": self.prompt, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "n": self.n, "scale": 10 ** self.decimals,
                "layers": [base64.b64encode(b).decode("ascii") for b in self.layers]}


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Each token id as the text it stands for (byte-level markers decoded)."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "decode"):
        return [tok.decode([int(i)]) for i in ids]
    return [str(t) for t in model.to_str_tokens(torch.tensor(list(ids)))]


def capture_patterns(
    model: Any,
    prompt: str,
    *,
    label: str,
    decimals: int = 3,
    max_length: int = SIOptions.max_length,
    prepend_bos: bool | None = None,
) -> PatternSet:
    """Run ``model`` once on ``prompt`` and keep every head's pattern, rounded to ``decimals``.

    >>> ps = capture_patterns(model, "The cat sat", label="tiny")  # doctest: +SKIP
    >>> ps.shape  # doctest: +SKIP
    (3, 8, 4)
    """
    check_decimals(decimals)
    if not isinstance(max_length, int) or not 2 <= max_length <= MAX_TOKENS:
        raise TLSpecError(f"max_length for a drill-down is 2..{MAX_TOKENS} tokens, got "
                          f"{max_length!r}")
    require_pattern_hooks(model)
    ids = tokenize(model, [prompt], max_length=max_length, prepend_bos=prepend_bos).ids[0]
    n_layers, scale = int(model.cfg.n_layers), 10 ** decimals
    kept: dict[int, np.ndarray] = {}

    def keep(layer: int) -> Any:
        def hook(pattern: torch.Tensor, *, hook: Any) -> None:
            kept[layer] = _quantize_tril(pattern[0].detach().float().cpu().numpy(), scale)

        return hook

    hooks = [(hook_name("pattern", layer), keep(layer)) for layer in range(n_layers)]
    tokens = torch.tensor([ids], device=model_device(model))
    with torch.inference_mode():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=hooks)
    if len(kept) != n_layers:
        raise TLSpecError(f"the forward pass reached {len(kept)} of {n_layers} pattern hooks; "
                          "the model must expose blocks.{l}.attn.hook_pattern for every layer")
    return PatternSet.from_layers(token_strings(model, ids), [kept[i] for i in range(n_layers)],
                                  label=label, prompt=prompt, decimals=decimals)
