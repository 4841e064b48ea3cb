"""Where tasks run: this process, a local process pool, Dask distributed, or Ray.

Every executor ships :func:`tl_spec.study.worker.run_task` with one task (plain data) and hands
back its outcomes as tasks finish. Dask is the first-class cluster engine (``pip install
tl_spec[dask]``): ``LocalCluster`` on one machine, or ``--scheduler ADDRESS`` for an existing
cluster, with GPUs as the worker resource ``GPU``. Ray (``pip install ray``) is offered for
clusters that already run it, with tasks that request GPUs.

>>> with make_executor("local", workers=1) as ex:   # doctest: +SKIP
...     fut = ex.submit(task); ex.wait([fut], 1.0); ex.outcome(fut)
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["EXECUTORS", "CrashedError", "Executor", "default_threads", "make_executor"]

EXECUTORS = ("local", "dask", "ray")


class CrashedError(RuntimeError):
    """A worker process died while running a task (the executor was restarted)."""


def default_threads(workers: int) -> int:
    """Torch threads per worker so that workers x threads fills the CPU cores, at least 1.

    >>> default_threads(os.cpu_count() or 1)
    1
    """
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class Executor:
    """Base class: ``submit(task)``, ``wait(futures, timeout)``, ``outcome(future)``, ``close``."""

    name = "base"
    window = 1  # tasks in flight at once
    threads: int | None = None  # torch threads per worker
    interrupted = False
    restarts_on_crash = False  # a crash loses every task in flight (a broken process pool)

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> Executor:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.interrupted = exc_type is not None  # Ctrl-C or an error: do not wait for tasks
        self.close()

    def start(self) -> None:
        """Start the engine (processes, cluster connection)."""

    def close(self) -> None:
        """Stop whatever :meth:`start` started."""

    def submit(self, task: dict[str, Any]) -> Any:
        raise NotImplementedError

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        """Futures among ``futures`` that are finished (waits up to ``timeout`` for one)."""
        raise NotImplementedError

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        """The outcomes of a finished task; :class:`CrashedError` if its worker died."""
        raise NotImplementedError

    def restart(self) -> None:
        """Recover after a crash (a fresh pool); tasks in flight must be resubmitted."""


class _Inline:
    def __init__(self, task: dict[str, Any]) -> None:
        self.task, self.value = task, None


class InProcessExecutor(Executor):
    """One process: tasks run here, one after another, models cached for the run."""

    name = "local"

    def __init__(self, threads: int | None = None, cache_size: int = 2) -> None:
        super().__init__(1)
        from tl_spec.study.worker import ModelCache

        self.threads, self.cache = threads, ModelCache(cache_size)
        self._saved: int | None = None

    def start(self) -> None:
        import torch

        self._saved = torch.get_num_threads()

    def close(self) -> None:
        import torch

        self.cache.clear()
        if self._saved and torch.get_num_threads() != self._saved:
            torch.set_num_threads(self._saved)

    def submit(self, task: dict[str, Any]) -> Any:
        return _Inline(task)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        from tl_spec.study.worker import run_task

        fut = futures[0]
        fut.value = run_task(fut.task, cache=self.cache)
        return [fut]

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        return future.value


class ProcessPoolExecutor(Executor):
    """A pool of ``workers`` spawned processes, each keeping its loaded models between tasks."""

    name = "local"
    restarts_on_crash = True

    def __init__(self, workers: int, threads: int | None = None) -> None:
        super().__init__(workers)
        self.threads = threads
        self.pool: Any = None
        self.window = 2 * workers  # one task queued behind each running one: no idle gaps

    def start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor as Pool

        from tl_spec.study.worker import init_worker

        self.pool = Pool(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                         initializer=init_worker, initargs=(self.threads,))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=not self.interrupted, cancel_futures=True)
            self.pool = None

    def restart(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None
        self.start()

    def submit(self, task: dict[str, Any]) -> Any:
        from tl_spec.study.worker import run_task

        return self.pool.submit(run_task, task)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as exc:
            raise CrashedError(f"a worker process died ({exc})") from None


class DaskExecutor(Executor):
    """Dask distributed: a ``LocalCluster`` of ``workers`` processes, or an existing scheduler."""

    name = "dask"

    def __init__(self, workers: int, threads: int | None = None, address: str | None = None,
                 gpus_per_task: float = 0.0) -> None:
        super().__init__(workers)
        self.threads, self.address, self.gpus = threads, address, gpus_per_task
        self.client: Any = None
        self.cluster: Any = None
        self.window = 2 * workers

    def start(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise TLSpecError("--executor dask needs Dask distributed, which is not installed; "
                              "pip install \"tl_spec[dask]\" (or \"dask[distributed]\")") from None
        import logging

        if self.address:
            self.client = Client(self.address)
            n = len(self.client.scheduler_info().get("workers", {}))
            self.workers = max(1, n)
            self.window = 2 * self.workers
            return
        # one GPU per worker (several GPUs on one machine: dask-cuda's LocalCUDACluster pins
        # each worker to its own; connect to it with --scheduler)
        resources = {"GPU": max(1.0, self.gpus)} if self.gpus else None
        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR,
                                    resources=resources)
        self.client = Client(self.cluster)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def submit(self, task: dict[str, Any]) -> Any:
        from tl_spec.study.worker import run_task

        resources = {"GPU": self.gpus} if self.gpus else None
        return self.client.submit(run_task, task, pure=False, resources=resources,
                                  key=f"tl-spec-study-{task['task_id']}-{uuid.uuid4().hex[:8]}")

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        from distributed import wait

        try:
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return [f for f in futures if f.done()]

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker and friends
            raise CrashedError(f"the Dask task failed: {type(exc).__name__}: {exc}") from None


class RayExecutor(Executor):
    """Ray: tasks that request ``gpus_per_task`` GPUs, on ``ray.init(address)`` or a local Ray."""

    name = "ray"

    def __init__(self, workers: int, threads: int | None = None, address: str | None = None,
                 gpus_per_task: float = 0.0) -> None:
        super().__init__(workers)
        self.threads, self.address, self.gpus = threads, address, gpus_per_task
        self.remote: Any = None
        self.window = 2 * workers

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise TLSpecError("--executor ray needs Ray, which is not installed; pip install ray "
                              "(or use --executor dask, the first-class engine: pip install "
                              "\"tl_spec[dask]\")") from None
        from tl_spec.study.worker import run_task

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        self.remote = ray.remote(num_cpus=1, num_gpus=self.gpus, max_retries=0)(run_task)

    def close(self) -> None:
        import ray

        if ray.is_initialized() and not self.address:
            ray.shutdown()

    def submit(self, task: dict[str, Any]) -> Any:
        return self.remote.remote(task)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        import ray

        done, _ = ray.wait(futures, num_returns=1, timeout=timeout)
        return list(done)

    def outcome(self, future: Any) -> list[dict[str, Any]]:
        import ray

        try:
            return ray.get(future)
        except Exception as exc:  # noqa: BLE001 - worker crashes, lost nodes
            raise CrashedError(f"the Ray task failed: {type(exc).__name__}: {exc}") from None


def check_executor(executor: str, workers: int, gpus_per_task: float, address: str | None) -> None:
    """Validate executor options before anything runs; engines missing give install hints."""
    import importlib.util

    if executor not in EXECUTORS:
        raise TLSpecError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise TLSpecError(f"workers must be an integer >= 1, got {workers!r}")
    if gpus_per_task < 0:
        raise TLSpecError(f"gpus per task must be >= 0, got {gpus_per_task!r}")
    if executor == "local" and (gpus_per_task or address):
        raise TLSpecError("--gpus-per-task and --scheduler apply to --executor dask or ray; the "
                          "local executor uses the device each model names")
    if executor == "dask" and importlib.util.find_spec("distributed") is None:
        raise TLSpecError("--executor dask needs Dask distributed, which is not installed; "
                          "pip install \"tl_spec[dask]\" (or \"dask[distributed]\")")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise TLSpecError("--executor ray needs Ray, which is not installed; pip install ray (or "
                          "use --executor dask, the first-class engine: pip install "
                          "\"tl_spec[dask]\")")


def make_executor(executor: str = "local", *, workers: int = 1, threads: int | None = None,
                  address: str | None = None, gpus_per_task: float = 0.0,
                  cache_size: int = 2) -> Executor:
    """The executor named ``executor`` (checked first; nothing starts until ``with``)."""
    check_executor(executor, workers, gpus_per_task, address)
    threads = threads or default_threads(workers)
    if executor == "dask":
        return DaskExecutor(workers, threads, address, gpus_per_task)
    if executor == "ray":
        return RayExecutor(workers, threads, address, gpus_per_task)
    if workers == 1:
        return InProcessExecutor(threads, cache_size)
    return ProcessPoolExecutor(workers, threads)
