"""Studies across many models: a declarative spec, a resumable runner, one collected table.

A study file names models (and twin pairs), experiments with their options, seeds and prompt
sets; :func:`plan` expands it into cells, each stored under a key derived from everything that
affects its numbers; :func:`run_study` computes the missing cells (this process, a process pool,
Dask distributed or Ray); :func:`collect` merges the results into one tidy table, summaries and
a report.

>>> from tl_spec import study
>>> s = study.load_study("zoo.toml")                              # doctest: +SKIP
>>> print(study.plan(s).table())                                  # doctest: +SKIP
>>> summary = study.run_study(s, executor="local", workers=2)     # doctest: +SKIP
>>> table = study.collect(s).table                                # doctest: +SKIP
"""

from tl_spec.study.collect import Collected, collect
from tl_spec.study.kinds import KINDS
from tl_spec.study.plan import Cell, Plan, expand, plan
from tl_spec.study.runner import Progress, RunSummary, run_study
from tl_spec.study.spec import (
    ExperimentSpec,
    ModelSpec,
    Study,
    TwinSpec,
    load_study,
    study_from_dict,
)
from tl_spec.study.store import Store

__all__ = [
    "KINDS",
    "Cell",
    "Collected",
    "ExperimentSpec",
    "ModelSpec",
    "Plan",
    "Progress",
    "RunSummary",
    "Store",
    "Study",
    "TwinSpec",
    "collect",
    "expand",
    "load_study",
    "plan",
    "run_study",
    "study_from_dict",
]
