"""Result records: provenance, JSON-ready conversion and atomic writes.

Every experiment returns a dataclass deriving from :class:`Result`; ``to_json(path)`` writes the
record (with :data:`SCHEMA_VERSION` and provenance) to a temporary file in the target directory
and renames it into place, so a reader never sees a half-written file.

>>> atomic_write_text("/tmp/tl_spec_example.json", "{}\\n")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SCHEMA_VERSION",
    "Result",
    "atomic_write_text",
    "config_hash",
    "jsonable",
    "provenance",
    "versions",
]

SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    """Convert numpy/torch values to JSON-safe Python; NaN and infinities become ``None``.

    >>> jsonable(np.array([1.0, np.nan]))
    [1.0, None]
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()] if value.ndim else jsonable(value.item())
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return value


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def versions() -> dict[str, str]:
    """Versions of the packages that affect the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tl_spec", "transformer-lens", "torch", "transformers", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def config_hash(model: Any) -> str:
    """SHA-256 (first 16 hex) of the model's TransformerLens config, to tell checkpoints apart."""
    cfg = getattr(model, "cfg", None)
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else getattr(cfg, "__dict__", {})
    text = json.dumps(jsonable({k: v for k, v in raw.items() if not k.startswith("_")}),
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(model: Any, **extra: Any) -> dict[str, Any]:
    """Who computed what, where: versions, backend, model id and config hash, dtype, device, time."""
    from tl_spec.models import backend_name, model_id

    try:
        param = next(model.parameters())
        dtype, device = str(param.dtype), str(param.device)
    except (StopIteration, AttributeError, TypeError):
        dtype = str(getattr(model.cfg, "dtype", "unknown"))
        device = str(getattr(model.cfg, "device", "unknown"))
    record = {
        "versions": versions(),
        "backend": backend_name(model),
        "model": model_id(model),
        "model_config_hash": config_hash(model),
        "dtype": dtype,
        "device": device,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    record.update(extra)
    return jsonable(record)


class Result:
    """Mixin for experiment results: ``to_dict`` and atomic ``to_json``."""

    kind: str = "result"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version`` and ``kind``."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, **jsonable(body)}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 1) -> str:
        """Serialize; when ``path`` is given, write it atomically as well."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text
