"""What runs on a worker: a task is a few cells that share models; each model loads once per worker.

:func:`run_task` is the only function executors ship. It needs nothing from the driver but
the task (plain data: cells, model settings, prompt sets, options), so it runs the same in
this process, in a process pool, on a Dask worker or in a Ray task. Loaded models stay in a
small per-process cache (least recently used out), so a worker that gets several tasks on the
same model loads it once. Each cell is retried up to ``retries`` times; an exception never
escapes: it becomes a failed outcome with its error and traceback.

>>> outcomes = run_task(task)            # doctest: +SKIP
>>> outcomes[0]["status"], outcomes[0]["seconds"]  # doctest: +SKIP
('done', 0.41)
"""

from __future__ import annotations

import gc
import os
import socket
import time
import traceback
import warnings
from collections import OrderedDict
from typing import Any

__all__ = ["ModelCache", "run_task"]


class ModelCache:
    """Loaded models by load settings; the least recently used goes when ``capacity`` is full."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = max(1, int(capacity))
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0

    def get(self, settings: dict[str, Any]) -> tuple[Any, float]:
        """The model for ``settings`` (path, backend, dtype, device) and seconds spent loading."""
        import json

        tag = json.dumps(settings, sort_keys=True)
        if tag in self.models:
            self.models.move_to_end(tag)
            return self.models[tag], 0.0
        while len(self.models) >= self.capacity:
            self.models.popitem(last=False)
            _free()
        t0 = time.perf_counter()
        model = _load(settings)
        self.loads += 1
        self.models[tag] = model
        return model, time.perf_counter() - t0

    def drop(self, settings: dict[str, Any]) -> None:
        """Forget one model (after a failure, so the retry loads it afresh)."""
        import json

        self.models.pop(json.dumps(settings, sort_keys=True), None)

    def clear(self) -> None:
        """Release every model."""
        self.models.clear()
        _free()


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001, S110 - freeing memory is best effort
        pass


def _load(settings: dict[str, Any]) -> Any:
    from tl_spec.models import load_model

    opts = {k: settings[k] for k in ("backend", "dtype", "device")}
    path = settings["path"]
    if path.startswith("zoo:"):
        from tl_spec.zoo.registry import model_dir

        path = str(model_dir(path[4:]))
    return load_model(path, **opts)


_PROCESS_CACHE: ModelCache | None = None


def process_cache(capacity: int = 2) -> ModelCache:
    """The model cache of this worker process (kept between tasks)."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None:
        _PROCESS_CACHE = ModelCache(capacity)
    _PROCESS_CACHE.capacity = max(1, int(capacity))
    return _PROCESS_CACHE


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads for this process (``None``: leave them)."""
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(int(threads))


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 2000 else text[:2000] + " ..."


def _run_cell(cell: dict[str, Any], task: dict[str, Any], cache: ModelCache, store: Any,
              visible: bool, worker: str) -> dict[str, Any]:
    from tl_spec.study.kinds import KINDS, run_kind

    run_id, key = task["run_id"], cell["key"]
    attempts, errors, load_s, loads = 0, [], 0.0, 0
    outcome: dict[str, Any] = {"key": key, "worker": worker, "status": "failed", "text": None,
                               "written": False}
    for attempt in range(1, int(task["retries"]) + 2):
        attempts = attempt
        if visible:
            store.log(run_id, {"event": "start", "key": key, "attempt": attempt, "worker": worker})
        specs = [task["models"][m] for m in cell["models"]]
        t_start = time.time()
        try:
            models = []
            for s in specs:
                before = cache.loads
                model, secs = cache.get(s)
                models.append(model)
                load_s += secs
                loads += cache.loads - before
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = run_kind(KINDS[cell["kind"]], models, task["prompts"][cell["prompts"]],
                                  cell["options"], cell["seed"])
            seconds = time.perf_counter() - t0
            result.provenance["study_cell"] = {
                **{k: cell[k] for k in ("key", "experiment", "kind", "models", "prompts", "seed",
                                        "family")},
                "attempts": attempt, "seconds": round(seconds, 6),
                "warnings": sorted({str(w.message)[:300] for w in caught}),
            }
            text = result.to_json()
        except Exception as exc:  # noqa: BLE001 - a failing cell must never stop the others
            errors.append({"attempt": attempt, "error": _error_text(exc),
                           "traceback": traceback.format_exc()[-4000:]})
            if visible:
                store.log(run_id, {"event": "error", "key": key, "attempt": attempt,
                                   "error": errors[-1]["error"]})
            for s in specs:
                cache.drop(s)
            if attempt <= int(task["retries"]):
                time.sleep(float(task.get("retry_delay", 0.0)) * attempt)
            continue
        if visible:
            store.write_result(key, text)
            store.log(run_id, {"event": "done", "key": key, "attempt": attempt,
                               "seconds": seconds})
        outcome.update(status="done", seconds=seconds, t_start=t_start, t_end=time.time(),
                       written=visible, text=None if visible else text)
        break
    outcome.update(attempts=attempts, load_seconds=load_s, loads=loads)
    if outcome["status"] == "failed":
        outcome.update(error=errors[-1]["error"], traceback=errors[-1]["traceback"],
                       errors=[e["error"] for e in errors])
        record = {"key": key, "cell": cell, "attempts": attempts, "error": errors[-1]["error"],
                  "traceback": errors[-1]["traceback"], "errors": [e["error"] for e in errors],
                  "worker": worker, "run": run_id, "time": time.time()}
        if visible:
            store.write_failure(key, record)
            outcome["written"] = True
        outcome["record"] = record
    return outcome


def run_task(task: dict[str, Any], cache: ModelCache | None = None) -> list[dict[str, Any]]:
    """Run the cells of ``task`` (grouped by model) and return one outcome per cell.

    Results go straight into the store when this process sees it (a local run, or a cluster
    with a shared file system); otherwise their text comes back in the outcome for the driver
    to write.
    """
    from tl_spec.study.keys import number_versions
    from tl_spec.study.store import Store

    set_threads(task.get("threads"))
    cache = cache or process_cache(task.get("cache_size", 2))
    store = Store(task["store"])
    visible = store.visible()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    mine = number_versions()
    if mine != task["versions"]:
        diff = {k: (task["versions"].get(k), v) for k, v in mine.items()
                if task["versions"].get(k) != v}
        error = (f"this worker's package versions differ from the driver's, which the cell keys "
                 f"were computed for: {diff} (driver, worker); install the same versions on "
                 "every worker")
        return [{"key": c["key"], "worker": worker, "status": "failed", "attempts": 1,
                 "error": error, "traceback": "", "errors": [error], "load_seconds": 0.0,
                 "written": False, "text": None,
                 "record": {"key": c["key"], "cell": c, "attempts": 1, "error": error,
                            "traceback": "", "worker": worker, "run": task["run_id"]}}
                for c in task["cells"]]
    outcomes = []
    for cell in task["cells"]:
        if visible and store.has_result(cell["key"]):  # done meanwhile (a resubmitted task)
            continue
        outcomes.append(_run_cell(cell, task, cache, store, visible, worker))
    return outcomes


def init_worker(threads: int | None) -> None:
    """Process-pool initializer: import the experiments, the zoo and TransformerLens once, set
    the thread count."""
    import transformer_lens  # noqa: F401  (seconds of imports: part of start-up, not of a load)

    import tl_spec.results  # noqa: F401  (every experiment)
    import tl_spec.zoo  # noqa: F401  (registers the zoo's checkpoint extension and sources)

    set_threads(threads)
