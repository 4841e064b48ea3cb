"""Cell keys: SHA-256 of everything that affects a cell's numbers, and nothing else.

A key covers the experiment kind, its options with the function's defaults filled in, each
model's identity (the SHA-256 of its weights, config and tokenizer files -- never its path or
name), the load settings (backend, dtype, device), the prompts' SHA-256, the seed, and the
versions of tl_spec, torch, TransformerLens, transformers, numpy and scipy. So a cell is never
computed twice, renaming a model or moving a checkpoint reruns nothing, and changing one option
reruns only the cells it reaches.

>>> canonical({"b": 1.0, "a": [0.05, 2]})
'{"a":[0.05,2],"b":1}'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tl_spec.study.spec import ModelSpec

__all__ = ["KEY_VERSION", "IdentityCache", "canonical", "cell_key", "model_identity",
           "number_versions"]

KEY_VERSION = 1
# files of a checkpoint that change its numbers (weights, config, tokenizer)
_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json", "tokenizer*.json",
             "*.model", "vocab.*", "merges.txt", "special_tokens_map.json", "chat_template.*")


def _plain(value: Any) -> Any:
    """Integral floats become ints (0.0 and 0 are the same option), tuples lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, integral floats as ints."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def number_versions() -> dict[str, str]:
    """Versions of the packages that affect the numbers (tl_spec's provenance list, less Python)."""
    from tl_spec.records import versions

    return {k: v for k, v in versions().items() if k != "python"}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class IdentityCache:
    """File hashes remembered by (path, size, mtime), optionally persisted as a JSON file.

    Hashing a large checkpoint takes a while once; later plans and runs reuse the hash until the
    file changes.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, str] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, file: Path) -> str:
        st = file.stat()
        tag = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if tag not in self.entries:
            self.entries[tag] = _sha256_file(file)
            self.dirty = True
        return self.entries[tag]

    def save(self) -> None:
        """Write the cache (atomically) if it learned something and has a path."""
        if self.path and self.dirty:
            from tl_spec.fileio import atomic_write_text

            atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
            self.dirty = False


def _dir_files(root: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in _PATTERNS:
        files.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(files)


def model_identity(spec: ModelSpec, cache: IdentityCache | None = None) -> dict[str, Any]:
    """What the numbers of ``spec`` depend on: file hashes (or the hub name) and load settings.

    A local path that does not exist gets an identity too (``missing``), so the study still
    plans; its cells fail when they run and are recorded with the error.
    """
    cache = cache or IdentityCache()
    settings = {"backend": spec.backend, "dtype": spec.dtype or "float32", "device": spec.device}
    if spec.source == "hub":
        return {"hub": spec.path, **settings}
    if spec.source == "zoo":
        from tl_spec.errors import TLSpecError
        from tl_spec.zoo.registry import model_dir

        try:
            root = model_dir(spec.path[4:], verify=False)
        except TLSpecError:
            return {"zoo_not_built": spec.path, **settings}
    else:
        root = Path(spec.path)
    if not root.is_dir():
        return {"missing": str(root), **settings}
    files = {p.name: cache.sha256(p) for p in _dir_files(root)}
    return {"files": files, **settings}


def cell_key(kind: str, options: dict[str, Any], identities: list[dict[str, Any]],
             prompts_sha256: str, seed: int | None, versions: dict[str, str]) -> str:
    """The cell's key: the first 32 hex digits of the SHA-256 of its canonical description.

    >>> len(cell_key("si", {}, [{"hub": "gpt2"}], "ab", None, {"torch": "2"}))
    32
    """
    payload = {"key_version": KEY_VERSION, "experiment": kind, "options": options,
               "models": identities, "prompts": prompts_sha256, "seed": seed,
               "versions": versions}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:32]
