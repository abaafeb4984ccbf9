"""Running sequences: each op under a watchdog, the checks after each sequence, findings
grouped by crash site, and minimal reproducers.

A finding is anything the rule of issue 19 forbids: an exception other than ``OSError``
(``crash``, grouped by exception type and the innermost frame of the model), a failed
``_check()`` (``invariant``), a leak once every process exited (``leak``, grouped by
what differs from the fresh machine), an op that does not finish within the watchdog
(``hang``) or takes longer than ``slow_seconds`` (``slow``), and host memory that grows
by more than ``rss_limit`` in one op (``host-memory``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import resource
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ..invariants import check_invariants
from ..leaks import LeakSnapshot, leak_snapshot
from .gen import Gen
from .world import Op, ProcSpec, Skip, World, WorldConfig, render

__all__ = ["Finding", "FuzzReport", "Fuzzer", "Guard", "SequenceResult", "address_space_limit",
           "minimize", "random_config", "replay", "run_sequence"]

_PKG = Path(__file__).resolve().parents[2]  # src/iommulab
_FUZZ = Path(__file__).resolve().parent
_TESTING = _FUZZ.parent


class Hang(BaseException):
    """The watchdog fired: a BaseException, so no ``except Exception`` of the model
    swallows it."""


@dataclass(frozen=True)
class Guard:
    """Limits on one op: ``hang_seconds`` of wall time (0: no watchdog; only in the main
    thread), ``slow_seconds`` above which an op is reported slow (None: never), and
    ``rss_limit`` bytes of growth of the process's peak RSS."""

    hang_seconds: float = 10.0
    slow_seconds: float | None = None
    rss_limit: int = 512 << 20


@dataclass
class Finding:
    """One kind of failure: ``key`` groups occurrences (crash site, leak fields); ``ops``
    is the shortest reproducer found, on a world of ``config``."""

    kind: str
    key: str
    message: str
    config: WorldConfig
    ops: list[Op]
    count: int = 1
    seeds: list[str] = field(default_factory=list)
    minimized: bool = False

    def reproducer(self) -> str:
        return render(self.config, self.ops)


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def address_space_limit(headroom: int) -> Iterator[None]:
    """RLIMIT_AS at the current address-space size plus ``headroom`` bytes, so an
    allocation sized by a caller's length fails at once with MemoryError instead of
    taking the host's memory; restored afterwards. Linux only (elsewhere nothing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = pages * resource.getpagesize() + headroom
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _site(tb: TracebackType | None) -> str:
    """The innermost frame of the model (outside the fuzzer) in ``tb``: ``path:function``."""
    site = "outside the model"
    for frame, _ in traceback.walk_tb(tb):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_PKG) and not path.is_relative_to(_TESTING):
            site = f"{path.relative_to(_PKG)}:{frame.f_code.co_name}"
    return site


def _assert_site(tb: TracebackType | None) -> str:
    for frame, line in reversed(list(traceback.walk_tb(tb))):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_PKG) and not path.is_relative_to(_TESTING):
            return f"{path.relative_to(_PKG)}:{frame.f_code.co_name}:{line}"
    return "outside the model"


@dataclass
class _Outcome:
    status: str  # ok, errno, skip, crash, hang
    value: Any = None
    seconds: float = 0.0
    rss_growth: int = 0


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _execute(world: World, op: Op, guard: Guard) -> _Outcome:
    fail = world.machine.mem.fail_nth
    rss = _maxrss()
    start = time.perf_counter()
    try:
        with _watchdog(guard.hang_seconds):
            if op.fail_nth:
                fail.arm(op.fail_nth)
            try:
                value = world.apply(op)
            finally:
                fail.disarm()
        out = _Outcome("ok", value)
    except Skip:
        out = _Outcome("skip")
    except OSError as err:
        out = _Outcome("errno", err)
    except Hang as err:
        out = _Outcome("hang", err)
    except Exception as err:
        out = _Outcome("crash", err)
    out.seconds = time.perf_counter() - start
    out.rss_growth = _maxrss() - rss
    return out


@dataclass
class _Found:
    kind: str
    key: str
    message: str
    upto: int  # the ops up to this index reproduce it


@dataclass
class SequenceResult:
    """What one sequence did: the ops run, how each ended (op name, errno or "ok"), and
    what it found."""

    ops: list[Op]
    outcomes: list[tuple[str, str]]
    found: list[_Found]


def _exc_finding(kind: str, err: BaseException, where: str, upto: int) -> _Found:
    site = _assert_site(err.__traceback__) if kind == "invariant" else _site(err.__traceback__)
    name = type(err).__name__
    key = f"{kind}: {name} at {site}" if kind != "invariant" else f"invariant: {site}"
    return _Found(kind, key, f"{where}: {name}: {err}"[:2000], upto)


def _leak_key(diff: list[str]) -> str:
    """What leaked, without the counts and ids that vary between occurrences."""
    parts = []
    for line in diff:
        name, _, rest = line.partition(": ")
        if name in ("groups", "iommufd_objects", "domains", "open_files", "vfio_devices"):
            items = sorted({re.sub(r"\d+", "N", item.split(" (fresh")[0])
                            for item in rest.split("; ")})
            parts.append(f"{name}[{', '.join(items)}]")
        else:
            parts.append(name)
    return "leak: " + " ".join(parts)


class _Run:
    """One sequence on a fresh world: the ops from ``source``, then the checks."""

    def __init__(self, config: WorldConfig, guard: Guard) -> None:
        self.guard = guard
        self.world = World(config)
        self.fresh: LeakSnapshot = leak_snapshot(self.world.machine)
        self.world.spawn_initial()
        self.ops: list[Op] = []
        self.outcomes: list[tuple[str, str]] = []
        self.found: list[_Found] = []

    def step(self, op: Op) -> _Outcome:
        out = _execute(self.world, op, self.guard)
        self.ops.append(op)
        self.world.note_files()
        result = "ok" if out.status == "ok" else out.status
        if out.status == "errno":
            result = str(getattr(out.value, "errno", "?"))
        self.outcomes.append((op.name, result))
        n = len(self.ops)
        if out.status in ("crash", "hang"):
            self.found.append(_exc_finding(out.status, out.value, op.name, n))
        slow = self.guard.slow_seconds
        if slow is not None and out.seconds > slow and out.status != "hang":
            self.found.append(_Found("slow", f"slow: {op.name}",
                                     f"{op.name} took {out.seconds:.2f} s ({op.note})", n))
        if out.rss_growth > self.guard.rss_limit:
            self.found.append(_Found("host-memory", f"host-memory: {op.name}",
                                     f"{op.name} grew the peak RSS by "
                                     f"{out.rss_growth >> 20} MiB", n))
        return out

    @property
    def broken(self) -> bool:
        """A crash or hang left the model in a state nothing should be checked in."""
        return any(f.kind in ("crash", "hang") for f in self.found)

    def finish(self) -> None:
        """Invariants, every live process exits, invariants again, the leak baseline."""
        if self.broken:
            return
        n = len(self.ops)
        w = self.world
        if self._invariants("before exit", n):
            return
        for i in w.live():
            op = Op(i, "exit", note="teardown")
            out = _execute(w, op, self.guard)
            if out.status in ("crash", "hang"):
                self.found.append(_exc_finding(out.status, out.value, "exit at teardown", n))
                return
        if self._invariants("after exit", n):
            return
        diff = self.fresh.diff(leak_snapshot(w.machine, w.procs, w.files_seen.values()))
        if diff:
            self.found.append(_Found("leak", _leak_key(diff), "\n".join(diff), n))

    def _invariants(self, when: str, n: int) -> bool:
        try:
            with _watchdog(self.guard.hang_seconds):
                check_invariants([self.world.machine, *self.world.procs,
                                  *self.world.files_seen.values()])
        except Hang as err:
            self.found.append(_exc_finding("hang", err, f"_check() {when}", n))
            return True
        except Exception as err:
            self.found.append(_exc_finding("invariant", err, f"_check() {when}", n))
            return True
        return False


def run_sequence(config: WorldConfig, rng: random.Random, nops: int, *,
                 failnth_share: float = 0.0, guard: Guard | None = None,
                 mutate: float = 0.25, wild: float = 1.0) -> SequenceResult:
    """``nops`` generated ops on a fresh world of ``config``, then the checks; stops at
    the first crash or hang."""
    run = _Run(config, guard or Guard())
    gen = Gen(run.world, rng, mutate=mutate, wild=wild)
    while len(run.ops) < nops and not run.broken:
        for op in gen.next():
            if failnth_share and rng.random() < failnth_share:
                op = dataclasses.replace(op, fail_nth=rng.choice([1, 1, 2, 3, 4, 6, 10]))
            out = run.step(op)
            if out.status == "ok":
                gen.observe(op, out.value)
            if run.broken:
                break
    run.finish()
    return SequenceResult(run.ops, run.outcomes, run.found)


def replay(config: WorldConfig, ops: Sequence[Op], guard: Guard | None = None
           ) -> list[_Found]:
    """Run ``ops`` as recorded on a fresh world of ``config``, then the checks."""
    run = _Run(config, guard or Guard())
    for op in ops:
        run.step(op)
        if run.broken:
            break
    run.finish()
    return run.found


def minimize(config: WorldConfig, ops: list[Op], key: str, *, guard: Guard | None = None,
             budget: int = 300) -> list[Op]:
    """The shortest sub-sequence of ``ops`` found (ddmin, at most ``budget`` replays)
    that still gives a finding keyed ``key``, without the fail-nth it does not need."""
    tries = 0

    def still(cand: list[Op]) -> bool:
        nonlocal tries
        tries += 1
        return any(f.key == key for f in replay(config, cand, guard))

    n = 2
    while len(ops) >= 2 and tries < budget:
        chunk = -(-len(ops) // n)
        for i in range(0, len(ops), chunk):
            cand = ops[:i] + ops[i + chunk:]
            if tries >= budget:
                break
            if cand and still(cand):
                ops = cand
                n = max(n - 1, 2)
                break
        else:
            if n >= len(ops):
                break
            n = min(len(ops), 2 * n)
    for i, op in enumerate(ops):  # then fail-nth where the finding does not need it
        if op.fail_nth and tries < budget:
            cand = [*ops[:i], dataclasses.replace(op, fail_nth=0), *ops[i + 1:]]
            if still(cand):
                ops = cand
    return ops


def random_config(rng: random.Random, platform: str, kernel: str | None = None
                  ) -> WorldConfig:
    """A small world: 256-512M of RAM, one to three vfio-pci devices (the first QEMU's
    edu half the time), each kernel, the iommufd-backed /dev/vfio/vfio at times, limits
    that bite at times, one or two processes, and on x86-vtd half the time a
    scalable-mode unit (nesting, second-stage dirty tracking)."""
    procs = [ProcSpec(rng.choice([None, 1 << 20, 16 << 20, 64 << 20]), rng.random() < 0.3,
                      1000, rng.random() < 0.3)]
    if rng.random() < 0.2:
        procs.append(ProcSpec(16 << 20, False, rng.choice([1000, 1001])))
    return WorldConfig(platform, kernel or rng.choice(["6.12", "7.0"]),
                       rng.choice(["256M", "256M", "512M"]), rng.choice([1, 2, 2, 3]),
                       rng.random() < 0.3, rng.random() < 0.15,
                       rng.choice([65535] * 6 + [2, 8]), rng.random() < 0.1, tuple(procs),
                       rng.random() < 0.5,
                       platform == "x86-vtd" and rng.random() < 0.5)


@dataclass
class FuzzReport:
    """Totals of a fuzz run and its findings by key."""

    seed: int
    ops: int = 0
    sequences: int = 0
    seconds: float = 0.0  # running sequences, not shortening reproducers
    minimize_seconds: float = 0.0
    ops_by_platform: Counter[str] = field(default_factory=Counter)
    ops_by_kernel: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)  # op name -> results
    findings: dict[str, Finding] = field(default_factory=dict)

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


class Fuzzer:
    """Seeded runs over ``platforms``: sequence ``i`` uses its own generator seeded from
    (``seed``, ``i``), so any sequence can be rerun alone. ``minimize_budget`` replays
    go into shortening the first occurrence of each finding (0: none)."""

    def __init__(self, seed: int, platforms: Sequence[str], *, kernels: Sequence[str] = (),
                 seq_ops: tuple[int, int] = (30, 150), failnth_share: float = 0.0,
                 guard: Guard | None = None, minimize_budget: int = 200, wild: float = 1.0,
                 on_sequence: Callable[[FuzzReport], None] | None = None) -> None:
        self.seed = seed
        self.platforms = list(platforms)
        self.kernels = list(kernels)
        self.seq_ops = seq_ops
        self.failnth_share = failnth_share
        self.guard = guard or Guard()
        self.minimize_budget = minimize_budget
        self.wild = wild
        self.on_sequence = on_sequence

    def sequence(self, i: int) -> tuple[WorldConfig, random.Random, int]:
        """The world, generator and length of sequence ``i``."""
        rng = random.Random(f"{self.seed}/{i}")
        platform = self.platforms[i % len(self.platforms)]
        kernel = rng.choice(self.kernels) if self.kernels else None
        return random_config(rng, platform, kernel), rng, rng.randint(*self.seq_ops)

    def run(self, total_ops: int, report: FuzzReport | None = None) -> FuzzReport:
        """Sequences until ``total_ops`` ops ran."""
        rep = report or FuzzReport(self.seed)
        i = rep.sequences
        while rep.ops < total_ops:
            start = time.perf_counter()
            config, rng, nops = self.sequence(i)
            res = run_sequence(config, rng, min(nops, total_ops - rep.ops),
                               failnth_share=self.failnth_share, guard=self.guard,
                               wild=self.wild)
            rep.seconds += time.perf_counter() - start
            rep.sequences += 1
            rep.ops += len(res.ops)
            rep.ops_by_platform[config.platform] += len(res.ops)
            rep.ops_by_kernel[config.kernel] += len(res.ops)
            for name, result in res.outcomes:
                rep.outcomes.setdefault(name, Counter())[result] += 1
            for f in res.found:
                self._record(rep, f, config, res.ops, f"{self.seed}/{i}")
            i += 1
            if self.on_sequence is not None:
                self.on_sequence(rep)
        return rep

    def _record(self, rep: FuzzReport, f: _Found, config: WorldConfig, ops: list[Op],
                seed: str) -> None:
        old = rep.findings.get(f.key)
        if old is not None:
            old.count += 1
            if len(old.seeds) < 5:
                old.seeds.append(seed)
            return
        repro = ops[:f.upto]
        minimized = False
        if self.minimize_budget and f.kind not in ("slow", "hang", "host-memory"):
            start = time.perf_counter()
            repro = minimize(config, repro, f.key, guard=self.guard,
                             budget=self.minimize_budget)
            rep.minimize_seconds += time.perf_counter() - start
            minimized = True
        rep.findings[f.key] = Finding(f.kind, f.key, f.message, config, repro, 1, [seed],
                                      minimized)
