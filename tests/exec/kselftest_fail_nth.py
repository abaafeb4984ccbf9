"""Build Linux 6.12's own ``tools/testing/selftests/iommu/iommufd_fail_nth.c``, unmodified,
and run it under ``iommulab exec``.

The sources, headers and flags are :mod:`iommulab.testing.kselftest`'s (the extracted
tree or the Debian ``linux-source-6.12`` tarball; ``make headers``' uapi; the Makefile's
and ``lib.mk``'s flags).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing.kselftest import build_selftest

__all__ = ["SELFTEST", "TESTS", "FailNthExecRun", "build_fail_nth", "run_fail_nth_exec"]

SELFTEST = "tools/testing/selftests/iommu/iommufd_fail_nth.c"
#: the TEST_FAIL_NTH tests of the 6.12 file, in its order
TESTS = ("basic", "map_domain", "map_two_domains", "access_rw", "access_pin",
         "access_pin_domain", "device")


def build_fail_nth(out: Path, gcc: str = "gcc") -> Path:
    """Compile the selftest into ``out`` as :func:`iommulab.testing.kselftest.build_selftest`
    builds ``iommufd.c`` (the same tree, headers and flags); returns the executable."""
    return build_selftest(out, cc=gcc, name="iommufd_fail_nth")


@dataclass
class FailNthExecRun:
    """One run of the program: exit status, TAP verdicts by test, fail-nth steps by test
    (the last iteration ``__fail_nth_enable`` wrote, less the one that did not fire), the
    wall time, and what the model's handler raised."""

    status: int
    output: str
    verdicts: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    handler_errors: list[BaseException] = field(default_factory=list)


def run_fail_nth_exec(machine: Machine, exe: Path, tests: tuple[str, ...] = (),
                      timeout: float = 1800) -> FailNthExecRun:
    """Run ``exe`` (``-t NAME`` for each of ``tests``; all when empty) against
    ``machine``. Each TEST_F runs in a grandchild of its own (the harness forks twice), so
    the fail-nth writes of test i are those of the i-th process that wrote one."""
    argv = [str(exe)] + [a for t in tests for a in ("-t", t)]
    out = exe.parent / f"stdout-{time.monotonic_ns()}"
    start = time.monotonic()
    with out.open("wb") as f:
        result = run_exec(machine, argv, timeout=timeout, stdout=f, stderr=f)
    seconds = time.monotonic() - start
    text = out.read_text(errors="replace")
    run = FailNthExecRun(result.status, text, seconds=seconds,
                         handler_errors=list(result.handler_errors))
    for m in re.finditer(r"^(ok|not ok) \d+ basic_fail_nth\.(\w+)(.*)$", text, re.M):
        run.verdicts[m.group(2)] = m.group(1) + m.group(3)
    by_pid: dict[int, int] = {}
    for pid, _tid, value in result.fail_nth_writes:
        by_pid[pid] = max(by_pid.get(pid, 0), value)
    names = [n for n in TESTS if not tests or n in tests]
    for name, last in zip(names, by_pid.values(), strict=False):
        run.steps[name] = last - 1
    return run
