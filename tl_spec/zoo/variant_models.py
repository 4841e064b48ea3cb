"""Attention variants as part of a model's architecture: trained in, saved with, loaded back.

A checkpoint trained with an attention variant (Xue, Moosavi & Aletras 2025) is a standard Hugging Face Llama/Mistral
checkpoint plus ``tl_spec_variant.json`` naming the variant and its layers. Training runs the
variant inside the Hugging Face model (:func:`install`: an attention function registered with
``transformers.AttentionInterface`` for ``no_mixing`` / ``uniform`` / ``form``, forward hooks on
``q_proj`` / ``k_proj`` for ``decoupled``). :func:`tl_spec.load_model` reads the file and attaches
the same variant as permanent TransformerLens hooks (:mod:`tl_spec.hooks.variants`), so the
loaded model computes what was trained on both backends (tested: equal logits). It does so through
the :class:`~tl_spec.models.CheckpointExtension` this module registers when it is imported
(``import tl_spec`` imports it), so :mod:`tl_spec.models` needs no import of the zoo or the hooks.

>>> spec = VariantSpec("uniform", layers=[0, 2])
>>> spec.to_json()
'{"variant": "uniform", "layers": [0, 2], "form": "relu", "source_layer": 0}'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tl_spec.errors import TLSpecError
from tl_spec.hooks.variants import attention_variant, normalise_scores
from tl_spec.metrics.patterns import entry_mask
from tl_spec.models import CheckpointExtension, register_checkpoint_extension

__all__ = ["ATTRIBUTE", "EXTENSION", "FILE", "TRAINABLE", "VariantSpec", "attach", "install",
           "read_spec"]

FILE = "tl_spec_variant.json"
#: The model attribute holding the attached :class:`VariantSpec` (read by ``can_start_at_layer``).
ATTRIBUTE = "tl_spec_variant"
TRAINABLE: tuple[str, ...] = ("no_mixing", "uniform", "form", "decoupled")
_NAME = "tl_spec_variant"


@dataclass(frozen=True)
class VariantSpec:
    """Which variant a model was trained with, in which layers (and its options)."""

    variant: str
    layers: list[int] = field(default_factory=list)
    form: str = "relu"
    source_layer: int = 0

    def __post_init__(self) -> None:
        if self.variant not in TRAINABLE:
            raise TLSpecError(f"cannot train with variant {self.variant!r}; trainable: "
                              f"{', '.join(TRAINABLE)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def read_spec(path: str | Path) -> VariantSpec | None:
    """The variant recorded in checkpoint directory ``path`` (None for standard attention)."""
    target = Path(path) / FILE
    if not target.is_file():
        return None
    try:
        return VariantSpec(**json.loads(target.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise TLSpecError(f"{target}: not a valid attention-variant record ({exc}); restore it "
                          "from the zoo or delete it to load the model with standard attention"
                          ) from None


def _allowed(module: Any, attention_mask: torch.Tensor | None, n: int,
             device: torch.device) -> torch.Tensor:
    """[batch or 1, 1, n, n] bool: causal, inside the layer's window, and not masked."""
    window = getattr(module, "sliding_window", None) or getattr(module.config, "sliding_window", None)
    allowed = entry_mask(torch.ones(1, n, dtype=torch.bool, device=device), region="lower",
                         window=window or None)[:, None]
    if attention_mask is not None:
        m = attention_mask[..., -n:, -n:]
        m = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        allowed = allowed & m
    return allowed


def _variant_attention(spec: VariantSpec) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    from transformers.models.llama.modeling_llama import eager_attention_forward, repeat_kv

    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = query.shape[-2]
        allowed = _allowed(module, attention_mask, n, query.device)
        if module.layer_idx not in spec.layers or spec.variant == "decoupled":
            additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
            additive = additive.masked_fill(~allowed, float("-inf"))
            return eager_attention_forward(module, query, key, value, additive, scaling,
                                           dropout=dropout, **kwargs)
        values = repeat_kv(value, module.num_key_value_groups)
        shape = (query.shape[0], query.shape[1], n, n)
        if spec.variant == "no_mixing":
            weights = (torch.eye(n, device=query.device, dtype=torch.float32) * allowed).expand(shape)
        elif spec.variant == "uniform":
            w = allowed.to(torch.float32)
            weights = (w / w.sum(-1, keepdim=True).clamp_min(1)).expand(shape)
        else:
            keys = repeat_kv(key, module.num_key_value_groups)
            scores = torch.matmul(query, keys.transpose(2, 3)).float() * scaling
            weights = normalise_scores(scores, allowed.expand(shape[0], 1, n, n)[:, 0], spec.form)
        weights = weights.to(values.dtype)
        out = torch.matmul(weights, values).transpose(1, 2).contiguous()
        return out, weights

    return attention


def install(model: Any, spec: VariantSpec) -> list[Any]:
    """Make a Hugging Face Llama/Mistral model compute ``spec`` (for training); returns handles.

    Sets the model's attention implementation to a registered tl_spec function and, for
    ``decoupled``, hooks ``q_proj`` / ``k_proj`` of the chosen layers to read the source layer's
    input through this layer's input norm. Remove the hooks with ``h.remove()``.
    """
    from transformers import AttentionInterface

    layers = model.model.layers
    bad = [x for x in spec.layers if not 0 <= x < len(layers)]
    if bad:
        raise TLSpecError(f"variant layers {bad} out of range for {len(layers)} layers")
    if spec.variant == "decoupled" and not 0 <= spec.source_layer < len(layers):
        raise TLSpecError(f"source_layer={spec.source_layer} out of range for {len(layers)} layers")
    if spec.variant == "decoupled" and any(x < spec.source_layer for x in spec.layers):
        raise TLSpecError("decoupled layers must not come before the source layer")
    name = f"{_NAME}_{hashlib.sha1(spec.to_json().encode()).hexdigest()[:12]}"  # one per spec
    AttentionInterface.register(name, _variant_attention(spec))
    model.config._attn_implementation = name
    for layer in layers:
        layer.self_attn.config._attn_implementation = name
    handles: list[Any] = []
    if spec.variant != "decoupled":
        return handles
    source: dict[str, torch.Tensor] = {}
    handles.append(layers[spec.source_layer].register_forward_pre_hook(
        lambda mod, args, kwargs: source.__setitem__("x", args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True))
    for idx in spec.layers:
        norm = layers[idx].input_layernorm
        for proj in (layers[idx].self_attn.q_proj, layers[idx].self_attn.k_proj):
            def hook(mod: Any, args: Any, output: torch.Tensor, norm: Any = norm) -> torch.Tensor:
                return torch.nn.functional.linear(norm(source["x"]), mod.weight, mod.bias)
            handles.append(proj.register_forward_hook(hook))
    return handles


def attach(model: Any, spec: VariantSpec) -> Any:
    """Attach ``spec`` to a TransformerLens model as permanent hooks (what ``load_model`` does).

    The hooks treat every position as a real token: run such models unpadded or right-padded
    (tl_spec's default), where causal attention never reaches the pads.
    """
    variant = attention_variant(model, spec.variant, layers=list(spec.layers), form=spec.form,
                                source_layer=spec.source_layer)
    for name, fn in variant.fwd_hooks:
        model.add_hook(name, fn, is_permanent=True)
    setattr(model, ATTRIBUTE, spec)
    return model


#: How :func:`tl_spec.load_model` finds and attaches a trained-in variant (registered on import).
EXTENSION = CheckpointExtension("attention variant", read=read_spec, attach=attach,
                                attribute=ATTRIBUTE)
register_checkpoint_extension(EXTENSION)
