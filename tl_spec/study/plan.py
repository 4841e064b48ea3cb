"""Expanding a study into cells (experiment x models x prompt set x seed), each with its key.

>>> from tl_spec.study.spec import study_from_dict
>>> study = study_from_dict({"models": ["zoo:base-mha"], "seeds": [1, 2],
...                          "experiments": {"probe": {"n_resamples": 200}}})
>>> [c.label for c in expand(study)]
['probe base-mha standard10 seed=1', 'probe base-mha standard10 seed=2']
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tl_spec.study.keys import (
    IdentityCache,
    _plain,
    cell_key,
    model_identity,
    number_versions,
)
from tl_spec.study.kinds import KINDS
from tl_spec.study.spec import Study
from tl_spec.study.store import Store

__all__ = ["Cell", "Plan", "expand", "plan"]


@dataclass(frozen=True)
class Cell:
    """One unit of work: a kind on ``models`` with one prompt set, one seed and full options."""

    key: str
    experiment: str
    kind: str
    models: tuple[str, ...]
    prompts: str
    seed: int | None
    options: dict[str, Any]
    family: str | None = None

    @property
    def label(self) -> str:
        """Human-readable: ``"probe base-gqa standard10 seed=42"``."""
        models = "->".join(self.models) if self.kind == "delta" else "+".join(self.models)
        name = self.experiment
        if name != self.kind:
            name += f"({self.kind})"
        seed = "" if self.seed is None else f" seed={self.seed}"
        return f"{name} {models} {self.prompts}{seed}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (what a result's provenance records as ``study_cell``)."""
        out = asdict(self)
        out["models"] = list(self.models)
        return out


def expand(study: Study, *, cache: IdentityCache | None = None) -> list[Cell]:
    """Every cell of ``study`` in file order; cells with the same key are kept once."""
    cache = cache or IdentityCache()
    versions = number_versions()
    identities = {name: model_identity(spec, cache) for name, spec in study.models.items()}
    family = {(t.base, t.tuned): t.family for t in study.twins}
    cells: dict[str, Cell] = {}
    for exp in study.experiments:
        kind = KINDS[exp.kind]
        options = _plain({**kind.defaults(), **exp.options})
        for unit in exp.units:
            for pname in exp.prompts:
                sha = study.prompt_sets[pname].sha256
                for seed in exp.seeds:
                    key = cell_key(exp.kind, options, [identities[m] for m in unit], sha, seed,
                                   versions)
                    fam = family.get(unit) if exp.kind == "delta" else study.models[unit[0]].family
                    cells.setdefault(key, Cell(key, exp.name, exp.kind, unit, pname, seed,
                                               options, fam))
    return list(cells.values())


@dataclass
class Plan:
    """The cells of a study and what the store already holds for each.

    A cell's status: ``done`` (a sound result), ``failed`` (its last attempt failed),
    ``damaged`` (its result file is truncated, edited, or holds another cell's result: the reason
    is in ``damaged``; the next run recomputes it) or ``todo``.
    """

    study: Study
    cells: list[Cell]
    status: dict[str, str]
    failures: dict[str, dict[str, Any]]
    orphans: int = 0
    damaged: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def todo(self) -> list[Cell]:
        """Cells without a sound stored result (never run, failed, or damaged)."""
        return [c for c in self.cells if self.status[c.key] != "done"]

    def counts(self) -> dict[str, int]:
        """Cells per status (``done``, ``failed``, ``damaged``, ``todo``)."""
        out = {"done": 0, "failed": 0, "damaged": 0, "todo": 0}
        for c in self.cells:
            out[self.status[c.key]] += 1
        return out

    def table(self) -> str:
        """One line per cell: key prefix, status, label (and the error of a failed or damaged
        cell)."""
        n = self.counts()
        damaged = (f", {n['damaged']} damaged (recomputed by the next run)" if n["damaged"]
                   else "")
        lines = [(f"study {self.study.name}: {len(self.cells)} cells, {n['done']} done, "
                  f"{n['failed']} failed, {n['todo']} to run{damaged}  (store {self.study.store})")]
        if self.orphans:
            lines.append(f"({self.orphans} stored results belong to no cell of this study: "
                         "earlier options, models or versions; they are kept)")
        lines.append(f"{'key':<12}  {'status':<7}  cell")
        for c in self.cells:
            st = self.status[c.key]
            line = f"{c.key[:12]}  {st:<7}  {c.label}"
            if st == "failed":
                f = self.failures[c.key]
                line += f"  [{f.get('attempts', '?')} attempts: {f.get('error', '')[:100]}]"
            elif st == "damaged":
                line += f"  [{self.damaged[c.key]['reason'][:160]}]"
            lines.append(line)
        return "\n".join(lines)

    def to_json(self) -> str:
        """Machine-readable plan."""
        rows = [{**c.to_dict(), "status": self.status[c.key],
                 "error": (self.damaged[c.key]["reason"] if c.key in self.damaged
                           else self.failures.get(c.key, {}).get("error"))} for c in self.cells]
        return json.dumps({"study": self.study.name, "store": str(self.study.store),
                           "counts": self.counts(), "cells": rows}, indent=1) + "\n"


def plan(study: Study, *, cache: IdentityCache | None = None) -> Plan:
    """Expand ``study`` and look up each cell in its store (which is only read, never created).

    Each stored result is verified (its recorded key and content hash, see
    :meth:`Store.check <tl_spec.study.store.Store.check>`); a damaged or swapped one is
    ``damaged``.

    >>> print(plan(load_study("zoo.toml")).table())   # doctest: +SKIP
    """
    store = Store(study.store)
    cells = expand(study, cache=cache or store.identity_cache())
    status, failures, damaged = {}, {}, {}
    for c in cells:
        state, reason = store.check(c.key)
        if state == "ok":
            status[c.key] = "done"
        elif state in ("damaged", "swapped"):
            status[c.key], damaged[c.key] = "damaged", {"state": state, "reason": reason}
        elif (f := store.failure(c.key)) is not None:
            status[c.key], failures[c.key] = "failed", f
        else:
            status[c.key] = "todo"
    orphans = len(store.keys() - set(status))
    return Plan(study, cells, status, failures, orphans, damaged)
