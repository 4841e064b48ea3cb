"""Result records: provenance, JSON Schema validation, atomic writes, and reading them back.

Every experiment returns a dataclass deriving from :class:`Result`. ``to_json(path)`` validates
the record against the JSON Schema shipped with the package (``tl_spec/data/result.schema.json``)
and writes it to a temporary file in the target directory that is renamed into place, so a
reader never sees a half-written file; :func:`load_result` validates again and rebuilds the
object. ``to_frame()`` gives a tidy pandas table.

>>> si.to_json("si.json"); load_result("si.json").value == si.value  # doctest: +SKIP
True
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
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = [
    "SCHEMA_VERSION",
    "Result",
    "array",
    "atomic_write_bytes",
    "atomic_write_text",
    "config_hash",
    "jsonable",
    "load_result",
    "provenance",
    "result_schema",
    "validate_record",
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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


def array(value: Any) -> np.ndarray | None:
    """Rebuild a numeric array from JSON (``None`` entries become NaN; ``None`` stays ``None``).

    >>> array([[1, None]])
    array([[ 1., nan]])
    """
    if value is None:
        return None
    return np.array(value, dtype=np.float64) if value != [] else np.zeros(0)


@cache
def result_schema() -> dict[str, Any]:
    """The JSON Schema of result files shipped with the package."""
    text = resources.files("tl_spec").joinpath("data/result.schema.json").read_text("utf-8")
    return json.loads(text)


def validate_record(record: Any, where: str = "result") -> None:
    """Check a record against :func:`result_schema`; the error names the place and the field."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from tl_spec.errors import TLSpecError

    if not isinstance(record, dict):
        raise TLSpecError(f"{where}: a result file holds a JSON object, found {type(record).__name__}")
    version = record.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise TLSpecError(
            f"{where}: written with result schema version {version}, but this tl_spec reads up to "
            f"version {SCHEMA_VERSION}; upgrade tl_spec to read it."
        )
    error = best_match(Draft202012Validator(result_schema()).iter_errors(record))
    if error is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise TLSpecError(
            f"{where}: field '{field.lstrip('.') or '(top level)'}' is invalid: {error.message}. "
            "The file does not match the tl_spec result schema (hand-edited or from another "
            "tool?); regenerate it with tl_spec."
        )


_REGISTRY: dict[str, type[Result]] = {}


class Result:
    """Mixin for experiment results: ``to_dict``, validated atomic ``to_json``, ``from_dict``.

    Subclasses set ``kind`` and ``decoders`` (field name -> function rebuilding the field from
    JSON, e.g. :func:`array`); they are registered so :func:`load_result` can rebuild them.
    """

    kind: ClassVar[str] = "result"
    decoders: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind != "result":
            _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version`` and ``kind``."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, **jsonable(body)}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 1) -> str:
        """Serialize (validated against the schema); with ``path``, also write it atomically."""
        record = self.to_dict()
        validate_record(record, f"{self.kind} result")
        text = json.dumps(record, indent=indent, allow_nan=False) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Any:
        """Rebuild the object from :meth:`to_dict` output (arrays and nested objects decoded)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: cls.decoders.get(k, _identity)(v) for k, v in record.items() if k in names}
        return cls(**values)


def _identity(value: Any) -> Any:
    return value


def load_result(path: str | os.PathLike[str]) -> Any:
    """Read a result file written by tl_spec, validate it, and rebuild its object.

    >>> load_result("si.json").per_layer  # doctest: +SKIP
    """
    from tl_spec.errors import TLSpecError

    import tl_spec.experiments  # noqa: F401  (registers every result kind)

    target = Path(path)
    if not target.is_file():
        raise TLSpecError(f"{target}: no such result file")
    text = target.read_text(encoding="utf-8")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TLSpecError(
            f"{target}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); the "
            "file is truncated or damaged: rerun the experiment that wrote it."
        ) from None
    validate_record(record, str(target))
    return _REGISTRY[record["kind"]].from_dict(record)
