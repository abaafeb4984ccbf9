"""Where a sweep's points run (lab): in this process one after the other, or on Dask.

The lab has no scheduler of its own. :class:`DaskEngine` hands each point to a
``dask.distributed`` cluster: a ``LocalCluster`` on this machine's cores that the
sweep starts and stops, or an existing cluster whose scheduler address is given. Each
point is one task; a worker that dies takes its task with it and the scheduler runs it
again on another worker (up to Dask's ``distributed.scheduler.allowed-failures``,
after which the point is recorded as failed with ``KilledWorker``). Dask is optional
(``pip install 'iommulab[sweep]'``); :class:`SerialEngine` needs nothing.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ..scenarios import UsageError
from .grid import Point
from .point import Outcome, Runner, run_point, scenario_runner

__all__ = ["DASK_MISSING", "DaskEngine", "Engine", "SerialEngine", "dask_available"]

DASK_MISSING = ("Dask is not installed: pip install 'iommulab[sweep]' to run points in "
                "parallel, or give --workers 1 to run them one after the other here")


def dask_available() -> bool:
    try:
        importlib.import_module("distributed")
    except ImportError:
        return False
    return True


class Engine(Protocol):
    """Runs points and yields their outcomes as they finish, in any order."""

    #: how many points can run at once
    slots: int

    def run(self, points: Sequence[Point], runner: Runner) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class SerialEngine:
    """Each point in this process, in order."""

    slots = 1

    def run(self, points: Sequence[Point], runner: Runner = scenario_runner
            ) -> Iterator[Outcome]:
        for p in points:
            yield run_point(p, runner)

    def close(self) -> None:
        pass


class DaskEngine:
    """Points as tasks of a ``dask.distributed`` cluster.

    ``scheduler``: the address of an existing scheduler (``tcp://HOST:PORT``), else a
    ``LocalCluster`` of ``workers`` processes, one thread each (a point is CPU-bound
    Python: threads would share one interpreter lock), is started here and stopped by
    :meth:`close`; or ``client``, a ``distributed.Client`` the caller keeps (and closes)."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None,
                 timeout: float = 30.0, client: Any = None) -> None:
        try:
            distributed = importlib.import_module("distributed")
        except ImportError:
            raise UsageError(DASK_MISSING) from None
        self._distributed = distributed
        self._cluster: Any = None
        self._own_client = client is None
        if client is not None:
            self.client: Any = client
        elif scheduler is None:
            # the scheduler's HTTP server on a free local port (None still takes 8787);
            # no statistical profiler in the workers: it samples the running task's
            # stack every 10 ms for a dashboard nobody looks at here, and the model's
            # stacks are deep (bench_sweep.py: about 1 s of CPU per 64 points).
            # Logs below CRITICAL stay quiet: a worker whose heartbeat meets the
            # scheduler closing logs an ERROR with a traceback (a race of the shutdown,
            # seen on a loaded machine), and a lost task reaches the table anyway as
            # the failed point's error
            dask = importlib.import_module("dask")
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self._cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL)
            self.client = distributed.Client(self._cluster)
        else:
            try:
                self.client = distributed.Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as e:
                raise UsageError(f"--scheduler {scheduler}: cannot connect: {e}") from None
            try:
                self.client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                self.client.close()
                raise UsageError(f"--scheduler {scheduler}: no worker joined in "
                                 f"{timeout:g} s") from None
        self.slots = max(sum(self.client.nthreads().values()), 1)

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    def run(self, points: Sequence[Point], runner: Runner = scenario_runner
            ) -> Iterator[Outcome]:
        token = uuid.uuid4().hex[:8]
        futures = {self.client.submit(run_point, p, runner, pure=False,
                                      key=f"iommulab-sweep-{p.id}-{token}"): p
                   for p in points}
        try:
            for fut in self._distributed.as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as e:  # the task itself was lost: KilledWorker and kin
                    outcome = Outcome(futures[fut], error=f"{type(e).__name__}: {e}")
                yield outcome
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
