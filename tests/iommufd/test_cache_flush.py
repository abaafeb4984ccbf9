"""The cache flush policies for non-coherent domains (lab), on the workload of
:mod:`iommulab.workload.noncoherent` and on random sequences of attach, detach, map, unmap,
COPY and non-snooping DMA: mainline (no flush) shows stale reads and unflushed unpins; each
of the three policies shows none, at its own cost."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Machine
from iommulab.iommufd import uapi as u
from iommulab.iommufd.cache_flush import POLICIES
from iommulab.vfio import uapi as v
from iommulab.workload.noncoherent import _Vmm, run_noncoherent

RAM_PAGES = 1024  # run_noncoherent's 4 MiB of guest RAM
ROUNDS = 8
BUF = 4  # pages per stream buffer, half of them written by each GPU


def test_mainline_has_stale_reads_and_unflushed_unpins() -> None:
    r = run_noncoherent("none", rounds=ROUNDS)
    assert r.flush_calls == 0
    # every GPU read of RAM or of a fresh buffer finds the CPU's writes still in the cache,
    # except the one after the guest's own clflush
    assert r.stale_reads == r.dma_reads - 1
    # each buffer a GPU wrote (phase 2: one GPU, phase 3: both write the same half)
    assert r.unflushed_unpins == 2 * ROUNDS * BUF // 2


def test_policies_are_correct_and_cost_what_they_should() -> None:
    """Flushed pages by point, worked out by hand from the policies' rules:

    - map: RAM when GPU 0 attaches (all), RAM when GPU 1's HWPT is filled (all), each
      buffer of phases 2 and 3 (all), RAM when the NIC is re-plugged (sticky: the bit is
      set; count: the IOAS still has non-coherent domains; every: the NIC is coherent);
    - unmap: every flushes per non-coherent domain (1 then 2 per buffer), count once per
      buffer while non-coherent domains exist;
    - detach: count and every flush RAM as each GPU domain leaves; sticky does not;
    - unpin: sticky flushes each flagged buffer and RAM at the end.
    """
    streamed = 2 * ROUNDS * BUF
    want = {
        "sticky": {"map": 3 * RAM_PAGES + streamed, "unpin": RAM_PAGES + streamed},
        "count": {"map": 3 * RAM_PAGES + streamed, "unmap": streamed,
                  "detach": 2 * RAM_PAGES},
        "every": {"map": 2 * RAM_PAGES + streamed, "unmap": ROUNDS * BUF + 2 * ROUNDS * BUF,
                  "detach": 2 * RAM_PAGES},
    }
    for policy, pages in want.items():
        r = run_noncoherent(policy, rounds=ROUNDS)
        assert (r.stale_reads, r.stale_lines, r.unflushed_unpins) == (0, 0, 0), policy
        assert r.flush_pages_by_point == pages, policy


def test_unknown_policy_is_refused() -> None:
    m = Machine("mock", ram="64M")
    with pytest.raises(ValueError, match="'lazy'"):
        m.cache_flush.policy = "lazy"


def test_dma_cc_extension_follows_the_hwpts() -> None:
    """VFIO_DMA_CC_IOMMU on the compat IOAS: 1 while every HWPT enforces coherency."""
    m = Machine("x86-vtd", ram="256M")
    m.add_pci_device("0000:00:02.0", iommu_unit=m.add_iommu_unit(snoop_control=True))
    m.add_pci_device("0000:00:03.0")
    p = m.spawn_process()
    vmm = _Vmm(p)
    ioas = vmm.ioas()
    p.ioctl(vmm.fd, u.IOMMU_VFIO_IOAS, bytearray(struct.pack("<IIHH", 12, ioas, 1, 0)))
    nic = vmm.plug(0, ioas)
    assert p.ioctl(vmm.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU) == 1
    gpu = vmm.plug(1, ioas)
    assert p.ioctl(vmm.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU) == 0
    vmm.unplug(gpu)
    assert p.ioctl(vmm.fd, v.VFIO_CHECK_EXTENSION, v.VFIO_DMA_CC_IOMMU) == 1
    vmm.unplug(nic)
    p.exit()


_OPS = st.lists(st.tuples(st.sampled_from(["plug", "unplug", "map", "unmap", "copy",
                                           "dma", "cpu"]), st.integers(0, 2)),
                min_size=8, max_size=30)


@pytest.mark.parametrize("policy", POLICIES[1:])
@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_random_sequences_stay_clean(ops: list[tuple[str, int]], policy: str) -> None:
    """Whatever the order of attaches, detaches, maps, unmaps, copies into a second IOAS,
    CPU writes and non-snooping DMA, no policy lets a stale read or an unflushed unpin
    through. Device 0 (coherent: snoop control) and 1 (not) share the first IOAS, device 2
    (not coherent, its own HWPT) sits on the second, which gets COPYs of the buffers."""
    m = Machine("x86-vtd", ram="128M")
    m.cache_flush.policy = policy
    sc = m.add_iommu_unit(snoop_control=True)
    devs = [m.add_pci_device("0000:00:02.0", iommu_unit=sc, snoop=False),
            m.add_pci_device("0000:00:03.0", snoop=False),
            m.add_pci_device("0000:00:04.0", snoop=False)]
    p = m.spawn_process(cap_ipc_lock=True)
    vmm = _Vmm(p)
    ioas, other = vmm.ioas(), vmm.ioas()
    cdevs: dict[int, int] = {}
    bufs: dict[int, tuple[int, int]] = {}  # slot -> (va, iova)
    copies: dict[int, int] = {}  # slot -> iova in the other IOAS
    for op, n in ops:
        if op == "plug" and n not in cdevs:
            cdevs[n] = vmm.plug(n, other if n == 2 else ioas, own_hwpt=n == 2)
        elif op == "unplug" and n in cdevs:
            vmm.unplug(cdevs.pop(n))
        elif op == "map" and n not in bufs:
            va = p.mmap(8192, populate=True)
            p.write(va, bytes([n + 1]) * 8192)
            bufs[n] = (va, vmm.map(ioas, va, 8192))
        elif op == "unmap" and n in bufs:
            vmm.unmap(ioas, bufs.pop(n)[1], 8192)  # the memory stays: a COPY may need it
        elif op == "copy" and n in bufs and n not in copies:
            out = bytearray(u.IOAS_COPY.pack(40, 6, other, ioas, 8192, 0, bufs[n][1]))
            p.ioctl(vmm.fd, u.IOMMU_IOAS_COPY, out)
            copies[n] = u.IOAS_COPY.unpack(out)[5]
        elif op == "dma" and n in cdevs:
            iovas = list(copies.values()) if n == 2 else [iova for _, iova in bufs.values()]
            for iova in iovas:
                devs[n].dma_read(iova, 8192)
                devs[n].dma_write(iova + 4096, b"device" * 8)
        elif op == "cpu" and n in bufs:
            va = bufs[n][0]
            p.write(va, b"cpu")
            p.clflush(va, 3)  # the guest driver's own flush around live DMA
    p.exit()
    cache = m.mem.cpu_cache
    assert cache is not None
    assert (cache.stats.stale_reads, cache.stats.unflushed_unpins) == (0, 0), \
        cache.stats.events
    assert m.mem.pins.pins == 0
