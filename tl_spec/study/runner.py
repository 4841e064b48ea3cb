"""Running a study: the cells without a stored result, grouped by model, on an executor.

Cells are grouped by the models they load and cut into tasks (whole groups when there are many
groups, smaller pieces when there are few, so every worker stays busy). Each stored result is
written atomically as soon as its cell finishes, so a run that is killed resumes where it
stopped: the next run computes only the cells without a sound result (a damaged one is
recomputed). A failing cell is retried ``retries`` times, recorded with its error in the store,
and never stops the other cells. Just before a task is submitted the run claims its cells in the
store (see :mod:`tl_spec.study.store`); cells another live run has claimed, or stored meanwhile,
are left to it, so concurrent runs on one store never compute a cell twice.

>>> summary = run_study(load_study("zoo.toml"), executor="local", workers=2)   # doctest: +SKIP
>>> summary.counts                                                             # doctest: +SKIP
{'done': 15, 'failed': 0, ...}
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.study.executors import (
    CrashedError,
    InProcessExecutor,
    check_executor,
    make_executor,
)
from tl_spec.study.keys import number_versions
from tl_spec.study.plan import Cell, plan
from tl_spec.study.spec import Study
from tl_spec.study.store import ACTIVE_RUNS, HEARTBEAT, Store

__all__ = ["Progress", "RunSummary", "make_tasks", "order_groups", "print_progress", "run_study"]


@dataclass
class Progress:
    """Where a run stands: cells done / running / failed / waiting, and an estimate of time left."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    elapsed: float = 0.0
    eta: float | None = None
    last: str = ""

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.failed - self.running

    def line(self) -> str:
        """``"7/15 done, 2 running, 1 failed, 5 waiting; 12 s elapsed, ~9 s left"``."""
        eta = "" if self.eta is None else f", ~{_fmt(self.eta)} left"
        return (f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed, "
                f"{self.waiting} waiting; {_fmt(self.elapsed)} elapsed{eta}")


def _fmt(seconds: float) -> str:
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


@dataclass
class RunSummary:
    """What a run did: counts, the failed cells with their errors, and timings."""

    run_id: str
    study: str
    store: str
    executor: str
    workers: int
    cells: int
    already_done: int
    executed: list[str]
    done: list[str]
    failed: dict[str, str]
    wall_seconds: float
    teardown_seconds: float
    cell_seconds: float
    load_seconds: float
    started: float = 0.0
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)
    elsewhere: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Cells of the study: ``done`` (now stored), ``failed``, ``ran`` this run, ``skipped``
        (stored before), ``elsewhere`` (left to another run that claimed or stored them)."""
        return {"done": self.already_done + len(self.done), "failed": len(self.failed),
                "ran": len(self.executed), "skipped": self.already_done,
                "elsewhere": len(self.elsewhere)}

    @property
    def speedup_ratio(self) -> float | None:
        """Wall time over the ideal (sum of cell times / workers); 1.0 is perfect."""
        if not self.cell_seconds:
            return None
        return self.wall_seconds / (self.cell_seconds / self.workers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        return {**asdict(self), "counts": self.counts, "speedup_ratio": self.speedup_ratio}

    def text(self) -> str:
        """A few lines for the terminal (and every failed cell's error)."""
        c = self.counts
        lines = [(f"study {self.study}: {c['done']}/{self.cells} cells stored, {c['failed']} "
                  f"failed; this run computed {len(self.done)} of {len(self.executed)} attempted "
                  f"({c['skipped']} already stored) with {self.executor} x {self.workers} in "
                  f"{self.wall_seconds:.1f} s (cells {self.cell_seconds:.1f} s, model loads "
                  f"{self.load_seconds:.1f} s); store {self.store}")]
        if self.elsewhere:
            lines.append(f"{len(self.elsewhere)} cells left to another run on this store "
                         "(claimed or stored by it)")
        for key, error in self.failed.items():
            lines.append(f"  failed {key[:12]}: {error}")
        return "\n".join(lines)


def make_tasks(cells: list[Cell], workers: int, chunk: int | None = None) -> list[list[Cell]]:
    """Cells grouped by their models, cut into tasks of at most ``chunk`` cells.

    The default chunk keeps about eight tasks per worker (at least one cell each), so load
    stays balanced while a model's cells still travel together.

    >>> from tl_spec.study.plan import Cell
    >>> cells = [Cell(str(i), "si", "si", (m,), "p", None, {}) for i, m in enumerate("aabbb")]
    >>> [[c.key for c in t] for t in make_tasks(cells, workers=1, chunk=2)]
    [['0', '1'], ['2', '3'], ['4']]
    """
    if chunk is None:
        chunk = max(1, math.ceil(len(cells) / (8 * workers)))
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.models, []).append(c)
    tasks = []
    for unit in order_groups(list(groups)):
        group = groups[unit]
        tasks.extend(group[i:i + chunk] for i in range(0, len(group), chunk))
    return tasks


def order_groups(units: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Model groups in an order where each shares as many models as possible with the last.

    Greedy: after a group, take one whose models are all among the last two used, else the one
    sharing most of them (ties by name), so a worker's model cache (two by default) keeps hitting.

    >>> order_groups([("a",), ("a", "b"), ("a", "c"), ("b",), ("c",)])
    [('a',), ('a', 'b'), ('b',), ('a', 'c'), ('c',)]
    """
    left, out, recent = sorted(units), [], []
    while left:
        cached = set(recent[-2:])
        best = max(left, key=lambda u: (set(u) <= cached, len(set(u) & cached), -left.index(u)))
        left.remove(best)
        out.append(best)
        recent = [m for m in recent if m not in best] + list(best)
    return out


def print_progress(p: Progress) -> None:
    """Progress on stderr: one line per change, or one updating line on a terminal."""
    tty = sys.stderr.isatty()
    end = "" if tty and p.waiting + p.running else "\n"
    print(("\r" if tty else "") + f"study: {p.line()}" + (f"  {p.last}" if p.last and not tty
                                                       else ""), end=end, file=sys.stderr)


def _task_payload(study: Study, cells: list[Cell], run_id: str, versions: dict[str, str],
                  threads: int | None, retry_delay: float, cache_size: int) -> dict[str, Any]:
    models = {m for c in cells for m in c.models}
    prompts = {c.prompts for c in cells}
    return {
        "task_id": uuid.uuid4().hex[:12], "run_id": run_id, "store": str(study.store),
        "cells": [c.to_dict() for c in cells],
        "models": {m: study.models[m].settings() for m in models},
        "prompts": {p: study.prompt_sets[p] for p in prompts},
        "retries": study.retries, "retry_delay": retry_delay, "threads": threads,
        "versions": versions, "cache_size": cache_size,
    }


class _Run:
    """The driver's bookkeeping of one run."""

    def __init__(self, store: Store, run_id: str, total: int,
                 on_progress: Callable[[Progress], None] | None, workers: int) -> None:
        self.store, self.run_id, self.workers = store, run_id, workers
        self.progress = Progress(total=total)
        self.on_progress = on_progress
        self.t0 = time.perf_counter()
        self.started = time.time()
        self.executed: list[str] = []
        self.done: list[str] = []
        self.failed: dict[str, str] = {}
        self.cell_seconds = self.load_seconds = 0.0
        self.per_worker: dict[str, dict[str, float]] = {}
        self.inflight: dict[Any, dict[str, Any]] = {}
        self.held: set[str] = set()  # cells this run has claimed
        self.elsewhere: dict[str, str] = {}

    def take(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """``task`` with only the cells this run could claim and that are still to compute."""
        mine = []
        for cell in task["cells"]:
            key = cell["key"]
            if not self.store.claim(key, self.run_id):
                info = self.store.holder(key) or {}
                self.leave(key, f"claimed by run {info.get('run')} ({info.get('host')}:"
                                f"{info.get('pid')})")
                continue
            self.held.add(key)
            if self.store.has_result(key):  # stored by another run before we claimed it
                self.release(key)
                self.leave(key, "stored by another run")
                continue
            mine.append(cell)
        if not mine:
            return None
        return {**task, "cells": mine}

    def leave(self, key: str, why: str) -> None:
        self.elsewhere[key] = why
        self.store.log(self.run_id, {"event": "elsewhere", "key": key, "why": why})
        self.progress.total -= 1
        self.emit()

    def release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            self.store.release(key, self.run_id)

    def emit(self, last: str = "") -> None:
        p = self.progress
        p.elapsed = time.perf_counter() - self.t0
        finished = p.done + p.failed
        sizes = [len(t["cells"]) for t in self.inflight.values()]  # dispatched, not all started
        p.running = min(p.total - finished, sum(sizes), self.workers * max(sizes, default=0))
        # wall time per finished cell so far (parallelism, loads and start-up included)
        p.eta = p.elapsed / finished * (p.total - finished) if finished else None
        p.last = last
        if self.on_progress:
            self.on_progress(p)

    def record(self, outcome: dict[str, Any], label: str) -> None:
        key = outcome["key"]
        self.executed.append(key)
        w = self.per_worker.setdefault(outcome.get("worker", "?"), {
            "cells": 0, "cell_seconds": 0.0, "loads": 0, "load_seconds": 0.0})
        w["cells"] += 1
        w["loads"] += outcome.get("loads", 0)
        w["load_seconds"] += outcome.get("load_seconds", 0.0)
        self.load_seconds += outcome.get("load_seconds", 0.0)
        if "t_start" in outcome:
            w["first_start"] = min(w.get("first_start", math.inf), outcome["t_start"])
            w["last_end"] = max(w.get("last_end", 0.0), outcome["t_end"])
        if outcome["status"] == "done":
            if not outcome.get("written"):
                self.store.write_result(key, outcome["text"])
                self.store.log(self.run_id, {"event": "done", "key": key, "via": "driver"})
            self.done.append(key)
            self.cell_seconds += outcome["seconds"]
            w["cell_seconds"] += outcome["seconds"]
            self.progress.done += 1
            self.emit(f"done {label}")
        else:
            if not outcome.get("written"):
                self.store.write_failure(key, outcome["record"])
            self.failed[key] = f"{outcome['error']} (after {outcome['attempts']} attempts)"
            self.progress.failed += 1
            self.emit(f"FAILED {label}: {outcome['error'][:200]}")
        self.release(key)

    def crashed(self, cells: list[dict[str, Any]], why: str, crashes: int) -> None:
        error = (f"{why}; the worker process died running this task (out of memory? a crash in "
                 "native code?)")
        for cell in cells:
            if self.store.has_result(cell["key"]):
                self.release(cell["key"])
                continue
            record = {"key": cell["key"], "cell": cell, "attempts": crashes, "error": error,
                      "traceback": "", "run": self.run_id, "time": time.time()}
            label = f"{cell['experiment']} {'+'.join(cell['models'])} seed={cell['seed']}"
            self.record({"key": cell["key"], "status": "failed", "error": error,
                         "attempts": crashes, "record": record, "written": False}, label)


def run_study(
    study: Study,
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int | None = None,
    address: str | None = None,
    gpus_per_task: float = 0.0,
    chunk: int | None = None,
    max_cells: int | None = None,
    retries: int | None = None,
    retry_delay: float = 0.5,
    cache_size: int = 2,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Compute every cell of ``study`` that has no sound stored result; return what happened.

    Damaged or swapped result files (see :func:`~tl_spec.study.plan.plan`) are recomputed and
    replaced; cells that another live run on the same store has claimed are left to it
    (``summary.elsewhere``).

    ``executor``: ``"local"`` (this process when ``workers == 1``, else a pool of spawned
    processes), ``"dask"`` (a ``LocalCluster`` of ``workers`` processes, or the scheduler at
    ``address``) or ``"ray"``. ``threads``: torch threads per worker (default: cores / workers).
    ``gpus_per_task``: the Dask resource ``GPU`` / Ray ``num_gpus`` each task requests.
    ``chunk``: cells per task (default: about eight tasks per worker). ``max_cells``: stop after
    that many cells (a budget; the rest wait for the next run). ``retries``: attempts after the
    first for a failing cell (default: the study's ``retries``, 2). ``cache_size``: models a
    worker keeps loaded.
    """
    check_executor(executor, workers, gpus_per_task, address)
    for name, value, low in (("chunk", chunk, 1), ("max_cells", max_cells, 0),
                             ("cache_size", cache_size, 1), ("retries", retries, 0)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise TLSpecError(f"{name} must be an integer >= {low}, got {value!r}")
    if not retry_delay >= 0:
        raise TLSpecError(f"retry_delay must be >= 0 seconds, got {retry_delay!r}")
    if retries is not None:
        study = dataclasses.replace(study, retries=retries)
    store = Store(study.store)
    cache = store.identity_cache()
    p = plan(study, cache=cache)
    todo = p.todo[:max_cells] if max_cells is not None else p.todo
    store.create(study.name)
    cache.save()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    ex = make_executor(executor, workers=workers, threads=threads, address=address,
                       gpus_per_task=gpus_per_task, cache_size=cache_size)
    versions = number_versions()
    labels = {c.key: c.label for c in todo}
    run = _Run(store, run_id, len(todo), on_progress, ex.workers)
    for key, damage in p.damaged.items():
        store.log(run_id, {"event": "damaged", "key": key, **damage})
    ACTIVE_RUNS.add(run_id)
    beating = threading.Event()
    heart = threading.Thread(target=_heartbeat, args=(run, beating), daemon=True)
    heart.start()
    try:
        wall = _drive(study, run, ex, todo, chunk, versions, retry_delay, cache_size, labels)
    finally:
        beating.set()
        for key in sorted(run.held):
            run.release(key)
        ACTIVE_RUNS.discard(run_id)
    summary = RunSummary(
        run_id=run_id, study=study.name, store=str(study.store), executor=executor,
        workers=ex.workers, cells=len(p.cells), already_done=len(p.cells) - len(p.todo),
        executed=run.executed, done=run.done, failed=run.failed,
        wall_seconds=wall, teardown_seconds=time.perf_counter() - run.t0 - wall,
        cell_seconds=run.cell_seconds,
        load_seconds=run.load_seconds, started=run.started, per_worker=run.per_worker,
        elsewhere=run.elsewhere)
    store.write_run(run_id, summary.to_dict())
    return summary


def _heartbeat(run: _Run, stop: threading.Event) -> None:
    """Touch the run's claims every HEARTBEAT seconds until ``stop`` is set."""
    while not stop.wait(HEARTBEAT):
        run.store.heartbeat(sorted(run.held))


def _drive(study: Study, run: _Run, ex: Any, todo: list[Cell], chunk: int | None,
           versions: dict[str, str], retry_delay: float, cache_size: int,
           labels: dict[str, str]) -> float:
    """Submit the tasks, record their outcomes; the wall time until the last result is stored."""
    crashes: dict[str, int] = {}
    isolate = 0  # after a pool crash, run the lost tasks one at a time to find the culprit
    run_id = run.run_id
    with ex:
        run.workers = ex.workers
        tasks = make_tasks(todo, ex.workers, 1 if isinstance(ex, InProcessExecutor) else chunk)
        queue = deque(_task_payload(study, t, run_id, versions, ex.threads, retry_delay,
                                    cache_size) for t in tasks)
        run.emit()
        while queue or run.inflight:
            while queue and len(run.inflight) < (1 if isolate else ex.window):
                task = run.take(queue.popleft())
                if task is not None:
                    run.inflight[ex.submit(task)] = task
            if not run.inflight:  # every cell left was claimed by another run
                continue
            for fut in ex.wait(list(run.inflight), timeout=1.0):
                task = run.inflight.pop(fut, None)
                if task is None:
                    continue
                isolate = max(0, isolate - 1)
                try:
                    outcomes = ex.outcome(fut)
                except CrashedError as exc:
                    lost = [task]
                    if ex.restarts_on_crash:  # a broken pool loses every task in flight
                        lost += list(run.inflight.values())
                        run.inflight.clear()
                        ex.restart()
                    if len(lost) == 1:
                        crashes[task["task_id"]] = crashes.get(task["task_id"], 0) + 1
                    else:
                        isolate += len(lost)
                    for t in reversed(lost):
                        n = crashes.get(t["task_id"], 0)
                        if n <= study.retries:
                            queue.appendleft(t)
                        else:
                            run.crashed(t["cells"], str(exc), n)
                    run.emit()
                    break
                for outcome in outcomes:
                    run.record(outcome, labels.get(outcome["key"], outcome["key"][:12]))
        wall = time.perf_counter() - run.t0  # every result stored; the engine's teardown follows
    return wall
