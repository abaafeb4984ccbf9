"""TargetMm on this very process: the mirror of its mappings, pinned frames whose bytes
are its memory, and the mirror's upkeep outside the fail-nth count."""

from __future__ import annotations

import mmap
import os

import numpy as np

from iommulab.exec.usermem import SharedFiles, TargetMm
from iommulab.machine import Machine

PAGE = 4096


def _target(m: Machine) -> TargetMm:
    return TargetMm(m.mem, m.kernel, os.getpid(), SharedFiles(m.mem))


def test_pinned_frames_are_the_programs_bytes() -> None:
    m = Machine("mock")
    mm = _target(m)
    buf = mmap.mmap(-1, 4 * PAGE)  # page aligned, anonymous, this process's own
    view = np.frombuffer(buf, dtype=np.uint8)
    addr = view.ctypes.data
    buf[:] = bytes(range(256)) * (4 * PAGE // 256)
    runs = mm.pin_user_page_runs(addr, 4, True)
    assert sum(n for _, n in runs) == 4
    pa = runs[0][0] * PAGE
    assert m.mem.read(pa + 10, 6) == bytes(range(10, 16))  # a device read
    buf[20:24] = b"late"  # the CPU writes after the pin: the device sees it
    assert m.mem.read(pa + 20, 4) == b"late"
    m.mem.write(pa + 100, b"from DMA")  # a device write lands in our memory
    assert buf[100:108] == b"from DMA"
    assert mm.read(addr + 100, 8) == b"from DMA"  # uaccess goes to the memory itself
    mm.unpin_user_page_runs(runs)
    mm.close()
    assert m.mem.external is not None and len(m.mem.external) == 0
    del view
    buf.close()


def test_mirror_follows_unmaps() -> None:
    m = Machine("mock")
    mm = _target(m)
    buf = mmap.mmap(-1, 2 * PAGE)
    view = np.frombuffer(buf, dtype=np.uint8)
    addr = view.ctypes.data
    mm.sync()
    assert mm.find_vma(addr) is not None
    del view
    buf.close()  # munmap: the next look at the mirror reads the maps again
    mm.stale = True
    vma = mm.find_vma(addr)
    assert vma is None or not vma.start <= addr < vma.end
    mm.close()


def test_mirror_upkeep_takes_no_fail_nth_point() -> None:
    m = Machine("mock")
    mm = _target(m)
    m.mem.fail_nth.arm(1)  # the very next allocation point would fail
    calls = m.mem.fail_nth.calls
    mm.sync()  # makes dozens of model VMAs: none of them is the kernel's allocation
    assert len(mm.vmas) > 5
    assert not m.mem.fail_nth.triggered and m.mem.fail_nth.calls == calls
    assert m.mem.fail_nth.armed
    m.mem.fail_nth.disarm()
    mm.close()


def test_shared_pages_pinned_by_a_gone_process_keep_their_bytes() -> None:
    """A child pins a MAP_SHARED buffer it inherited and exits: the pages stay the
    file's (shmem) page cache, so device reads and writes still reach the bytes the
    parent sees (the selftest's ``fork_gone``); before, they read as zeros."""
    m = Machine("mock")
    shared = SharedFiles(m.mem)
    parent = TargetMm(m.mem, m.kernel, os.getpid(), shared)
    buf = mmap.mmap(-1, 4 * PAGE)  # MAP_SHARED | MAP_ANONYMOUS: inherited by the fork
    view = np.frombuffer(buf, dtype=np.uint8)
    addr = view.ctypes.data
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only waits to be told to go
        os.read(r, 1)
        os._exit(0)
    try:
        child = TargetMm(m.mem, m.kernel, pid, shared)
        runs = child.pin_user_page_runs(addr, 4, True)
        pa = runs[0][0] * PAGE
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    child.close()  # the child's exit: its mirror goes, its pins stay
    buf[PAGE:PAGE + 5] = b"after"
    assert m.mem.read(pa + PAGE, 5) == b"after"
    m.mem.write(pa + 2 * PAGE, b"dma")
    assert buf[2 * PAGE:2 * PAGE + 3] == b"dma"
    child.unpin_user_page_runs(runs)
    parent.close()
    shared.close()
    assert m.mem.external is not None and len(m.mem.external) == 0
    del view
    buf.close()
