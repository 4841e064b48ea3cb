"""What every part of the claims audit shares: checks, flags, safe reading, the recomputations.

A :class:`Check` is one published number next to what the artifacts give, with a verdict
(``"reproduced"``, ``"differs"`` or ``"no artifact"``); a :class:`Flag` is a problem of the material
itself (identical per-seed values, ``data_verified: false``, a table contradicting its canonical
file, definitions that differ between files). The recomputations are closed forms:

>>> fit = ppl_slope([0.0, 0.1, 0.2], [1.0, 2.0, 3.0])
>>> round(fit.slope, 6), round(fit.r_squared, 6)
(10.0, 1.0)
>>> agg = seed_ratios([10.0, 20.0, 60.0], [1.0, 1.0, 2.0])
>>> agg.ratio_of_means, agg.median_of_ratios, agg.mean_of_ratios
(22.5, 20.0, 20.0)
>>> rho_eff(n_heads=32, n_kv_heads=8, d_head=128)          # Eq. 3 of the paper
1.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_spec.errors import TLSpecError

__all__ = [
    "VERDICTS",
    "Check",
    "Flag",
    "PaperFile",
    "SeedRatios",
    "SlopeFit",
    "check",
    "dicts",
    "dig",
    "load_paper_file",
    "num",
    "paper_rows",
    "pct_change",
    "ppl_slope",
    "rho_eff",
    "seed_ratios",
]

VERDICTS = ("reproduced", "differs", "no artifact")


@dataclass
class Check:
    """One published number (a table cell or a claim) against what the artifacts give."""

    source: str  # "Table 8", "claim A4", "E21", ...
    item: str  # row / column or claim name
    published: float | None
    published_text: str
    artifact: float | None
    artifact_text: str
    verdict: str  # one of VERDICTS
    cause: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float | None:
        """artifact - published, where both are numbers."""
        if self.published is None or self.artifact is None:
            return None
        return self.artifact - self.published

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (``diff`` included)."""
        return _finite({**asdict(self), "diff": self.diff})


@dataclass
class Flag:
    """A problem of the published material itself, found while auditing."""

    kind: str  # identical_seeds, data_verified_false, table_vs_canonical, definitions_differ, ...
    file: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


@dataclass
class PaperFile:
    """One input file: its parsed JSON (``doc``) or why it is no paper result (``problem``)."""

    name: str
    doc: Any = None
    problem: str | None = None
    family: str | None = None


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


@cache
def _table_data() -> tuple[dict[str, Any], ...]:
    text = resources.files("tl_spec").joinpath("data/paper4_tables.json").read_text("utf-8")
    return tuple(json.loads(text)["rows"])


def paper_rows(table: str) -> list[dict[str, Any]]:
    """The published numbers of one table of the paper (``tl_spec/data/paper4_tables.json``).

    >>> [(r["row"], r["value"]) for r in paper_rows("7")][:2]
    [('Phi-1.5', 0.318), ('Phi-2', 0.344)]
    """
    return [dict(r) for r in _table_data() if r["table"] == table]


def num(x: Any) -> float | None:
    """``x`` as a finite float, else ``None`` (booleans, strings and NaN are not numbers).

    >>> num(3), num("3"), num(float("nan")), num(True)
    (3.0, None, None, None)
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def dig(node: Any, *keys: str) -> Any:
    """``node[k1][k2]...`` through dicts only; ``None`` as soon as a step is missing or no dict.

    >>> dig({"a": {"b": 1}}, "a", "b"), dig({"a": "x"}, "a", "b")
    (1, None)
    """
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def dicts(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every dict in a parsed JSON tree, with its path.

    >>> [p for p, _ in dicts({"a": [{"b": 1}]})]
    ['', '/a[0]']
    """
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from dicts(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from dicts(v, f"{path}[{i}]")


FAMILIES = (("E-ISO", "eiso"), ("E04", "e04"), ("E06", "e06"), ("E08", "e08"), ("E11", "e11"),
            ("E21", "e21"), ("E22", "e21"))


def _family(name: str, doc: Any) -> str | None:
    for prefix, family in FAMILIES:
        if name.startswith(prefix):
            return family
    tag = ""
    if isinstance(doc, dict):
        tag = str(doc.get("experiment") or doc.get("experiment_id") or "")
    elif isinstance(doc, list) and doc and isinstance(doc[0], dict):
        tag = str(doc[0].get("experiment") or "")
    for prefix, family in FAMILIES:
        if tag.replace("_", "-").startswith(prefix):
            return family
    return None


def load_paper_file(path: str | Path) -> PaperFile:
    """Read one file without raising on its content: JSON of a known result family, or a reason.

    A missing path raises :class:`TLSpecError` (that is a wrong argument, not a wrong file).

    >>> load_paper_file("no/such.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tl_spec.errors.TLSpecError: result file 'no/such.json' does not exist ...
    """
    path = Path(path)
    if not path.is_file():
        raise TLSpecError(f"result file {str(path)!r} does not exist (or is not a file); "
                          "pass result files of the paper's reproduction package.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TLSpecError(f"cannot read result file {str(path)!r}: {exc}") from exc
    if not raw.strip():
        return PaperFile(path.name, problem="not a paper result: the file is empty")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return PaperFile(path.name, problem=f"not a paper result: not JSON ({exc})")
    family = _family(path.name, doc)
    if family is None:
        return PaperFile(path.name, doc, "not a paper result: no E04/E06/E08/E11/E21/E22/E-ISO "
                         "experiment in its name or its 'experiment' field")
    return PaperFile(path.name, doc, None, family)


@dataclass
class SlopeFit:
    """Least-squares line of PPL against sigma (``scipy.stats.linregress``)."""

    slope: float
    intercept: float
    r_squared: float
    p_value: float
    n: int


def ppl_slope(sigmas: Float[np.ndarray, "n"] | Sequence[float],
              ppl: Float[np.ndarray, "n"] | Sequence[float]) -> SlopeFit:
    """Slope of PPL versus noise sigma, as the paper computes it (``linregress``), with r^2.

    >>> round(ppl_slope([0, 1, 2, 3], [0.0, 2.0, 2.0, 4.0]).r_squared, 4)
    0.9
    """
    from scipy.stats import linregress

    x, y = np.asarray(sigmas, dtype=np.float64), np.asarray(ppl, dtype=np.float64)
    if x.shape != y.shape or x.size < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise TLSpecError(f"a PPL-vs-sigma curve needs >= 3 finite (sigma, PPL) pairs of equal "
                          f"length; got {x.size} sigmas and {y.size} values")
    fit = linregress(x, y)
    return SlopeFit(float(fit.slope), float(fit.intercept), float(fit.rvalue) ** 2,
                    float(fit.pvalue), int(x.size))


@dataclass
class SeedRatios:
    """A GQA/MHA ratio over seeds, aggregated the three ways the paper names (Appendix B)."""

    per_seed: list[float]
    ratio_of_means: float
    median_of_ratios: float
    mean_of_ratios: float


def seed_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> SeedRatios:
    """Per-seed ratios and their aggregation: ratio of means, median of ratios, mean of ratios.

    >>> seed_ratios([4.0], [2.0]).per_seed
    [2.0]
    """
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.size == 0 or (b == 0).any():
        raise TLSpecError("seed ratios need paired, non-empty values with non-zero denominators")
    r = a / b
    return SeedRatios([float(v) for v in r], float(a.mean() / b.mean()), float(np.median(r)),
                      float(r.mean()))


def rho_eff(n_heads: int, n_kv_heads: int, d_head: int) -> float:
    """Effective crowding, the paper's Eq. 3: (n_heads / n_kv_heads) x n_heads / d_head.

    >>> rho_eff(28, 4, 128)      # Qwen2-7B
    1.53125
    """
    if min(n_heads, n_kv_heads, d_head) <= 0:
        raise TLSpecError(f"rho_eff needs positive head counts and d_head; got n_heads={n_heads}, "
                          f"n_kv_heads={n_kv_heads}, d_head={d_head}")
    return (n_heads / n_kv_heads) * n_heads / d_head


def pct_change(new: float, old: float) -> float:
    """Relative change in % (the paper's Eq. 2 and probe response).

    >>> pct_change(1.1, 1.0)
    10.000000000000009
    """
    return (new - old) / old * 100.0


def check(source: str, item: str, published: float | None, published_text: str,
          artifact: float | None, artifact_text: str, *, tol: float | None = None,
          cause: str = "", files: Sequence[str] = (), note: str = "") -> Check:
    """A :class:`Check` whose verdict follows from the numbers: no artifact when ``artifact`` is
    None, reproduced when ``|artifact - published| <= tol``, else differs.

    Args:
        source: where the published number is ("Table 7", "claim A4").
        item: the row / column or claim.
        published: the published number (None if not numeric).
        published_text: the published number as printed.
        artifact: what the artifacts give (None: no artifact).
        artifact_text: how the artifact number was obtained.
        tol: largest difference that counts as reproduced (default: the published rounding).
        cause: the likely cause of a difference, or what is missing.
        files: the files the artifact number comes from.
        note: kept whatever the verdict (``cause`` is kept only when the verdict is not
            "reproduced").

    Returns:
        The check.

    >>> check("Table 7", "Phi-2 SI", 0.344, "0.344", 0.34, "index", tol=0.005).verdict
    'reproduced'
    """
    if artifact is None:
        verdict = "no artifact"
    elif published is None:
        verdict = "differs"
    else:
        verdict = "reproduced" if abs(artifact - published) <= (tol if tol is not None else 0.0) \
            else "differs"
    why = "; ".join(x for x in (cause if verdict != "reproduced" else "", note) if x)
    return Check(source, item, published, published_text, artifact, artifact_text, verdict, why,
                 list(files))
