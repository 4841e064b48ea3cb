"""Reading result files back: :func:`load_result` knows every result kind tl_spec writes.

This module sits above the experiments and the audit (it imports them, so every kind is
registered); the result protocol itself lives in :mod:`tl_spec.records`.

>>> load_result("si.json").per_layer  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import tl_spec.audit.report  # noqa: F401  (defines, and so registers, the claims_audit kind)
import tl_spec.experiments  # noqa: F401  (defines, and so registers, every other result kind)
from tl_spec.errors import TLSpecError
from tl_spec.records import (
    SCHEMA_VERSION,
    Result,
    array,
    atomic_write_bytes,
    atomic_write_text,
    jsonable,
    provenance,
    read_record,
    registry,
    validate_record,
)

__all__ = ["SCHEMA_VERSION", "Result", "array", "atomic_write_bytes", "atomic_write_text",
           "jsonable", "load_result", "provenance", "validate_record"]


def load_result(path: str | os.PathLike[str]) -> Any:
    """Read a result file written by tl_spec, validate it, and rebuild its object.

    >>> load_result("si.json").per_layer  # doctest: +SKIP
    """
    record = read_record(path)
    kinds = registry()
    if record["kind"] not in kinds:
        raise TLSpecError(f"{path}: unknown result kind {record['kind']!r}; this tl_spec reads "
                          f"{', '.join(sorted(kinds))}")
    result = kinds[record["kind"]].from_dict(record)
    result.check_shapes(str(path))
    return result
