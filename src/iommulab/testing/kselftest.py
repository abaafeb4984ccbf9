"""Build the Linux 6.12 iommufd selftest, unmodified, and read its TAP output.

The source is the kernel's own (``tools/testing/selftests/iommu/iommufd.c``), taken from
an extracted tree or from the ``linux-source-6.12`` tarball (only the files the build
needs, into a cache). It is compiled with the flags ``iommu/Makefile`` and ``lib.mk``
give it, against the tree's uapi headers installed as ``make headers`` would
(``scripts/headers_install.sh``), so a system without ``linux/iommufd.h`` builds it too.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..machine import Machine

__all__ = ["COMPAT_HEADER", "SELFTEST_FILES", "SelftestRun", "TapResult", "build_selftest",
           "find_source", "install_headers", "needs_compat", "parse_tap", "run_selftest",
           "selftest_cflags"]

VERSION = "6.12"
TREE = f"linux-source-{VERSION}"
TARBALL = Path(f"/usr/src/{TREE}.tar.xz")
EXTRACTED = Path(f"/work/linux/{TREE}")

#: What the selftest's build reads, relative to the top of the tree.
SELFTEST_FILES = (
    "tools/testing/selftests/iommu/iommufd.c",
    "tools/testing/selftests/iommu/iommufd_fail_nth.c",
    "tools/testing/selftests/iommu/iommufd_utils.h",
    "tools/testing/selftests/iommu/Makefile",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "tools/testing/selftests/lib.mk",
    "drivers/iommu/iommufd/iommufd_test.h",
    "include/uapi/linux/iommufd.h",
    "include/uapi/linux/vfio.h",
)
#: The uapi headers ``make headers`` installs for it (the rest come from the system).
UAPI_HEADERS = ("linux/iommufd.h", "linux/vfio.h")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/iommulab`` (``~/.cache/iommulab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iommulab"


def _complete(top: Path) -> bool:
    return all((top / f).is_file() for f in SELFTEST_FILES)


def find_source(tarball: Path = TARBALL, tree: Path | None = None) -> Path:
    """The top of a 6.12 tree holding :data:`SELFTEST_FILES`: ``$IOMMULAB_LINUX_SRC``,
    the extracted tree, or a cache filled from ``tarball`` (one pass over the archive,
    only those members). FileNotFoundError when none is there."""
    candidates = [Path(p) for p in (os.environ.get("IOMMULAB_LINUX_SRC"),) if p]
    candidates += [tree or EXTRACTED, cache_dir() / TREE]
    for top in candidates:
        if _complete(top):
            return top
    if not tarball.is_file():
        raise FileNotFoundError(f"no {TREE} tree at {candidates} and no {tarball}")
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f"{TREE}/{f}" for f in SELFTEST_FILES}
    with tarfile.open(tarball, "r:xz") as tar:
        for member in tar:
            if member.name in wanted:
                tar.extract(member, dest, filter="data")
                wanted.discard(member.name)
                if not wanted:
                    break
    if wanted:
        raise FileNotFoundError(f"{tarball} lacks {sorted(wanted)}")
    return dest / TREE


# scripts/headers_install.sh: drop the kernel-only annotations and rename the guards.
_HEADERS_INSTALL = (
    (re.compile(r"([\s(])(__user|__force|__iomem)\s"), r"\1"),
    (re.compile(r"__attribute_const__(\s|$)", re.M), r"\1"),
    (re.compile(r"^#include <linux/compiler(|_types)\.h>", re.M), ""),
    (re.compile(r"(^|[^a-zA-Z0-9])__packed([^a-zA-Z0-9_]|$)", re.M),
     r"\1__attribute__((packed))\2"),
    (re.compile(r"#(ifndef|define|endif\s*/[*])\s*_UAPI", re.M), r"#\1 "),
)


def install_headers(top: Path, dest: Path) -> Path:
    """``make headers`` for :data:`UAPI_HEADERS` only: ``dest/usr/include``, the
    directory lib.mk's ``KHDR_INCLUDES`` names. (These two headers hold no
    ``__KERNEL__`` blocks, so the ``unifdef`` step has nothing to remove; checked.)"""
    inc = dest / "usr" / "include"
    for name in UAPI_HEADERS:
        text = (top / "include" / "uapi" / name).read_text()
        if "__KERNEL__" in text:
            raise ValueError(f"{name} has __KERNEL__ blocks; it needs unifdef")
        for pattern, repl in _HEADERS_INSTALL:
            text = pattern.sub(repl, text)
        out = inc / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.is_file() or out.read_text() != text:
            out.write_text(text)
    return inc


#: Names 6.12.118's selftest uses that its own headers lack (backported tests).
COMPAT_NAMES = {"include/uapi/linux/iommufd.h": ("in_data_type", "IOMMU_HW_INFO_TYPE_DEFAULT",
                                                 "IOMMU_HW_INFO_FLAG_INPUT_TYPE"),
                "drivers/iommu/iommufd/iommufd_test.h": ("MOCK_FLAGS_DEVICE_PASID",
                                                         "MOCK_PASID_WIDTH")}
COMPAT_HEADER = Path(__file__).with_name("kselftest_compat.h")


def needs_compat(top: Path) -> bool:
    """Whether the tree's headers lack a name of :data:`COMPAT_NAMES` (the Debian
    6.12.118 tree does: its selftest was updated past its uapi and does not build)."""
    return any(name not in (top / hdr).read_text()
               for hdr, names in COMPAT_NAMES.items() for name in names)


def selftest_cflags(khdr_includes: Path, *, compat: bool = False) -> list[str]:
    """gcc's flags from ``iommu/Makefile`` (``-Wall -O2 -Wno-unused-function
    $(KHDR_INCLUDES)``) and ``lib.mk`` (``-D_GNU_SOURCE=``); the clang-only warnings
    lib.mk adds are left out, as it does for gcc. No LDLIBS: 6.12's test links none.
    ``compat`` force-includes the model's own ``kselftest_compat.h``."""
    extra = ["-include", str(COMPAT_HEADER)] if compat else []
    return ["-Wall", "-O2", "-Wno-unused-function", "-isystem", str(khdr_includes),
            "-D_GNU_SOURCE=", *extra]


def build_selftest(out: Path, *, top: Path | None = None, static: bool = False,
                   cc: str | None = None, name: str = "iommufd") -> Path:
    """Compile the selftest ``name`` (``iommufd`` or ``iommufd_fail_nth``) into
    ``out/name``, rebuilt only when missing or older than its source."""
    top = top or find_source()
    gcc = cc or shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is not installed")
    out.mkdir(parents=True, exist_ok=True)
    inc = install_headers(top, out)
    exe = out / (name + ("-static" if static else ""))
    src = top / f"tools/testing/selftests/iommu/{name}.c"
    if not exe.is_file() or exe.stat().st_mtime < max(src.stat().st_mtime,
                                                      COMPAT_HEADER.stat().st_mtime):
        cmd = [gcc, *selftest_cflags(inc, compat=needs_compat(top)),
               *(["-static"] if static else []), str(src), "-o", str(exe)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@dataclass(frozen=True)
class TapResult:
    """One ``ok``/``not ok`` line: ``name`` is the harness's ``fixture.variant.test``;
    ``directive`` is ``SKIP``, ``XFAIL``, ``XPASS`` or ``""``; ``reason`` what followed."""

    number: int
    name: str
    ok: bool
    directive: str
    reason: str

    @property
    def outcome(self) -> str:
        """``pass``, ``fail``, ``skip``, ``xfail`` or ``xpass``."""
        if self.directive:
            return self.directive.lower()
        return "pass" if self.ok else "fail"


# ksft_test_result_code(): "<ok|not ok> N NAME[ # DIRECTIVE ][reason]" ("#  " for none)
_TAP_LINE = re.compile(r"^(ok|not ok) (\d+) (\S+)(?: # (SKIP|XFAIL|XPASS|error)?\s*(.*))?$")


def parse_tap(text: str) -> list[TapResult]:
    """The result lines of a kselftest run, in order; diagnostics (``#``) are skipped.
    The harness prints ``not ok N NAME # error`` only for its own errors."""
    results = []
    for line in text.splitlines():
        m = _TAP_LINE.match(line)
        if m:
            directive = m.group(4) or ""
            results.append(TapResult(int(m.group(2)), m.group(3), m.group(1) == "ok",
                                     "" if directive == "error" else directive,
                                     m.group(5) or ""))
    return results


@dataclass
class SelftestRun:
    """One run of the selftest under ``iommulab exec``: its results and output, the exit
    status, the model ioctls answered, the model's own errors, wall time, the CPU time of
    the supervisor (model included) and of the program tree."""

    results: list[TapResult]
    plan: int | None
    status: int
    ioctls: int
    handler_errors: list[BaseException]
    stdout: str
    stderr: str
    wall: float
    cpu_model: float
    cpu_program: float

    def outcome(self) -> dict[str, str]:
        """Test name -> ``pass``/``fail``/``skip``/``xfail``/``xpass``."""
        return {r.name: r.outcome for r in self.results}


def run_selftest(machine: Machine, exe: Path, args: Sequence[str] = (), *,
                 timeout: float = 600) -> SelftestRun:
    """Run the built selftest (harness options in ``args``, e.g. ``-f iommufd``) with
    ``machine`` answering its /dev/iommu calls."""
    from ..exec import run_exec

    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        start, cpu = time.perf_counter(), time.process_time()
        with out.open("wb") as fo, err.open("wb") as fe:
            result = run_exec(machine, [str(exe), *args], timeout=timeout, stdout=fo,
                              stderr=fe, cwd=str(exe.parent))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = out.read_text(errors="replace")
        plan = re.search(r"^1\.\.(\d+)$", text, re.M)
        return SelftestRun(parse_tap(text), int(plan.group(1)) if plan else None,
                           result.status, result.ioctls, list(result.handler_errors), text,
                           err.read_text(errors="replace"), wall, cpu,
                           kids_after.ru_utime + kids_after.ru_stime - kids.ru_utime
                           - kids.ru_stime)
