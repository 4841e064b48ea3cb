"""Checkpoint directories and hub names, checked before anything loads (no torch import).

What :func:`tl_spec.models.load_model` and the ``tl-spec`` command check first: a local
directory's config, weight files, shards and safetensors headers; whether a hub name can be had
(in the Hugging Face cache, or with the hub reachable); and the TransformerLens config fixes for
hub names. Every problem is a :class:`~tl_spec.errors.TLSpecError` naming the path or name and
how to fix it.

>>> import tempfile
>>> check_local_dir(Path(tempfile.mkdtemp()))
Traceback (most recent call last):
...
tl_spec.errors.TLSpecError: ...
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
import re
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["HUB_NAME", "TOKENIZER_FILES", "check_hub_name", "check_local_dir", "fix_tl_config", "has_tokenizer", "hub_offline",
           "hub_problem", "hub_reachable", "is_local", "load_failed", "placeholder_tokenizer",
           "tl_hub_config_fixes"]


def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
#: Files any one of which lets transformers build the checkpoint's tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "tokenizer.tiktoken")
_SAVE_HINT = ("rewrite the directory with save_pretrained (model and tokenizer), or copy it "
              "again from where it came from")


def check_local_dir(path: Path) -> None:
    """Cheap checks of a checkpoint directory before anything loads: config and weight files.

    ``config.json`` must be a JSON object with a ``model_type``; the weights must be there (a
    single file or an index and all its shards) and every safetensors file whole (its header's
    last offset must match the file size).
    """
    config_file = path / "config.json"
    if not config_file.exists():
        raise TLSpecError(
            f"{path} is a directory but has no config.json, so it is not a Hugging Face "
            "checkpoint; point at the directory written by save_pretrained (config, weights and "
            "tokenizer together)."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TLSpecError(f"{config_file} is not valid JSON ({exc}); {_SAVE_HINT}.") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise TLSpecError(
            f"{config_file} has no \"model_type\" entry, so transformers cannot tell the "
            f"architecture (e.g. \"llama\", \"gpt2\"); add it or {_SAVE_HINT}."
        )
    found = [name for name in _WEIGHT_FILES if (path / name).exists()]
    if not found:
        raise TLSpecError(
            f"{path} holds no weights (none of {', '.join(_WEIGHT_FILES)}); {_SAVE_HINT}."
        )
    for name in found:
        if name.endswith(".index.json"):
            _check_index(path / name)
        elif name.endswith(".safetensors"):
            _check_safetensors(path / name)


def _check_index(index_file: Path) -> None:
    try:
        shards = set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise TLSpecError(f"the weight index {index_file} is damaged ({exc}); {_SAVE_HINT}.") from exc
    missing = sorted(s for s in shards if not (index_file.parent / s).exists())
    if missing:
        raise TLSpecError(
            f"{index_file.parent} lacks {len(missing)} weight shard(s) its index lists "
            f"({', '.join(missing[:3])}); the copy is incomplete: {_SAVE_HINT}."
        )
    for shard in sorted(shards):
        if shard.endswith(".safetensors"):
            _check_safetensors(index_file.parent / shard)


def _check_safetensors(file: Path) -> None:
    """Raise unless ``file``'s size is exactly what its safetensors header says (not truncated)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            n_header = int.from_bytes(fh.read(8), "little")
            if size < 8 or n_header > size - 8:
                raise ValueError("the header is cut off")
            header = json.loads(fh.read(n_header))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise TLSpecError(
            f"the weight file {file} is damaged ({exc}); {_SAVE_HINT}."
        ) from exc
    if 8 + n_header + end != size:
        raise TLSpecError(
            f"the weight file {file} has {size} bytes but its header describes "
            f"{8 + n_header + end}: it is truncated or damaged (an interrupted copy or download?); "
            f"{_SAVE_HINT}."
        )


def has_tokenizer(path: Path) -> bool:
    return any((path / name).exists() for name in TOKENIZER_FILES)


def placeholder_tokenizer() -> Any:
    """A one-word tokenizer to boot a checkpoint that has none (removed after loading)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))


#: What a hub model id looks like: ``name`` or ``org/name``.
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_problem(name: str, why: str) -> TLSpecError:
    return TLSpecError(
        f"cannot load {name!r}: it is not a local directory, not a zoo model, and {why}. Use one "
        "of: (1) a local "
        "checkpoint directory (config.json, weights and tokenizer, as save_pretrained writes "
        "them); (2) a zoo model name from `tl-spec zoo list` (tl_spec.zoo.load(name) in "
        "Python); (3) a hub name that is reachable (network on, HF_HUB_OFFLINE unset) or already "
        "in the Hugging Face cache (HF_HOME / HF_HUB_CACHE)."
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub's endpoint (no retries); behind a proxy, assume yes."""
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if url.scheme in getproxies() or "all" in getproxies():  # the loader goes through the proxy
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_hub_name(names: list[str]) -> bool:
    """Fail fast if no name in ``names`` can be had; return whether to load from the cache only.

    Offline (``HF_HUB_OFFLINE``) or with the hub unreachable, a name must be in the Hugging Face
    cache; a reachable hub is left to the loader.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    bad = [n for n in names if not HUB_NAME.fullmatch(n)]
    if len(bad) == len(names):
        raise hub_problem(names[0], "it is not a valid hub name either ('name' or 'org/name')")

    def cached() -> bool:
        return any(isinstance(try_to_load_from_cache(n, "config.json"), str) for n in names)

    if constants.is_offline_mode():
        if not cached():
            raise hub_problem(names[0], "HF_HUB_OFFLINE is set while the Hugging Face cache "
                               f"({constants.HF_HUB_CACHE}) holds no copy of it")
        return False
    if hub_reachable():
        return False
    if not cached():
        raise hub_problem(names[0], f"the Hugging Face hub ({constants.ENDPOINT}) cannot be "
                           f"reached while its cache ({constants.HF_HUB_CACHE}) holds no copy of it")
    return True


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Any:
    """Make huggingface_hub read only its cache (as HF_HUB_OFFLINE=1 would), then restore."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def fix_tl_config(config: dict[str, Any]) -> dict[str, Any]:
    """What TransformerLens 3's config converter needs that transformers 5 configs dropped."""
    if config.get("model_type") == "gpt2":  # transformers 5 dropped the n_ctx alias TL reads
        config.setdefault("n_ctx", config.get("n_positions", 1024))
    return config


@contextlib.contextmanager
def tl_hub_config_fixes() -> Any:
    """During a hub load, hand TransformerLens' config converter configs with :func:`fix_tl_config`."""
    import transformer_lens.loading_from_pretrained as loading

    original = loading.AutoConfig

    class _FixedAutoConfig:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            config = original.from_pretrained(*args, **kwargs)
            for key, value in fix_tl_config(config.to_dict()).items():
                if key == "n_ctx" and getattr(config, key, None) is None:
                    setattr(config, key, value)
            return config

    loading.AutoConfig = _FixedAutoConfig
    try:
        yield
    finally:
        loading.AutoConfig = original


def load_failed(name: str, local: bool, backend: str, exc: Exception) -> TLSpecError:
    what = f"the checkpoint directory {name}" if local else f"the hub model {name!r}"
    other = "hooked" if backend == "bridge" else "bridge"
    fix = (f"if the directory is incomplete or damaged, {_SAVE_HINT}; if it is whole, this "
           f"backend may not support its architecture: try backend={other!r}" if local else
           "check the name (as on huggingface.co), your access to it, and that the network or "
           "the Hugging Face cache holds it; or use a local directory or a zoo name "
           "(`tl-spec zoo list`)")
    return TLSpecError(
        f"{what} could not be loaded with backend={backend!r} ({type(exc).__name__}: "
        f"{str(exc).strip()[:400]}); {fix}."
    )
