"""The fault-injection files a program sees under ``iommulab exec``: ``fail-nth`` read and
written as ``proc_fail_nth_read``/``proc_fail_nth_write`` (fs/proc/base.c) per thread, the
debugfs knobs of lib/fault-inject.c and mm/failslab.c, and the points an ``IOAS_MAP``
takes of pages the program already has (adopted from its page tables before GUP)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.exec.faultinject import kstrtobool, kstrtoll, kstrtoull
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

from ..iommufd.selftest_lib import Selftest

Build = Callable[..., Path]

#: what 6.12 answers (ret errno data; "|" is a newline of the data)
FILE_LINES = """\
open 0 0
initial 2 0 0|
set_dec 3 0
read_dec 3 0 12|
read_at_1 2 0 2|
read_at_3 0 0
read_short 1 0 1
set_hex 4 0
read_hex 3 0 31|
set_oct 3 0
read_oct 3 0 15|
set_plus 2 0
read_plus 2 0 5|
bad_neg -1 22
bad_text -1 22
bad_two_newlines -1 22
bad_empty -1 22
bad_range -1 34
max 10 0
read_max 11 0 4294967295|
long_ok 42 0
read_long 2 0 7|
bad_addr -1 14
bad_read_addr -1 14
neg_pos -1 22
disarm 1 0
leader_set 1 0
leader_read 2 0 3|
leader_write_rdonly -1 9
disarm 1 0
thread_own 2 0 0|
thread_set 1 0
after_thread 2 0 0|
parent_set 1 0
child_own 2 0 0|
parent_kept 2 0 4|
disarm 1 0
open_child 0 0
arm_child 1 0
child_armed_by_parent 2 0 6|
disarm 1 0
opendir 0 0
entries failslab fail_page_alloc fail_iommufd
ignore_gfp_wait 2 0 Y|
set_ignore_gfp_wait 1 0
ignore_gfp_wait_now 2 0 N|
bad_bool -1 22
verbose 2 0 2|
set_verbose 1 0
verbose_now 2 0 0|
set_times 2 0
times_now 3 0 -1|
nonesuch -1 2
dir_rdwr -1 21
dir_read -1 21
getdents_small -1 22
getdents_first 48 0 .
knob_as_dir -1 20
ioctl_fail_nth -1 25""".splitlines()

PAGES = 16


def map_points_from_python(kernel: str) -> list[int]:
    """From Python, the points of: IOAS_MAP (a mock domain attached) of 16 pages not yet
    faulted in, of 16 present private pages, of 16 present shared pages; a second
    thread's IOAS_ALLOC (and the main thread's none meanwhile); a forked child's IOAS_MAP
    of the private pages its parent touched; the release of the iommufd at its close."""
    m = Machine("mock", kernel=kernel)
    t = Selftest.__new__(Selftest)
    t.m, t.p = m, m.spawn_process(cap_ipc_lock=True)
    t.fd = t.p.open("/dev/iommu")
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    out, bufs = [], []
    for populate, shared in ((False, False), (True, False), (True, True)):
        buf = t.p.mmap(PAGES * 4096, populate=populate, shared=shared)
        fail = m.mem.fail_nth
        fail.arm(1000)
        iova = t.map(ioas, buf, PAGES * 4096, flags=6)
        out.append(1000 - fail.remaining)
        fail.disarm()
        t.unmap(ioas, iova, PAGES * 4096)
        bufs.append(buf)
    fail = m.mem.fail_nth
    fail.arm(1000)
    t.ioas_alloc()  # another thread's IOAS_ALLOC
    out += [1000 - fail.remaining, 0]  # ... and none of the main thread's points
    fail.disarm()
    child = Selftest.__new__(Selftest)
    child.m, child.p, child.fd = m, t.p.fork(), t.fd
    fail = m.mem.fail_nth
    fail.arm(1000)
    iova = child.map(ioas, bufs[1], PAGES * 4096, flags=6)
    out.append(1000 - fail.remaining)
    fail.disarm()
    child.unmap(ioas, iova, PAGES * 4096)
    child.p.exit()
    t.map(ioas, bufs[1], PAGES * 4096, flags=6)  # the private touched pages, kept
    fail = m.mem.fail_nth
    fail.arm(1000)
    t.p.close(t.fd)
    out.append(1000 - fail.remaining)
    fail.disarm()
    return out


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_fail_nth_and_debugfs_files(build: Build, tmp_path: Path, kernel: str) -> None:
    m = Machine("mock", kernel=kernel)
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("fail_nth_files"))], timeout=60, stdout=f)
    lines = [ln.rstrip() for ln in out.read_text().splitlines()]
    assert result.handler_errors == [] and result.status == 0
    assert lines[:len(FILE_LINES)] == FILE_LINES
    # memory the program touched is adopted before the pin: no fault points for it
    points = [int(ln.split()[3]) for ln in lines[len(FILE_LINES):]]
    want = map_points_from_python(kernel)
    assert want[0] > want[1], want  # faulting pages in takes points of its own
    assert [ln.split()[:3] for ln in lines[len(FILE_LINES):]] == [
        ["map_untouched", "0", "0"], ["map_touched", "0", "0"],
        ["map_shared_touched", "0", "0"], ["thread_alloc_points", "0", "0"],
        ["main_alloc_points", "0", "0"], ["map_after_fork", "0", "0"],
        ["close_points", "0", "0"]]
    # the points of the iommufd's release (its mock device's device_del, the unmap) are
    # the closing thread's
    assert want[3] > 0 and want[6] > 0
    assert points == want
    # a counter is set by each write to a fail-nth file, of the thread it names
    assert [v for _, _, v in result.fail_nth_writes][:3] == [12, 31, 15]
    assert m.mem.fail_nth.remaining == 0  # nothing stays armed between calls
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_debugfs_hides_only_what_it_serves(build: Build, tmp_path: Path) -> None:
    """Without CONFIG_IOMMUFD_TEST (not the mock platform) there is no fail_iommufd."""
    m = Machine("x86-vtd")
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("fail_nth_files"))], timeout=60, stdout=f)
    assert result.handler_errors == []
    assert "entries failslab fail_page_alloc" in out.read_text().splitlines()


@pytest.mark.parametrize(("text", "value"), [
    (b"0", 0), (b"12\n", 12), (b"+7", 7), (b"0x1F", 31), (b"017", 15), (b"0x", None),
    (b"", None), (b"1\n\n", None), (b" 1", None), (b"18446744073709551615", (1 << 64) - 1),
    (b"18446744073709551616", "ERANGE"), (b"1\0junk", 1), (b"08", None)])
def test_kstrtoull(text: bytes, value: int | str | None) -> None:
    """lib/kstrtox.c: base 0 takes 0x (hex) and 0 (octal), one trailing newline."""
    if isinstance(value, int):
        assert kstrtoull(text) == value
    else:
        with pytest.raises(OSError) as e:
            kstrtoull(text)
        assert e.value.errno == (34 if value == "ERANGE" else 22)


def test_kstrtoll_and_kstrtobool() -> None:
    assert kstrtoll(b"-1\n") == -1 and kstrtoll(b"-0x10") == -16
    for bad in (b"9223372036854775808", b"-9223372036854775809"):
        with pytest.raises(OSError):
            kstrtoll(bad)
    assert [kstrtobool(s) for s in (b"Y", b"t", b"1", b"on", b"N", b"f", b"0", b"off")] \
        == [True] * 4 + [False] * 4
    for bad in (b"", b"x", b"o", b"ox"):
        with pytest.raises(OSError):
            kstrtobool(bad)
