"""Where sweep points run: in-process, a local process pool, or a Dask cluster.

Every executor takes the same tasks and point function and yields each outcome as soon as
its point finishes (completion order, not submission order), so the driver can write it to
disk at once: a killed sweep loses at most the points that were still running.
Parallelism is across points only; one point is one single-threaded simulation.

``execute`` runs one batch. A ``Session`` keeps its workers (the process pool, the Dask
cluster and client) for several batches: ``moesim search`` runs one small batch per round of
its bisections and would otherwise start a pool or a cluster every round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from sim.errors import UserError, one_line

EXECUTORS = ("local", "dask")
_PARENT_POLL_S = 0.5

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(UserError):
    """A worker process died while it ran ``task`` (killed by a signal or the OOM killer):
    ``running`` are the tasks that were in its pool at the time (any of them may be the
    cause). Finished results were already handed out; the caller says how to continue."""

    def __init__(self, task: Any, running: Sequence[Any]) -> None:
        super().__init__("a worker process died")
        self.task = task
        self.running = list(running)


_TRACKER_FILTER = "ignore::UserWarning:multiprocessing.resource_tracker"


def quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its leak warning filtered out.

    The tracker is a separate process writing to our stderr; it warns about semaphores that a
    worker torn down by a cluster's shutdown (or killed) left registered, after moesim has
    finished, and then cleans them up itself. The warning is noise on a successful run, so the
    tracker is started here, before any pool or cluster, with ``-W`` ignoring it (it inherits
    ``sys.warnoptions``)."""
    from multiprocessing import resource_tracker

    if _TRACKER_FILTER not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_FILTER)
    resource_tracker.ensure_running()


def default_jobs() -> int:
    """One worker per core (``--jobs`` default)."""
    return os.cpu_count() or 1


def execute(
    tasks: Sequence[T],
    fn: Callable[[T], R],
    *,
    executor: str = "local",
    jobs: int | None = None,
    scheduler: str | None = None,
) -> Iterator[R]:
    """Run ``fn`` on every task and yield the results as they complete.

    ``fn`` must be a module-level function (it is pickled to worker processes). An exception
    raised by ``fn`` stops the sweep: pending points are cancelled and the error propagates.
    """
    session = Session(executor=executor, jobs=jobs, scheduler=scheduler)
    if not tasks:
        return iter(())
    if session.in_process(len(tasks)):
        return (fn(task) for task in tasks)
    if executor == "local":  # no more workers than tasks
        session = Session(jobs=min(session.workers, len(tasks)))
    return _one_batch(session, tasks, fn)


def _one_batch(session: Session, tasks: Sequence[T], fn: Callable[[T], R]) -> Iterator[R]:
    with session:
        yield from session.run(tasks, fn)


class Session:
    """An executor's workers, started on the first batch that needs them and kept until
    ``close`` (or the end of a ``with`` block) for every later batch.

    Arguments are checked at construction (a bad ``--jobs`` or ``--scheduler`` is a
    ``UserError`` before anything starts). A batch of one task, or any batch with ``--jobs 1``
    and the local executor, runs in this process.
    """

    def __init__(
        self, *, executor: str = "local", jobs: int | None = None, scheduler: str | None = None
    ) -> None:
        if executor not in EXECUTORS:
            raise UserError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
        workers = default_jobs() if jobs is None else jobs
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UserError(f"--jobs: expected a positive integer, got {jobs!r}")
        if scheduler is not None and executor != "dask":
            raise UserError(
                f"--scheduler: expected --executor dask with it, got --executor {executor}"
            )
        self.executor = executor
        self.workers = workers
        self.scheduler = scheduler
        self._pool: ProcessPoolExecutor | None = None
        self._dask: tuple[Any, Any, Any] | None = None  # (distributed module, client, cluster)

    def in_process(self, count: int) -> bool:
        """Whether a batch of ``count`` tasks runs in this process."""
        return self.executor == "local" and (self.workers == 1 or count == 1)

    def run(self, tasks: Sequence[T], fn: Callable[[T], R]) -> Iterator[R]:
        """Yield ``fn(task)`` for every task as each completes (see ``execute``)."""
        if not tasks:
            return
        if self.in_process(len(tasks)):
            for task in tasks:
                yield fn(task)
        elif self.executor == "dask":
            yield from self._run_dask(tasks, fn)
        else:
            if self._pool is None:
                quiet_resource_tracker()
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    initializer=_exit_with_parent,
                    initargs=(os.getpid(),),
                )
            try:
                yield from _run_pool(self._pool, tasks, fn, self.workers)
            except WorkerDied:
                pool, self._pool = self._pool, None  # broken: a later batch starts a new one
                _discard(pool)
                raise

    def close(self) -> None:
        """Stop the workers (cancelling anything still queued)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        dask, self._dask = self._dask, None
        if dask is not None:
            _, client, cluster = dask
            client.close()
            if cluster is not None:
                cluster.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_dask(self, tasks: Sequence[T], fn: Callable[[T], R]) -> Iterator[R]:
        if self._dask is None:
            self._dask = _start_dask(self.workers, self.scheduler)
        distributed, client, _ = self._dask
        futures = [client.submit(fn, task, pure=False) for task in tasks]
        task_of = dict(zip(futures, tasks))
        try:
            for future in distributed.as_completed(futures):
                try:
                    result = future.result()
                except distributed.KilledWorker:  # the nanny gave up restarting it
                    running = [task_of[f] for f in futures if not f.done() or f is future]
                    raise WorkerDied(task_of[future], running) from None
                yield result
        finally:
            client.cancel(futures)


def _run_pool(
    pool: ProcessPoolExecutor, tasks: Sequence[T], fn: Callable[[T], R], workers: int
) -> Iterator[R]:
    """A local process pool; at most 2 tasks per worker are in flight so an interrupt is quick.
    A worker that dies (BrokenProcessPool, from a result or from the next submission) is a
    `WorkerDied` naming the tasks then in flight, the first of them submitted first."""
    pending: set[Future[R]] = set()
    task_of: dict[Future[R], T] = {}
    queue = iter(tasks)
    try:
        _top_up(pool, fn, queue, pending, 2 * workers, task_of)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            broken = [f for f in done if isinstance(f.exception(), BrokenProcessPool)]
            for future in done:
                if future not in broken:
                    del task_of[future]
                    yield future.result()
            if broken:
                raise BrokenProcessPool(str(broken[0].exception()))
            _top_up(pool, fn, queue, pending, 2 * workers, task_of)
    except BrokenProcessPool:  # a worker died: killed by a signal or the OOM killer
        running = list(task_of.values())  # submitted and not handed out, in submission order
        raise WorkerDied(running[0] if running else None, running) from None
    finally:
        for future in pending:
            future.cancel()


def _discard(pool: ProcessPoolExecutor) -> None:
    """Drop a broken pool without waiting: a worker killed while holding the task queue's lock
    can leave the others blocked on it forever, so they are killed rather than joined."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError, ValueError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """Worker start-up: leave as soon as the sweep process is gone (killed with SIGKILL, say),
    instead of lingering as an orphan; the finished points are on disk already."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="moesim-parent-watch", daemon=True).start()


def _top_up(
    pool: ProcessPoolExecutor,
    fn: Callable[[T], R],
    queue: Iterator[T],
    pending: set[Future[R]],
    limit: int,
    task_of: dict[Future[R], T],
) -> None:
    while len(pending) < limit:
        task = next(queue, None)
        if task is None:
            return
        future = pool.submit(fn, task)
        task_of[future] = task
        pending.add(future)


def _start_dask(workers: int, scheduler: str | None) -> tuple[Any, Any, Any]:
    """Dask distributed: an existing scheduler, or a LocalCluster of ``workers`` processes."""
    distributed = _import_distributed()
    quiet_resource_tracker()
    cluster = None
    try:
        if scheduler is None:
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: never clash with another cluster
                silence_logs=logging.ERROR,
            )
            client = distributed.Client(cluster)
        else:
            client = _connect(distributed, scheduler)
    except UserError:
        raise
    except Exception as err:  # cluster start-up failures: ports, resources
        if cluster is not None:
            cluster.close()
        raise UserError(
            f"--executor dask: expected a running cluster, got {one_line(err)}"
        ) from None
    return distributed, client, cluster


def _connect(distributed: Any, scheduler: str) -> Any:
    try:
        return distributed.Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as err:
        raise UserError(
            f"--scheduler: expected a reachable Dask scheduler like tcp://host:8786, "
            f"got {scheduler!r} ({one_line(err)})"
        ) from None
    except ValueError as err:
        raise UserError(
            f"--scheduler: expected an address like tcp://host:8786, got {scheduler!r} "
            f"({one_line(err)})"
        ) from None


def _import_distributed() -> Any:
    try:
        import dask.distributed as distributed
    except ImportError:
        raise UserError(
            "--executor dask: expected the optional Dask extra "
            "(pip install 'moe-offload-sim[dask]'), got no module dask.distributed"
        ) from None
    return distributed
