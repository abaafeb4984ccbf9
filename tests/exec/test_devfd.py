"""A device fd's read/write paths under ``iommulab exec`` (read/write at the file
position, the vector forms, pread/pwrite at region offsets, the kernel's errors, a
buffer that faults part-way) and the program's own eventfds signalled by the model."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.exec.realeventfd import RealEventFdCtx, RealEventFdFile, eventfd_id
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

Build = Callable[..., Path]
BDF = "0000:00:02.0"
EINVAL, EFAULT, EBADF, ENODEV, EAGAIN = (errno.EINVAL, errno.EFAULT, errno.EBADF,
                                         errno.ENODEV, errno.EAGAIN)

EXPECTED = [
    "bar0_info 0 3 100000 0",  # READ | WRITE: no MMAP under exec
    "lseek_cfg 0 0", "read_id 4 1234 11e8", "pos_after_read 4 0",
    "write_liveness 4 0", "pos_after_write 8 0",
    "pwritev_fact 4 0",  # one segment: 5! computed
    "preadv 8 f0f0f0f0 120",  # liveness ~0x0f0f0f0f, then 5! = 120
    "readv_cfg 8 1234 10", "pos_after_readv 8 0",  # vendor, then revision at 6+2
    f"pread_bar_end -1 {EINVAL}",  # vfio_pci_bar_rw: at the BAR's end
    "pread_bar_tail 8 0",  # cut to the BAR
    f"pwrite_rom -1 {EINVAL}", f"pread_rom -1 {EINVAL}",  # no ROM on edu
    f"pread_bar1 -1 {EINVAL}", f"pread_no_region -1 {EINVAL}",
    f"pread_negative -1 {EINVAL}",
    f"pread_bad_buffer -1 {EFAULT}", f"pread_kernel_buffer -1 {EFAULT}",
    f"pread_readonly_buffer -1 {EFAULT}",
    f"pwrite_faulting -1 {EFAULT}", "dma_src 40100",  # the access before the fault done
    f"read_group -1 {EINVAL}", f"write_container -1 {EINVAL}",  # no read/write ops
    f"mmap_bar0 -1 {EINVAL}", f"mmap_private -1 {EINVAL}",  # vfio_pci_core_mmap
    f"mmap_container -1 {ENODEV}",
    f"trigger_pipe -1 {EINVAL}", f"trigger_closed -1 {EBADF}",  # eventfd_ctx_fdget
    "trigger_msi 0 0", "trigger_req 0 0",
    f"read_before -1 {EAGAIN}", "poll 1 0",
    "semaphore_reads 3",  # three MSIs, one count each on the real eventfd
    "after_child 8 0",  # a forked child's interrupt
    "msi_off 0 0", f"read_after_off -1 {EAGAIN}",  # the trigger is gone
    "done"]


@pytest.mark.parametrize("static", [False, True])
def test_device_fd_paths_and_eventfds(build: Build, tmp_path: Path, static: bool) -> None:
    m = Machine("x86-vtd")
    dev = m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    own_fds = set(os.listdir("/proc/self/fd"))
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("devfd", static=static)), "0", BDF], timeout=60,
                          stdout=f)
    assert result.handler_errors == []
    assert result.status == 0
    assert out.read_text().splitlines() == EXPECTED
    assert dev.model is not None and dev.model.dma_src == 0x40100
    assert set(os.listdir("/proc/self/fd")) == own_fds
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_real_eventfd_context() -> None:
    """The model's context of a real eventfd: a signal adds one to the real counter,
    saturating without blocking; the real file goes with the last model reference."""
    efd = os.eventfd(0)
    mine = os.dup(efd)
    freed: list[RealEventFdCtx] = []
    try:
        key = eventfd_id(mine)
        assert key is not None and key == eventfd_id(efd)
        ctx = RealEventFdCtx(mine, freed.append)
        f = RealEventFdFile(ctx)
        assert f.ctx is ctx and ctx.kref == 1
        ctx.get()
        ctx.signal()
        ctx.signal()
        assert ctx.count == 2  # the real counter, from fdinfo
        ctx.count = 0  # eventfd_ctx_do_read: a real read
        ctx.signal()
        ctx.signal()
        assert os.eventfd_read(efd) == 2 and ctx.signals == 4
        os.eventfd_write(efd, (1 << 64) - 2)  # full: a write would block
        ctx.signal()
        assert os.eventfd_read(efd) == (1 << 64) - 2
        ctx.put()
        assert freed == [ctx] and ctx.fd == -1 and ctx.kref == 1
        with pytest.raises(OSError) as e:
            os.fstat(mine)
        assert e.value.errno == errno.EBADF
        ctx.signal()  # nothing held: nothing written
        os.set_blocking(efd, False)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
    finally:
        os.close(efd)
    r, w = os.pipe()
    assert eventfd_id(r) is None  # not an eventfd
    os.close(r)
    os.close(w)


def test_intx_with_a_real_unmask_eventfd(build: Build, tmp_path: Path) -> None:
    """INTx: the trigger is the program's eventfd, and so is the unmask eventfd the
    model waits on (virqfd): the program's write to it unmasks the line, which, still
    asserted, fires again; after the unmask eventfd is torn down its writes stay
    unread. Same answers as the model gives the same calls from Python."""
    m = Machine("x86-vtd")
    m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    own_fds = set(os.listdir("/proc/self/fd"))
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("intx")), "0", BDF], timeout=60, stdout=f)
    assert result.handler_errors == [] and result.status == 0
    assert out.read_text().splitlines() == [
        "trigger 0 0", "unmask_fd 0 0", f"unmask_fd_again -1 {errno.EBUSY}",
        "first 1 0", f"while_masked -1 {EAGAIN}",  # automasked
        "write_unmask 8 0", "poll 1 0", "after_unmask 1 0",
        f"unmask_consumed -1 {EAGAIN}",  # virqfd_wakeup read it
        "unmask_off 0 0", f"third -1 {EAGAIN}",  # masked again after the last one
        "write_unmask_off 8 0", "poll_off 0 0", "unmask_kept 1 0", "done"]
    assert set(os.listdir("/proc/self/fd")) == own_fds
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
