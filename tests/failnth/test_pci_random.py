"""The fuzzer's vfio-pci device calls under fail-nth, checked as the sweeps check one call.

:class:`iommulab.testing.fuzz.gen.Gen` makes the device ioctls and region accesses a
VMM would (GET_IRQ_INFO, SET_IRQS of every index, action and data type with the
process's eventfds, RESET, the hot-reset pair, config space and BAR 0 reads and writes,
mutated at times) on QEMU's edu device opened from its group. Each call runs with the
n-th allocation point failed (n drawn at random); a call that fails at the injected
point must give the kernel's errno and leave :func:`.state.snapshot` as it was, so
interrupt contexts, eventfd references, host vectors and BAR maps are all compared.
After the run the process exits and nothing may be left.
"""

from __future__ import annotations

import errno
import random
import struct

import pytest

from iommulab.testing import check_invariants, leak_snapshot
from iommulab.testing.fuzz.gen import Gen
from iommulab.testing.fuzz.world import Op, World, WorldConfig
from iommulab.vfio import uapi as vu

from .scenarios import _msi_doorbell_stays
from .state import State, diff, snapshot
from .sweep import SWALLOWED, site_errno

OPS = 1000
PCI_ONLY = ("VFIO_DEVICE_", "pread", "pwrite", "eventfd")


def _open_edu(w: World) -> int:
    """Process 0 with edu's group in a type1v2 container, edu's device fd and two
    eventfds."""
    p = w.procs[0]
    dev = next(iter(w.machine.devices.values()))
    c = p.open("/dev/vfio/vfio")
    g = p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, vu.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, vu.VFIO_SET_IOMMU, vu.VFIO_TYPE1v2_IOMMU)
    fd = p.ioctl(g, vu.VFIO_GROUP_GET_DEVICE_FD, bytearray(dev.bdf.encode() + b"\0"))
    p.eventfd()
    p.eventfd(1)
    return int(fd)


def _keeps_block_unset(w: World, op: Op) -> bool:
    """A SET_IRQS of eventfds on MSI while MSI is enabled: ``vfio_msi_set_block`` frees
    each vector's handler before it requests the new one and, on a failure, unsets every
    vector of the block it reached, so the block may be left without triggers (the
    kernel's behaviour, which the comparison cannot follow)."""
    if op.call != "ioctl" or op.args[1] != vu.VFIO_DEVICE_SET_IRQS or \
            not isinstance(op.args[2], bytes) or len(op.args[2]) < vu.IRQ_SET.size:
        return False
    _, flags, index, _, _ = vu.IRQ_SET.unpack_from(op.args[2])
    vdev = next(iter(w.machine.vfio_devices.values()))
    return vdev.pci is not None and index == vu.VFIO_PCI_MSI_IRQ_INDEX and \
        vdev.pci.irqs.irq_type == index and bool(flags & vu.VFIO_IRQ_SET_DATA_EVENTFD)


def _state(w: World) -> State:
    return _msi_doorbell_stays(snapshot(w.machine, [w.procs[0]]))


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_device_calls_under_fail_nth_leave_no_trace(platform: str, kernel: str) -> None:
    w = World(WorldConfig(platform, kernel, devices=1, edu=True))
    fresh = leak_snapshot(w.machine)
    w.spawn_initial()
    fd = _open_edu(w)
    rng = random.Random(f"{platform}-{kernel}")
    gen = Gen(w, rng, mutate=0.15, wild=0.0)
    fail = w.machine.mem.fail_nth
    injected = 0
    for i in range(OPS):
        ops = gen._device_ioctl(0, fd)
        for op in ops:
            before = _state(w)
            fail.arm(rng.choice([1, 1, 1, 2, 2, 3, 4]))
            try:
                w.apply(op)
            except OSError as e:
                site = fail.fired
                if site is None:
                    continue
                injected += 1
                assert e.errno == site_errno(site), (i, op, site, e)
                if not _keeps_block_unset(w, op):
                    after = _state(w)
                    assert after == before, (i, op, site, "; ".join(diff(before, after)))
            else:
                assert fail.fired is None or fail.fired.startswith(SWALLOWED), (i, op)
            finally:
                fail.disarm()
            check_invariants([w.machine, *w.procs])
    assert injected >= 30, f"only {injected} injected failures reached a device call"
    w.procs[0].exit()
    assert not (d := fresh.diff(leak_snapshot(w.machine, processes=w.procs))), d


def test_an_enabled_msi_block_is_left_unset_by_a_failed_set() -> None:
    """The exception above, pinned: with MSI enabled and vector 0 signalling an eventfd,
    a SET_IRQS giving it another eventfd whose ``request_irq`` fails (ENOMEM) leaves
    vector 0 with no handler and the old eventfd put, as ``vfio_msi_set_vector_signal``
    does."""
    w = World(WorldConfig("x86-vtd", "6.12", devices=1, edu=True))
    w.spawn_initial()
    fd = _open_edu(w)
    p = w.procs[0]
    efd, other = sorted(f for f, x in p.files.items() if type(x).__name__ == "EventFdFile")
    flags = vu.VFIO_IRQ_SET_DATA_EVENTFD | vu.VFIO_IRQ_SET_ACTION_TRIGGER

    def set_msi(e: int) -> Op:
        return Op(0, "ioctl", (fd, vu.VFIO_DEVICE_SET_IRQS, vu.IRQ_SET.pack(
            vu.IRQ_SET.size + 4, flags, vu.VFIO_PCI_MSI_IRQ_INDEX, 0, 1) + struct.pack("<i", e)))
    w.apply(set_msi(efd))
    irqs = w.machine.vfio_devices[next(iter(w.machine.devices))].pci.irqs
    old = irqs.ctx[0].trigger
    assert old is not None and old.kref == 2
    fail = w.machine.mem.fail_nth
    fail.arm(4)  # memdup_user, the context, its name, the irqaction
    with pytest.raises(OSError) as info:
        w.apply(set_msi(other))
    fail.disarm()
    assert info.value.errno == errno.ENOMEM and fail.fired == "kzalloc(irqaction)"
    assert irqs.ctx == {} and old.kref == 1 and not w.machine.host_msi.handlers
    assert _keeps_block_unset(w, set_msi(other))
    w.apply(set_msi(other))  # the vector can be set again
    p.exit()
