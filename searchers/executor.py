"""Executors of true evaluations: in this process, a local process pool, or Ray.

``run_search`` hands an executor one candidate at a time (``submit``) and keeps at most ``slots`` in flight;
searchers never see which executor runs. Pool and Ray workers build their own problem once each, from a
picklable factory (``ProjectProblem``: the project rebuilt read-only from its config and run folder), so
they evaluate exactly what the parent would. Workers never write the run folder.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from bitnas.errors import InternalError, UserError
from bitnas.space import Candidate

Result = tuple[dict[str, float], float]  # (objectives, seconds the evaluation took)


class Executor(ABC):
    """Runs true evaluations; ``submit`` returns a future of (objectives, seconds)."""

    slots: int = 1  # evaluations it runs at once

    @abstractmethod
    def submit(self, candidate: Candidate) -> Future: ...

    def close(self) -> None:  # noqa: B027 - nothing to stop in-process
        """Stop the workers (in-flight evaluations are abandoned)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Evaluates in the calling process, one at a time: ``submit`` returns once the evaluation is done."""

    def __init__(self, evaluate: Callable[[Candidate], dict[str, float]]):
        self.evaluate = evaluate
        self.slots = 1

    def submit(self, candidate: Candidate) -> Future:
        fut: Future = Future()
        t0 = time.perf_counter()
        try:
            fut.set_result((self.evaluate(candidate), time.perf_counter() - t0))
        except BaseException as exc:  # noqa: BLE001 - the driver re-raises it from the future
            fut.set_exception(exc)
        return fut


# ------------------------------------------------------------------------------------------ worker side
_WORKER: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    """End this worker when its parent is gone (a parent killed with SIGKILL cannot stop it)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def _quiet_worker(threads: int) -> None:
    from bitnas import ui

    ui.console.quiet = True  # the parent reports progress; workers would repeat "LUT: reusing ..." each
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _init_pool_worker(factory: Callable[[], Any], threads: int, parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _quiet_worker(threads)
    _WORKER["factory"] = factory


def _pool_evaluate(candidate: Candidate) -> Result:
    problem = _WORKER.get("problem")
    if problem is None:  # built at the first evaluation, so an error in it reaches the parent as the result
        problem = _WORKER["problem"] = _WORKER["factory"]()
    t0 = time.perf_counter()
    out = problem.evaluate(candidate)
    return out, time.perf_counter() - t0


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


class PoolExecutor(Executor):
    """A local process pool (spawned processes: torch's OpenMP threads can hang after fork)."""

    def __init__(self, factory: Callable[[], Any], workers: int = 2, threads: int | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.slots = workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_pool_worker,
            initargs=(factory, threads or _threads_per_worker(workers), os.getpid()))

    def submit(self, candidate: Candidate) -> Future:
        return self.pool.submit(_pool_evaluate, candidate)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RayWorker:
    """One Ray actor: builds the problem once, then evaluates candidates."""

    def __init__(self, factory: Callable[[], Any], threads: int):
        _quiet_worker(threads)
        self.factory, self.problem = factory, None

    def evaluate(self, candidate: Candidate) -> Result:
        if self.problem is None:
            self.problem = self.factory()
        t0 = time.perf_counter()
        out = self.problem.evaluate(candidate)
        return out, time.perf_counter() - t0


def ray_init(workers: int, address: str | None = None) -> bool:
    """Start a local Ray (127.0.0.1, no dashboard, no usage stats) or join ``address``; False when this
    process already had Ray running (then it is not ours to shut down)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read by Ray when it starts
    try:
        import ray
    except ImportError:
        raise UserError("search.executor.kind 'ray' needs Ray: pip install 'bitnas[ray]'") from None
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **common)
        return True
    # Ray turns 127.0.0.1 into the machine's routable address unless it runs as a single-machine cluster
    # (its own default on macOS and Windows): that switch, for Ray's processes and for this one
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", **common)
    return True


class RayExecutor(Executor):
    """Ray actors, one per worker: a local Ray by default, or the cluster at ``address``."""

    def __init__(self, factory: Callable[[], Any], workers: int = 2, address: str | None = None,
                 threads: int | None = None):
        self.owns_ray = ray_init(workers, address)
        import ray

        self.ray = ray
        actor = ray.remote(num_cpus=1)(_RayWorker)
        # a local Ray shares this machine's cores among the workers; a cluster's actor has its own core
        threads = threads or (_threads_per_worker(workers) if not address else 1)
        self.actors = [actor.remote(factory, threads) for _ in range(workers)]
        self.free = list(self.actors)
        self.busy: dict[Future, Any] = {}
        self.slots = workers

    def submit(self, candidate: Candidate) -> Future:
        for fut in list(self.busy):
            if fut.done():
                self.free.append(self.busy.pop(fut))
        if not self.free:
            raise InternalError("RayExecutor: more evaluations submitted than it has slots")
        a = self.free.pop(0)
        fut = a.evaluate.remote(candidate).future()
        self.busy[fut] = a
        return fut

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self.free, self.busy = [], [], {}
        if self.owns_ray:
            self.ray.shutdown()


class ProjectProblem:
    """A worker's problem: the project rebuilt read-only from its config and run folder, checked to be
    the parent's problem (same supernet, LUT, data, objectives)."""

    def __init__(self, config: dict[str, Any], root: str, source: str, base: str, problem_hash: str):
        self.config, self.root, self.source, self.base, self.problem_hash = config, root, source, base, problem_hash

    def __call__(self):
        from pathlib import Path

        from bitnas.project import Project, ProjectConfig

        project = Project(ProjectConfig.model_validate(self.config), Path(self.root), self.source, Path(self.base))
        project.read_only = True
        problem = project.problem()
        if problem.problem["hash"] != self.problem_hash:
            raise UserError(f"{self.root}: a search worker built another problem ({problem.problem['hash']}, "
                            f"the search's is {self.problem_hash}); was the run folder changed during the search?")
        return problem


def make_executor(kind: str, evaluate: Callable[[Candidate], dict[str, float]], factory: Callable[[], Any],
                  workers: int = 2, address: str | None = None) -> Executor:
    """The executor ``kind`` (inprocess, pool, ray): in-process runs ``evaluate``, the others ``factory()``'s."""
    if kind == "inprocess":
        return InProcessExecutor(evaluate)
    if kind == "pool":
        return PoolExecutor(factory, workers)
    if kind == "ray":
        return RayExecutor(factory, workers, address)
    raise InternalError(f"unknown executor kind '{kind}'")


def project_executor(project, problem) -> Executor:
    """The executor of ``project``'s ``search.executor``; pool and Ray workers rebuild ``problem`` from the
    project."""
    ex = project.cfg.search.executor
    factory = ProjectProblem(project.cfg.model_dump(mode="json"), str(project.run.root), project.source,
                             str(project.base), problem.problem["hash"])
    return make_executor(ex.kind, problem.evaluate, factory, ex.workers, ex.address)
