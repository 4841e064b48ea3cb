"""Model access: load a TransformerLens model and read the architecture facts analyses need.

The only module that knows ``HookedTransformer`` from ``TransformerBridge``. Every analysis in
tl_spec takes any object that fits :class:`TLModel` (both backends, or a look-alike).

This is the lowest model-running layer: it imports neither the hooks nor the zoo. What a local
checkpoint may carry beyond Hugging Face's files (e.g. an attention variant it was trained with)
is attached by a :class:`CheckpointExtension` that a higher module registers with
:func:`register_checkpoint_extension` when it is imported (:mod:`tl_spec.zoo.variant_models`
does, and ``import tl_spec`` imports it).

>>> from tl_spec.models import load_model, describe
>>> model = load_model("path/to/hf_checkpoint", backend="bridge")  # doctest: +SKIP
>>> describe(model).attention  # doctest: +SKIP
'GQA'
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int

from tl_spec.errors import TLSpecError
from tl_spec.names import hook_name

__all__ = [
    "Backend",
    "CheckpointExtension",
    "ModelFacts",
    "TLModel",
    "backend_name",
    "checkpoint_extensions",
    "describe",
    "layer_windows",
    "load_model",
    "model_id",
    "can_start_at_layer",
    "forward_from_layer",
    "probe_start_at_layer",
    "random_init_like",
    "register_checkpoint_extension",
    "resolve_dtype",
    "require_pattern_hooks",
]

Backend = Literal["auto", "bridge", "hooked"]
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


@runtime_checkable
class TLModel(Protocol):
    """What tl_spec needs of a model: TransformerLens' config, hook API and tokenizer."""

    cfg: Any
    tokenizer: Any
    hook_dict: dict[str, Any]

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class CheckpointExtension:
    """Something a local checkpoint directory carries beyond Hugging Face's files, attached on load.

    :func:`load_model` asks every registered extension to ``read`` the checkpoint directory
    before the weights load (a damaged record fails fast) and, for each record found, calls
    ``attach(model, record)`` on the loaded model. ``attach`` must set ``model.<attribute>`` to
    the record: :func:`random_init_like` re-attaches it to its copy, whose deep-copied hooks would
    still point at the original model.

    Attributes:
        name: what the extension is, for messages (also its registry key).
        read: ``read(path) -> record | None`` for a checkpoint directory ``path``.
        attach: ``attach(model, record)``: attach the record (e.g. as permanent hooks).
        attribute: the model attribute that holds the attached record.

    >>> ext = CheckpointExtension("demo", read=lambda path: None, attach=lambda m, r: m,
    ...                           attribute="demo_record")
    >>> ext.name
    'demo'
    """

    name: str
    read: Callable[[Path], Any]
    attach: Callable[[Any, Any], Any]
    attribute: str


_EXTENSIONS: dict[str, CheckpointExtension] = {}


def register_checkpoint_extension(extension: CheckpointExtension) -> None:
    """Register ``extension`` with :func:`load_model` (again under the same name replaces it).

    >>> register_checkpoint_extension("not an extension")
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: register_checkpoint_extension takes a CheckpointExtension, got str
    """
    if not isinstance(extension, CheckpointExtension):
        raise TLSpecError("register_checkpoint_extension takes a CheckpointExtension, got "
                          f"{type(extension).__name__}")
    _EXTENSIONS[extension.name] = extension


def checkpoint_extensions() -> tuple[CheckpointExtension, ...]:
    """The registered checkpoint extensions, in registration order.

    >>> import tl_spec
    >>> [e.name for e in checkpoint_extensions()]
    ['attention variant']
    """
    return tuple(_EXTENSIONS.values())


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept a torch dtype or its name ("bfloat16", "float32", ...).

    >>> resolve_dtype("bf16")
    torch.bfloat16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise TLSpecError(
            f"unknown dtype {dtype!r}; use a torch dtype or one of {', '.join(sorted(_DTYPES))}"
        )
    return _DTYPES[key]


def _tl_major() -> int:
    return int(_tl_version().split(".")[0])


def _has_hooked() -> bool:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def _is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").exists():
        raise TLSpecError(
            f"{path} is a directory but has no config.json, so it is not a Hugging Face "
            "checkpoint; point at the directory written by save_pretrained (config, weights and "
            "tokenizer together)."
        )


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    backend: Backend = "auto",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Any:
    """Load a TransformerLens model from a hub name (online) or a local HF checkpoint (offline).

    ``backend="bridge"`` gives a ``TransformerBridge`` (exact Hugging Face numerics, every
    architecture HF has); ``"hooked"`` a ``HookedTransformer`` (TransformerLens 3.x only; local
    directories are converted from their config, weights unprocessed); ``"auto"`` takes the
    bridge for local directories and on TransformerLens 4, and ``HookedTransformer`` for hub names
    TransformerLens 3 knows. Extra ``kwargs`` go to the backend's loader. What a local checkpoint
    carries beyond Hugging Face's files is attached by the registered
    :class:`CheckpointExtension` objects: a checkpoint trained with an attention variant
    (``tl_spec_variant.json``, registered by :mod:`tl_spec.zoo.variant_models`) gets that variant
    as permanent hooks.

    >>> load_model("gpt2", backend="hooked", dtype="float32")  # doctest: +SKIP
    """
    name = os.fspath(name_or_path)
    dtype = resolve_dtype(dtype) or torch.float32
    if backend not in ("auto", "bridge", "hooked"):
        raise TLSpecError(f"unknown backend {backend!r}; use 'auto', 'bridge' or 'hooked'")
    local = _is_local(name)
    if local:
        _check_local_dir(Path(name).expanduser())
    elif os.sep in name and not name.count("/") == 1:
        raise TLSpecError(
            f"{name!r} is neither an existing directory nor a hub name like 'org/model'; check "
            "the path (it must be a directory holding config.json and the weights)."
        )
    if backend == "hooked" and not _has_hooked():
        raise TLSpecError(
            "backend='hooked' needs HookedTransformer, which TransformerLens "
            f"{_tl_version()} removed; use backend='bridge' (or 'auto'), or install "
            "transformer-lens<4."
        )
    if backend == "auto":
        backend = "bridge"
        if not local and _has_hooked() and _tl_major() < 4 and _is_official(name):
            backend = "hooked"
    carried = []  # records read before the weights load, so a damaged one fails fast
    if local:
        for extension in checkpoint_extensions():
            record = extension.read(Path(name).expanduser())
            if record is not None:
                carried.append((extension, record))
    with _quiet_hf():
        if backend == "bridge":
            model = _load_bridge(name, dtype, device, kwargs)
        else:
            model = _load_hooked(name, local, dtype, device, kwargs)
    for extension, record in carried:
        extension.attach(model, record)
    return model


@contextlib.contextmanager
def _quiet_hf() -> Any:
    """Hide transformers' per-load progress bars and TL's prints; restore the settings after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _is_official(name: str) -> bool:
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        get_official_model_name(name)
    except Exception:
        return False
    return True


def _load_bridge(name: str, dtype: torch.dtype, device: Any, kwargs: dict[str, Any]) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(
            str(Path(name).expanduser()) if _is_local(name) else name,
            device=device or "cpu",
            dtype=dtype,
            **kwargs,
        )
    model.eval()
    return model


def _load_hooked(
    name: str, local: bool, dtype: torch.dtype, device: Any, kwargs: dict[str, Any]
) -> Any:
    from transformer_lens import HookedTransformer

    if not local:
        return HookedTransformer.from_pretrained_no_processing(
            name, dtype=dtype, device=device, **kwargs
        ).eval()
    return _hooked_from_local(Path(name).expanduser(), dtype, device, kwargs)


def _hooked_from_local(path: Path, dtype: torch.dtype, device: Any, kwargs: dict[str, Any]) -> Any:
    """HookedTransformer from a local checkpoint: TL's config converter, then its weight converter.

    TransformerLens sniffs architecture from the *name* (``"llama"``, ``"gemma"`` in a path
    change the branch), so the converter sees the checkpoint through a neutrally named folder of
    symlinks (with ``n_ctx`` added to a GPT-2 config, which transformers 5 no longer carries).
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(path)
    arch = (getattr(hf_config, "architectures", None) or ["?"])[0]
    with tempfile.TemporaryDirectory(prefix="tl_spec_") as tmp:
        link = Path(tmp) / "checkpoint"
        link.mkdir()
        for item in path.resolve().iterdir():
            if item.name != "config.json":
                (link / item.name).symlink_to(item)
        config = json.loads((path / "config.json").read_text())
        if arch == "GPT2LMHeadModel":  # transformers 5 dropped the n_ctx alias TL reads
            config.setdefault("n_ctx", config.get("n_positions", 1024))
        (link / "config.json").write_text(json.dumps(config))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = loading.get_pretrained_model_config(
                    str(link), fold_ln=False, device=device, dtype=dtype
                )
        except (NotImplementedError, AttributeError, KeyError) as exc:
            raise TLSpecError(
                f"TransformerLens {_tl_version()} cannot build a HookedTransformer config for the "
                f"local {arch} checkpoint {path} ({type(exc).__name__}: {exc}); load it with "
                "backend='bridge', which supports every Hugging Face architecture."
            ) from exc
        hf_model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
        state_dict = loading.get_pretrained_state_dict(str(link), cfg, hf_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, **kwargs)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.cfg.model_name = str(path)
    return model.to(device or "cpu").eval()


def backend_name(model: Any) -> str:
    """``"bridge"``, ``"hooked"`` or the class name of a look-alike.

    >>> backend_name(object())
    'object'
    """
    names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in names:
        return "bridge"
    if "HookedTransformer" in names:
        return "hooked"
    return type(model).__name__


def model_id(model: Any) -> str:
    """The name or path a model was loaded from, as well as TransformerLens records it."""
    cfg = getattr(model, "cfg", None)
    for attr in ("model_name", "tokenizer_name"):
        value = getattr(cfg, attr, None)
        if value:
            return str(value)
    return type(model).__name__


def random_init_like(model: Any, seed: int) -> Any:
    """A copy of ``model`` re-initialised from ``seed`` by its own initialiser: no trained structure.

    ``HookedTransformer``: TransformerLens' ``init_weights`` (its ``cfg.init_mode``);
    ``TransformerBridge``: the wrapped Hugging Face model's ``_init_weights`` on every module.
    The copy has the trained model's architecture, tokenizer, dtype and device: a null model.

    >>> null = random_init_like(model, seed=1)  # doctest: +SKIP
    """
    kind = backend_name(model)
    if kind not in ("hooked", "bridge"):
        raise TLSpecError(
            f"cannot re-initialise a {type(model).__name__}: random-init null models need a "
            "HookedTransformer or TransformerBridge; pass null models explicitly instead"
        )
    clone = copy.deepcopy(model)
    devices = {p.device for p in clone.parameters()}
    fork = [d for d in devices if d.type == "cuda"]
    with torch.random.fork_rng(devices=fork), torch.no_grad():
        torch.manual_seed(seed)
        if kind == "hooked":
            clone.init_weights()
        else:
            hf = clone.original_model
            for module in hf.modules():
                hf._init_weights(module)
    carried = [(ext, getattr(model, ext.attribute)) for ext in checkpoint_extensions()
               if getattr(model, ext.attribute, None) is not None]
    if carried:  # deepcopy shares the hook closures, which point at the original model
        clone.reset_hooks(including_permanent=True)
        for extension, record in carried:
            extension.attach(clone, record)
    return clone


#: Per model: whether resuming at a middle layer reproduced the full forward (see the probe).
_RESUME_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def can_start_at_layer(model: Any) -> bool:
    """Whether :func:`forward_from_layer` (``start_at_layer``) equals the full forward from ``l`` on.

    Decided per model, by what it does rather than by backend name: ``HookedTransformer``, or a
    ``TransformerBridge`` of TransformerLens 4 or later (3.x's bridge raises on
    ``start_at_layer``), that passes :func:`probe_start_at_layer` (cached per model). Always
    False when the positional embedding enters every layer (``shortformer``) or a trained-in
    ``decoupled`` variant reads an earlier layer's input.

    >>> can_start_at_layer(object())
    False
    """
    kind = backend_name(model)
    if kind not in ("hooked", "bridge") or (kind == "bridge" and _tl_major() < 4):
        return False
    if getattr(model.cfg, "positional_embedding_type", None) == "shortformer":
        return False
    spec = getattr(model, "tl_spec_variant", None)
    if spec is not None and spec.variant == "decoupled":
        return False
    try:
        return _RESUME_PROBED[model]
    except TypeError:  # not weak-referenceable: probe every time
        return probe_start_at_layer(model)
    except KeyError:
        _RESUME_PROBED[model] = answer = probe_start_at_layer(model)
        return answer


def probe_start_at_layer(model: Any) -> bool:
    """Run a tiny batch whole and again from a middle layer; True iff the logits are bit-identical.

    Two rows of 8 tokens, the second left-padded by 3 (so mask-derived positions are checked
    too); the residual entering layer ``n_layers // 2`` is captured in the full run and fed to
    :func:`forward_from_layer`, then the full forward runs once more (the resumed one must leave
    nothing behind). The comparisons are exact (``torch.equal``, no tolerance): the runs do the
    same arithmetic from that layer on, so any difference means the resumed forward is not the
    same computation. Any exception (a backend without ``start_at_layer``) is False.

    >>> probe_start_at_layer(model)  # doctest: +SKIP
    True
    """
    try:
        n_layers, vocab = int(model.cfg.n_layers), int(model.cfg.d_vocab)
        layer = n_layers // 2
        device = next(model.parameters()).device
        tokens = (torch.arange(16, device=device).view(2, 8) * 7 + 3) % vocab
        mask = torch.ones_like(tokens)
        mask[1, :3] = 0
        got: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor, hook: Any) -> None:
            got["resid"] = x.clone()

        with torch.inference_mode():
            full = model.run_with_hooks(tokens, attention_mask=mask, return_type="logits",
                                        fwd_hooks=[(hook_name("resid_pre", layer), grab)])
            resumed = forward_from_layer(model, got["resid"], layer, tokens=tokens,
                                         attention_mask=mask, return_type="logits")
            again = model(tokens, attention_mask=mask, return_type="logits")  # nothing left over
        return bool(torch.equal(full, resumed) and torch.equal(full, again))
    except Exception:  # noqa: BLE001 - any failure means "cannot resume here"
        return False


def forward_from_layer(
    model: Any,
    resid: Float[torch.Tensor, "batch pos d_model"],
    start: int,
    *,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Int[torch.Tensor, "batch pos"],
    return_type: str | None = "logits",
) -> Any:
    """The forward pass from layer ``start`` on, with ``resid`` the residual entering it.

    ``HookedTransformer``: its own ``start_at_layer``. ``TransformerBridge`` (TransformerLens
    4): its ``start_at_layer`` (which still runs blocks ``0 .. start-1`` and discards their
    output) with those blocks made pass-throughs for the call, so they cost nothing and their
    hooks do not fire, as on ``HookedTransformer``; a left-padded mask gets the mask-derived
    positions the bridge gives token inputs. Only call it where :func:`can_start_at_layer` is True.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        resid: the residual stream entering block ``start``.
        start: the first block to run.
        tokens: the batch's token ids (positions and masks are built from them).
        attention_mask: 1 on the tokens the model may attend to.
        return_type: as the model's forward (``"logits"`` or ``None``).

    Returns:
        What ``model(...)`` returns for ``return_type``.

    >>> logits = forward_from_layer(model, resid, 2, tokens=tokens, attention_mask=mask)  # doctest: +SKIP
    """
    if backend_name(model) != "bridge":
        return model(resid, start_at_layer=start, tokens=tokens, attention_mask=attention_mask,
                     return_type=return_type)
    kwargs: dict[str, Any] = {}
    mask = attention_mask.long()
    derived = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    arange = torch.arange(mask.shape[1], device=mask.device).expand_as(derived)
    moved = ((derived != arange) & (mask != 0)).any(-1, keepdim=True)
    if bool(moved.any()):  # left padding: the bridge's mask-derived positions, row by row
        kwargs["position_ids"] = torch.where(moved, derived, arange)
    with _pass_through(list(model.blocks)[:start]):
        return model(resid, start_at_layer=start, attention_mask=attention_mask,
                     return_type=return_type, **kwargs)


def _hidden_states(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _pass_through(blocks: list[Any]) -> Any:
    """Make ``blocks`` return their input unchanged (an instance ``forward``) for the duration."""
    patched = [b for b in blocks if "forward" not in vars(b)]
    try:
        for block in patched:  # object's setattr: the bridge's would pass it to the HF module
            object.__setattr__(block, "forward", _hidden_states)
        yield
    finally:
        for block in patched:
            vars(block).pop("forward", None)


def require_pattern_hooks(model: Any) -> None:
    """Raise a clear error unless ``model`` exposes ``blocks.{l}.attn.hook_pattern`` for every layer.

    >>> require_pattern_hooks(object())
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: object is not a TransformerLens model (it needs .cfg, .hook_dict and run_with_hooks); load it with tl_spec.load_model or TransformerLens.
    """
    cfg = getattr(model, "cfg", None)
    hook_dict = getattr(model, "hook_dict", None)
    if cfg is None or hook_dict is None or not hasattr(model, "run_with_hooks"):
        raise TLSpecError(
            f"{type(model).__name__} is not a TransformerLens model (it needs .cfg, .hook_dict and "
            "run_with_hooks); load it with tl_spec.load_model or TransformerLens."
        )
    names = (hook_name("pattern", layer) for layer in range(int(cfg.n_layers)))
    missing = [name for name in names if name not in hook_dict]
    if missing:
        raise TLSpecError(
            f"the model has no attention-pattern hook {missing[0]} ({len(missing)} layers lack "
            "one), so patterns cannot be captured; TransformerBridge needs eager attention "
            "(boot_transformers sets it) and HookedTransformer always has these hooks."
        )


def _hf_config(model: Any) -> Any:
    original = getattr(model, "original_model", None)
    return getattr(original, "config", None)


def layer_windows(model: Any) -> tuple[int | None, ...]:
    """Per-layer sliding-window size (``None`` = global attention), from TL's or HF's config.

    Semantics as in Hugging Face: a query at q attends to keys k with 0 <= q - k < window.
    """
    cfg = model.cfg
    n_layers = int(cfg.n_layers)
    hf = _hf_config(model)
    if hf is not None:
        window = getattr(hf, "sliding_window", None)
        types = getattr(hf, "layer_types", None)
        if getattr(hf, "use_sliding_window", True) is False or not window:
            return (None,) * n_layers
        if types is not None:
            return tuple(window if t == "sliding_attention" else None for t in types[:n_layers])
        return (int(window),) * n_layers
    window = getattr(cfg, "window_size", None)
    if not getattr(cfg, "use_local_attn", False) or not window:
        return (None,) * n_layers
    types = getattr(cfg, "attn_types", None) or ["local"] * n_layers
    return tuple(int(window) if t == "local" else None for t in types[:n_layers])


@dataclass(frozen=True)
class ModelFacts:
    """Architecture facts the analyses need (see :func:`describe`)."""

    backend: str
    model: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    kv_ratio: float
    attention: str
    d_head: int
    d_model: int
    windows: tuple[int | None, ...]
    seq_len: int | None
    window_binds: bool | None
    rho_eff: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    def table(self) -> str:
        """Human-readable one fact per line."""
        width = max(len(k) for k in self.to_dict())
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.to_dict().items())


def describe(model: Any, seq_len: int | None = None) -> ModelFacts:
    """Layers, heads, KV sharing (MHA/GQA/MQA), windows and rho_eff = KV ratio x n_heads / d_head.

    ``window_binds`` says whether any window is shorter than ``seq_len`` (``None`` without it).

    >>> describe(model, seq_len=128).rho_eff  # doctest: +SKIP
    1.0
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "n_layers"):
        raise TLSpecError(
            f"{type(model).__name__} has no TransformerLens cfg with n_layers; pass a "
            "HookedTransformer or TransformerBridge (tl_spec.load_model returns one)."
        )
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    d_head = int(cfg.d_head)
    ratio = n_heads / n_kv
    attention = "MHA" if n_kv == n_heads else ("MQA" if n_kv == 1 else "GQA")
    windows = layer_windows(model)
    binds = None
    if seq_len is not None:
        binds = any(w is not None and w < seq_len for w in windows)
    return ModelFacts(
        backend=backend_name(model),
        model=model_id(model),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        kv_ratio=ratio,
        attention=attention,
        d_head=d_head,
        d_model=int(cfg.d_model),
        windows=windows,
        seq_len=seq_len,
        window_binds=binds,
        rho_eff=ratio * n_heads / d_head,
    )
