"""Lab: a VMM with a GPU that does not snoop, through iommufd, under each cache flush policy.

The machine is x86-vtd with two DMAR units: the NIC sits behind a unit with
snoop control, so its HWPT enforces coherency (SNP in every PTE) even though
the NIC sets No Snoop; the two GPUs sit behind QEMU's unit without it, so
their HWPTs (the second GPU allocates its own with IOMMU_HWPT_ALLOC) are
non-coherent and their reads and writes bypass the CPU cache. One IOAS holds
the guest's RAM, which the VMM wrote before mapping it.

Phases, the same for every policy (:data:`iommulab.iommufd.cache_flush.POLICIES`):

1. the NIC attaches, RAM is mapped, GPU 0 attaches and reads all of RAM;
2. ``rounds`` buffers are written by the CPU, mapped, read and written by
   GPU 0, unmapped and freed (the next buffer may get the same frames);
3. GPU 1 attaches too and the stream runs again over two non-coherent domains;
4. the NIC is re-plugged onto a HWPT of its own (a new coherent domain filled from
   the others; to the IOAS it would share GPU 0's automatic HWPT as that is, since a
   HWPT keeps the coherency it was allocated with);
5. both GPUs detach and the stream runs a third time, over the NIC's domain only;
6. RAM is unmapped.

Where the guest changes RAM while a GPU can see it, the VMM flushes what it
wrote (a guest driver's job for non-coherent DMA); what the kernel must cover
is the boundary: data written before a map and device writes before an unpin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..iommufd import uapi as u
from ..vfio import uapi as v

if TYPE_CHECKING:
    from ..devices import DmaDevice
    from ..machine import Machine, Process

__all__ = ["WORKLOAD_RAM", "NoncoherentResult", "run_noncoherent"]

_PAGE = 4096
_RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE


@dataclass(frozen=True)
class NoncoherentResult:
    policy: str
    stale_reads: int  # device reads that returned data the CPU had not written back
    stale_lines: int
    unflushed_unpins: int  # pages unpinned with non-snooped device writes not flushed
    flush_calls: int
    flush_pages: int
    flush_pages_by_point: dict[str, int]
    dma_reads: int
    #: saved states of the domains with guest RAM mapped, by the devices on each
    states: dict[str, dict[str, object]] = field(default_factory=dict)


class _Vmm:
    """The VMM's side: iommufd and device cdev ioctls with their real structs."""

    def __init__(self, p: Process) -> None:
        self.p = p
        self.fd = p.open("/dev/iommu")
        self.own_hwpts: dict[int, int] = {}  # cdev -> the HWPT allocated for it

    def _ioctl(self, fd: int, request: int, buf: bytes) -> bytearray:
        arg = bytearray(buf)
        self.p.ioctl(fd, request, arg)
        return arg

    def ioas(self) -> int:
        out = self._ioctl(self.fd, u.IOMMU_IOAS_ALLOC, u.IOAS_ALLOC.pack(12, 0, 0))
        return int(u.IOAS_ALLOC.unpack(out)[2])

    def plug(self, n: int, ioas: int, *, own_hwpt: bool = False) -> int:
        """Open device cdev ``n``, bind it and attach it to ``ioas`` (to a HWPT of its own
        with ``own_hwpt``, else to an automatic one); its fd."""
        cdev = self.p.open(f"/dev/vfio/devices/vfio{n}")
        out = self._ioctl(cdev, v.VFIO_DEVICE_BIND_IOMMUFD,
                          v.BIND_IOMMUFD.pack(16, 0, self.fd, 0))
        pt = ioas
        if own_hwpt:
            out = self._ioctl(self.fd, u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
                48, 0, v.BIND_IOMMUFD.unpack(out)[3], ioas, 0, 0, 0, 0, 0, 0, 0))
            pt = int(u.HWPT_ALLOC.unpack(out)[4])
            self.own_hwpts[cdev] = pt
        self._ioctl(cdev, v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, v.ATTACH_IOMMUFD_PT.pack(16, 0, pt, 0))
        return cdev

    def unplug(self, cdev: int) -> None:
        """Close the cdev (detach, unbind), then destroy the HWPT the VMM allocated for it."""
        self.p.close(cdev)
        if cdev in self.own_hwpts:
            self._ioctl(self.fd, u.IOMMU_DESTROY, u.DESTROY.pack(8, self.own_hwpts.pop(cdev)))

    def map(self, ioas: int, va: int, length: int) -> int:
        out = self._ioctl(self.fd, u.IOMMU_IOAS_MAP,
                          u.IOAS_MAP.pack(40, _RW, ioas, 0, va, length, 0))
        return int(u.IOAS_MAP.unpack(out)[6])

    def unmap(self, ioas: int, iova: int, length: int) -> None:
        self._ioctl(self.fd, u.IOMMU_IOAS_UNMAP, u.IOAS_UNMAP.pack(24, ioas, iova, length))


def _stream(vmm: _Vmm, ioas: int, gpus: Sequence[DmaDevice], rounds: int, pages: int
            ) -> int:
    """``rounds`` buffers: CPU-written, mapped, read and half rewritten by each GPU,
    unmapped and freed; the DMA reads done."""
    p, size, reads = vmm.p, pages * _PAGE, 0
    for i in range(rounds):
        buf = p.mmap(size, populate=True)
        p.write(buf, bytes([i & 0xFF]) * size)
        iova = vmm.map(ioas, buf, size)
        for gpu in gpus:
            gpu.dma_read(iova, size)
            gpu.dma_write(iova + size // 2, bytes([0xA0 | (i & 0xF)]) * (size // 2))
            reads += 1
        vmm.unmap(ioas, iova, size)
        p.munmap(buf, size)
    return reads


def _save_domains(m: Machine, names: Sequence[str]) -> dict[str, dict[str, object]]:
    """The saved state of each distinct domain the devices are attached to, named by the
    devices on it (guest RAM mapped, both GPUs attached)."""
    from ..inspect import save_domain
    on: dict[int, list[str]] = {}
    domains: dict[int, tuple[Any, Any]] = {}
    for name, dev in zip(names, m.devices.values(), strict=True):
        group = m.core.groups[dev.iommu_group]
        if group.domain is not None and group.domain.pgtbl is not None:
            domains[id(group.domain)] = (group.domain, group)
            on.setdefault(id(group.domain), []).append(name)
    return {"+".join(on[k]): save_domain(d, name="+".join(on[k]), resv=g.resv_regions())
            for k, (d, g) in domains.items()}


#: RAM of the workload's machine
WORKLOAD_RAM = 1 << 30


def run_noncoherent(policy: str, *, rounds: int = 16, ram: int = 4 << 20,
                    buffer_pages: int = 4, save_state: bool = False) -> NoncoherentResult:
    """The workload of the module docstring under ``policy``."""
    from ..machine import Machine
    m = Machine("x86-vtd", ram=WORKLOAD_RAM)
    m.cache_flush.policy = policy
    sc_unit = m.add_iommu_unit(snoop_control=True)
    m.add_pci_device("0000:00:02.0", iommu_unit=sc_unit, snoop=False)  # the NIC
    gpus = [m.add_pci_device(f"0000:00:0{3 + i}.0", snoop=False) for i in range(2)]
    p = m.spawn_process(cap_ipc_lock=True)
    vmm = _Vmm(p)
    ioas = vmm.ioas()
    nic_fd = vmm.plug(0, ioas)
    guest = p.mmap(ram, "thp", populate=True)
    p.write(guest, b"firmware" * (ram // 8))  # the VMM loads the guest image
    ram_iova = vmm.map(ioas, guest, ram)
    gpu_fds = [vmm.plug(1, ioas)]
    gpus[0].dma_read(ram_iova, ram)
    reads = 1
    p.write(guest + 4096, b"guest driver update")  # the guest changes RAM under the GPU ...
    p.clflush(guest + 4096, 19)  # ... and flushes, as a driver of non-coherent DMA must
    gpus[0].dma_read(ram_iova + 4096, 19)
    reads += 1 + _stream(vmm, ioas, gpus[:1], rounds, buffer_pages)
    gpu_fds.append(vmm.plug(2, ioas, own_hwpt=True))
    states = _save_domains(m, ("nic", "gpu0", "gpu1")) if save_state else {}
    reads += _stream(vmm, ioas, gpus, rounds, buffer_pages)
    vmm.unplug(nic_fd)
    vmm.plug(0, ioas, own_hwpt=True)
    for fd in gpu_fds:
        vmm.unplug(fd)
    reads += _stream(vmm, ioas, [], rounds, buffer_pages)
    vmm.unmap(ioas, ram_iova, ram)
    p.exit()
    cache = m.mem.cpu_cache
    assert cache is not None and m.mem.pins.pins == 0
    flushes = m.cache_flush.stats
    return NoncoherentResult(policy, cache.stats.stale_reads, cache.stats.stale_lines,
                             cache.stats.unflushed_unpins, flushes.total_calls,
                             flushes.total_pages, dict(flushes.pages), reads, states)

