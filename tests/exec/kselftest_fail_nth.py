"""Build Linux 6.12's own ``tools/testing/selftests/iommu/iommufd_fail_nth.c``, unmodified,
and run it under ``iommulab exec``.

The sources come from the extracted tree (``/work/linux/linux-source-6.12``) or, when it
is not there, from the Debian ``linux-source-6.12`` tarball (only the files needed). The
uapi headers (``linux/iommufd.h``, ``linux/vfio.h``) are 6.12's, made into user headers as
``scripts/headers_install.sh`` makes them (``__user`` dropped); the rest of the kernel
headers are the system's. Flags are the selftest Makefile's and ``lib.mk``'s.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from iommulab.exec import run_exec
from iommulab.machine import Machine

__all__ = ["TESTS", "FailNthExecRun", "build_fail_nth", "run_fail_nth_exec", "source_tree"]

TREE = Path("/work/linux/linux-source-6.12")
TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
SELFTEST = "tools/testing/selftests/iommu/iommufd_fail_nth.c"
NEEDED = (SELFTEST, "tools/testing/selftests/iommu/iommufd_utils.h",
          "tools/testing/selftests/kselftest_harness.h", "tools/testing/selftests/kselftest.h",
          "drivers/iommu/iommufd/iommufd_test.h", "include/uapi/linux/iommufd.h",
          "include/uapi/linux/vfio.h")
#: the TEST_FAIL_NTH tests of the 6.12 file, in its order
TESTS = ("basic", "map_domain", "map_two_domains", "access_rw", "access_pin",
         "access_pin_domain", "device")


def source_tree(cache: Path) -> Path:
    """A tree holding :data:`NEEDED`: the extracted one, else those files taken out of
    the tarball into ``cache``."""
    if all((TREE / f).is_file() for f in NEEDED):
        return TREE
    out = cache / "linux-6.12"
    if all((out / f).is_file() for f in NEEDED):
        return out
    if not TARBALL.is_file():
        raise FileNotFoundError(f"neither {TREE} nor {TARBALL}")
    found = 0
    with tarfile.open(TARBALL) as tar:
        for member in tar:
            name = member.name.split("/", 1)[-1]
            if name in NEEDED:
                data = tar.extractfile(member)
                assert data is not None
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(data.read())
                found += 1
                if found == len(NEEDED):
                    break
    missing = [f for f in NEEDED if not (out / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{TARBALL} lacks {missing}")
    return out


def _user_header(text: str) -> str:
    """``scripts/headers_install.sh``'s edit that matters here: no ``__user``."""
    return re.sub(r"([\s(])(__user|__force|__iomem)\s", r"\1", text)


#: 6.12.118's iommufd_utils.h (a stable backport) names three things of 6.17's uapi that
#: its own include/uapi/linux/iommufd.h lacks; 6.17 adds ``in_data_type`` as a union
#: with ``out_data_type`` (the same four bytes), so these keep 6.12's ABI exactly
COMPAT = """\
#define IOMMU_HW_INFO_TYPE_DEFAULT 0
#define IOMMU_HW_INFO_FLAG_INPUT_TYPE (1 << 0)
#define in_data_type out_data_type
"""


def build_fail_nth(out: Path, gcc: str = "gcc") -> Path:
    """Compile the selftest into ``out``; returns the executable."""
    tree = source_tree(out)
    inc = out / "usr-include" / "linux"
    inc.mkdir(parents=True, exist_ok=True)
    for h in ("iommufd.h", "vfio.h"):
        (inc / h).write_text(_user_header((tree / "include/uapi/linux" / h).read_text()))
    utils = (tree / "tools/testing/selftests/iommu/iommufd_utils.h").read_text()
    header = (inc / "iommufd.h").read_text()
    compat = []
    if "in_data_type" in utils and "in_data_type" not in header:
        compat = ["-include", str(out / "compat.h")]
        (out / "compat.h").write_text(COMPAT)
    exe = out / "iommufd_fail_nth"
    subprocess.run([gcc, "-Wall", "-O2", "-Wno-unused-function", "-D_GNU_SOURCE=",
                    "-isystem", str(out / "usr-include"), *compat, "-o", str(exe),
                    str(tree / SELFTEST)], check=True)
    return exe


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
