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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from tl_spec.errors import TLSpecError, TLSpecWarning
from tl_spec import checkpoints
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
    "random_init_like",
    "tl_major",
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
    """Accept a floating-point torch dtype or its name ("bfloat16", "float32", ...).

    Integer, boolean and complex dtypes are refused: weights and activations must be real floats.

    >>> resolve_dtype("bf16")
    torch.bfloat16
    >>> resolve_dtype(torch.int32)
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: dtype torch.int32 is not a floating-point type; a model's weights and activations need one of torch.float32, torch.float64, torch.bfloat16 or torch.float16 (or their names: 'float32', 'bf16', ...)
    """
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise TLSpecError(
                f"dtype {dtype} is not a floating-point type; a model's weights and activations "
                "need one of torch.float32, torch.float64, torch.bfloat16 or torch.float16 (or "
                "their names: 'float32', 'bf16', ...)"
            )
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise TLSpecError(
            f"unknown dtype {dtype!r}; use a torch dtype or one of {', '.join(sorted(_DTYPES))}"
        )
    return _DTYPES[key]


def tl_major() -> int:
    """The installed TransformerLens major version."""
    return _tl_major()


def _tl_major() -> int:
    return int(_tl_version().split(".")[0])


def _has_hooked() -> bool:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


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

    Problems are :class:`TLSpecError` before anything loads where a cheap check finds them: a
    local directory needs a JSON ``config.json`` with ``model_type`` and whole weight files (a
    directory without tokenizer files loads with ``model.tokenizer = None`` and a warning, for
    token-id inputs); a hub name must be reachable or in the Hugging Face cache (offline, with
    ``HF_HUB_OFFLINE=1`` or no network, the cache is used without retries).

    Args:
        name_or_path: a local Hugging Face checkpoint directory or a hub name (zoo models load
            with :func:`tl_spec.zoo.load`).
        backend: ``"auto"``, ``"bridge"`` or ``"hooked"``.
        dtype: a torch dtype or its name (``"float32"`` default, ``"bfloat16"``, ...); integer,
            boolean and complex dtypes are refused.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ...
        **kwargs: passed to the backend's loader.

    Returns:
        The loaded ``TransformerBridge`` or ``HookedTransformer``.

    >>> load_model("gpt2", backend="hooked", dtype="float32")  # doctest: +SKIP
    """
    name = os.fspath(name_or_path)
    dtype = resolve_dtype(dtype) or torch.float32
    if backend not in ("auto", "bridge", "hooked"):
        raise TLSpecError(f"unknown backend {backend!r}; use 'auto', 'bridge' or 'hooked'")
    local = checkpoints.is_local(name)
    if local:
        checkpoints.check_local_dir(Path(name).expanduser())
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
    tokenizer = True
    cache_only = False
    if local:
        for extension in checkpoint_extensions():
            record = extension.read(Path(name).expanduser())
            if record is not None:
                carried.append((extension, record))
        tokenizer = "tokenizer" in kwargs or checkpoints.has_tokenizer(Path(name).expanduser())
    else:
        names = [name]
        if backend == "hooked":
            names.append(_official_name(name))
        cache_only = checkpoints.check_hub_name(names)
    try:
        with _quiet_hf(), checkpoints.hub_offline(cache_only):
            if backend == "bridge":
                model = _load_bridge(name, dtype, device, kwargs, tokenizer=tokenizer)
            else:
                model = _load_hooked(name, local, dtype, device, kwargs, tokenizer=tokenizer)
    except TLSpecError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise checkpoints.load_failed(name, local, backend, exc) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise checkpoints.load_failed(name, local, backend, exc) from exc
    if not tokenizer:
        model.tokenizer = None
        warnings.warn(
            f"{name} has no tokenizer files ({', '.join(checkpoints.TOKENIZER_FILES)}): the model is loaded "
            "without one and takes token ids only (a [batch, pos] integer tensor or a list of "
            "1-D tensors); save the tokenizer into the directory to use text prompts.",
            TLSpecWarning,
            stacklevel=2,
        )
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


def _official_name(name: str) -> str:
    """TransformerLens' official hub name for ``name`` (``name`` itself if TL knows none)."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return str(get_official_model_name(name))
    except Exception:
        return name


def _is_official(name: str) -> bool:
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        get_official_model_name(name)
    except Exception:
        return False
    return True


def _load_bridge(name: str, dtype: torch.dtype, device: Any, kwargs: dict[str, Any], *,
                 tokenizer: bool = True) -> Any:
    """``TransformerBridge.boot_transformers``; without tokenizer files it boots on a placeholder
    tokenizer (the caller removes it)."""
    from transformer_lens.model_bridge import TransformerBridge

    if not tokenizer and kwargs.get("tokenizer") is None:
        kwargs = dict(kwargs, tokenizer=checkpoints.placeholder_tokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = TransformerBridge.boot_transformers(
                str(Path(name).expanduser()) if checkpoints.is_local(name) else name,
                device=device or "cpu",
                dtype=dtype,
                **kwargs,
            )
        except RuntimeError as exc:
            if "split_with_sizes" not in str(exc):
                raise
            raise TLSpecError(
                f"TransformerLens {_tl_version()}'s bridge cannot split the fused attention "
                f"weights of {name} ({exc}): a known TransformerLens limitation for grouped "
                "key/value heads in a fused QKV layout (e.g. Falcon's new decoder architecture "
                "with num_kv_heads < num_attention_heads). The alternative is backend='hooked' "
                "on TransformerLens 3 where it supports the architecture (it has no Falcon "
                "support); otherwise use a checkpoint without grouped key/value heads."
            ) from exc
    model.eval()
    return model


def _load_hooked(
    name: str, local: bool, dtype: torch.dtype, device: Any, kwargs: dict[str, Any], *,
    tokenizer: bool = True,
) -> Any:
    from transformer_lens import HookedTransformer

    if not local:
        with checkpoints.tl_hub_config_fixes():
            return HookedTransformer.from_pretrained_no_processing(
                name, dtype=dtype, device=device, **kwargs
            ).eval()
    return _hooked_from_local(Path(name).expanduser(), dtype, device, kwargs, tokenizer=tokenizer)


def _hooked_from_local(path: Path, dtype: torch.dtype, device: Any, kwargs: dict[str, Any], *,
                       tokenizer: bool = True) -> Any:
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
        config = checkpoints.fix_tl_config(json.loads((path / "config.json").read_text()))
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
    tok = AutoTokenizer.from_pretrained(path) if tokenizer else checkpoints.placeholder_tokenizer()
    model = HookedTransformer(cfg, tok, move_to_device=False, **kwargs)
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
