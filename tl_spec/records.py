"""The result protocol: provenance, display, tables, JSON Schema validation and atomic writes.

Every experiment returns a dataclass deriving from :class:`Result`, and every result kind answers
the same calls:

- ``repr(r)``: one line (kind, model(s), headline numbers, shape);
- ``r._repr_html_()``: what Jupyter shows, a compact table of the headline numbers and, for
  per-head results, a static layers x heads heat table (never an array dump);
- ``r.summary()``: printed text (``r.table()`` is the same);
- ``r.to_frame()``: a tidy ``pandas.DataFrame``, one row per layer / head / condition;
- ``r.to_dict()`` / ``r.to_json(path)``: the record, validated against the JSON Schema shipped
  with the package and written atomically; :func:`tl_spec.load_result` reads it back.

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
import re
import sys
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tl_spec.display import one_line, result_html, short_name
from tl_spec.errors import TLSpecError
from tl_spec.fileio import atomic_write_bytes, atomic_write_text
from tl_spec.models import backend_name, model_id

__all__ = [
    "SCHEMA_VERSION",
    "Result",
    "array",
    "atomic_write_bytes",
    "check_values",
    "atomic_write_text",
    "config_hash",
    "jsonable",
    "provenance",
    "read_record",
    "registry",
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
_DIMS = re.compile(r"""["']([^"']+)["']""")  # the dimension names of a jaxtyping annotation


def registry() -> dict[str, type[Result]]:
    """Every result kind defined so far: ``{kind: class}`` (import the experiments to fill it)."""
    return dict(_REGISTRY)


class Result:
    """Base of every experiment result: the protocol described in the module docstring.

    Subclasses are dataclasses declared with ``@dataclass(repr=False)`` that set ``kind`` and
    ``decoders`` (field name -> function rebuilding the field from JSON, e.g. :func:`array`) and
    implement :meth:`headline`, :meth:`summary` and :meth:`to_frame`; they may refine
    :meth:`tags`, :meth:`shape`, :meth:`heat` and :meth:`model_names`. They are registered by
    ``kind`` so :func:`tl_spec.load_result` can rebuild them.
    """

    kind: ClassVar[str] = "result"
    decoders: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind != "result":
            _REGISTRY[cls.kind] = cls

    # -- what a result says about itself ------------------------------------------------------
    def headline(self) -> dict[str, Any]:
        """The headline numbers, ``{name: value}`` in reading order (values may be intervals)."""
        raise NotImplementedError(f"{type(self).__name__} does not define headline()")

    def model_names(self) -> list[str]:
        """Short names of the model(s) measured (the last part of a local path)."""
        prov = getattr(self, "provenance", None) or {}
        found = prov.get("models") or ([prov["model"]] if prov.get("model") else [])
        return [short_name(m) for m in found]

    def tags(self) -> list[str]:
        """Short words shown before the headline in ``repr`` (e.g. the SI method)."""
        method = getattr(self, "method", None)
        return [str(method)] if isinstance(method, str) else []

    def heat(self) -> tuple[str, np.ndarray, bool | None] | None:
        """``(caption, [layers, heads] values, diverging)`` for the HTML heat table, or ``None``."""
        return None

    def shape(self) -> str | None:
        """``"4x4 heads"`` for per-head results (from :meth:`heat`), else ``None``."""
        heat = self.heat()
        if heat is None:
            return None
        n_layers, n_heads = np.shape(heat[1])
        return f"{n_layers}x{n_heads} heads"

    # -- the protocol ------------------------------------------------------------------------
    def summary(self) -> str:
        """Printed text: the headline numbers, one per line."""
        lines = [f"{type(self).__name__}: {', '.join(self.model_names())}"]
        lines += [f"{k} = {v}" for k, v in self.headline().items()]
        return "\n".join(lines)

    def table(self) -> str:
        """The same text as :meth:`summary` (kept for code written against older versions)."""
        return self.summary()

    def to_frame(self) -> Any:
        """A tidy ``pandas.DataFrame``: one row per layer / head / condition."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_frame()")

    def __repr__(self) -> str:
        models = self.model_names()
        if len(models) > 3:
            models = models[:2] + [f"+{len(models) - 2} models"]
        return one_line(type(self).__name__, [*self.tags(), *models], self.headline(),
                        self.shape())

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        title = f"{type(self).__name__} · {', '.join(self.model_names()) or self.kind}"
        tags = self.tags()
        if tags:
            title += f" · {', '.join(tags)}"
        return result_html(title, self.headline(), self.heat())

    # -- records ------------------------------------------------------------------------------
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

    def check_shapes(self, where: str = "result") -> None:
        """Refuse arrays whose named dimensions disagree (e.g. a per-layer array shorter than the
        layers of the per-head one), read from the fields' jaxtyping annotations."""
        sizes: dict[str, tuple[int, str]] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            spec = _DIMS.search(str(f.type))
            if spec is None or not isinstance(value, np.ndarray):
                continue
            dims = spec.group(1).split()
            if "..." in dims or any(d.startswith("*") for d in dims):
                continue
            if value.ndim != len(dims):
                raise TLSpecError(f"{where}: field '{f.name}' has {value.ndim} dimensions, expected "
                                  f"{len(dims)} ({' '.join(dims)}); the file was edited or damaged")
            for dim, n in zip(dims, value.shape):
                if dim in sizes and sizes[dim][0] != n and not dim.isdigit():
                    size, other = sizes[dim]
                    raise TLSpecError(
                        f"{where}: field '{f.name}' has {n} along {dim}, but '{other}' has {size}; "
                        "the arrays of one result must agree (the file was edited or damaged)")
                sizes.setdefault(dim, (n, f.name))

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Any:
        """Rebuild the object from :meth:`to_dict` output (arrays and nested objects decoded)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: cls.decoders.get(k, _identity)(v) for k, v in record.items() if k in names}
        return cls(**values)


def _identity(value: Any) -> Any:
    return value


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a result file; the record as a dict (see :func:`tl_spec.load_result`)."""
    target = Path(path)
    if not target.is_file():
        raise TLSpecError(f"{target}: no such result file")
    text = target.read_text(encoding="utf-8")
    try:
        record = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise TLSpecError(
            f"{target}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); the "
            "file is truncated or damaged: rerun the experiment that wrote it."
        ) from None
    except ValueError as exc:
        raise TLSpecError(f"{target}: {exc}; tl_spec writes non-finite numbers as null, so the "
                          "file was written by another tool or edited: regenerate it") from None
    validate_record(record, str(target))
    check_values(record, str(target))
    return record


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the file holds {name}, which is not JSON")


def check_values(record: Any, where: str = "result") -> None:
    """Refuse what the schema cannot express: an interval with low > high, a negative count.

    >>> check_values({"interval": {"low": 2.0, "high": 1.0}}, "r.json")
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: r.json: interval at 'interval' has low 2.0 > high 1.0; the file was edited or damaged
    """
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            low, high = node.get("low"), node.get("high")
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) \
                    and low > high:
                raise TLSpecError(f"{where}: interval at '{path or '(top level)'}' has low {low} > "
                                  f"high {high}; the file was edited or damaged")
            for key, value in node.items():
                counted = key.startswith("n_") or key == "count" or key.endswith("_count")
                if counted and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and value < 0:
                    raise TLSpecError(f"{where}: count '{path + '.' if path else ''}{key}' is "
                                      f"{value}, below 0; the file was edited or damaged")
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(record, "")
