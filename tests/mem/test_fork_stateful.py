"""fork, writes, pins, device writes, munmap and exit in any order, against a plain model
of what each process must read: private memory is each process's own from the fork on,
MAP_SHARED memory is one for all, and a device writing a pinned page changes what the
pinning process reads (the page it pinned stays its own). After every step the mapcounts
are the processes' mappings and an exclusive page has no other mapping; at the end no
frame or pin is left."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab import Machine, Process
from iommulab.errors import OutOfMemory

K = 4096
REGIONS = {"anon": ("anon", 16 * K), "thp": ("thp", 4 << 20), "huge": ("hugetlb-2M", 2 << 20),
           "file": ("file", 8 * K), "shared": ("shared", 8 * K)}


@dataclass
class Pin:
    proc: Process
    region: str
    page: int
    pfns: np.ndarray


class ForkMachine(RuleBasedStateMachine):
    kernel = "6.12"

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine("x86-vtd", ram="48M", kernel=self.kernel)
        p = self.m.spawn_process()
        self.va: dict[str, int] = {}
        self.shared = bytearray(REGIONS["shared"][1])
        mfd = p.memfd_create("f", REGIONS["file"][1])
        for name, (backing, size) in REGIONS.items():
            if backing == "file":
                self.va[name] = p.mmap(size, fd=mfd, private=True)
            elif backing == "shared":
                self.va[name] = p.mmap(size, shared=True)
            else:
                self.va[name] = p.mmap(size, backing)
        p.close(mfd)
        self.procs = [p]
        # what each process reads: None where it has unmapped the page
        self.model: dict[int, dict[str, list[bytes | None]]] = {
            id(p): {n: [bytes(K)] * (size // K) for n, (_, size) in REGIONS.items()
                    if n != "shared"}}
        self.pins: list[Pin] = []

    def _pages(self, p: Process, region: str) -> list[bytes | None]:
        return self.model[id(p)][region]

    @rule(i=st.integers(0, 3))
    def fork(self, i: int) -> None:
        if len(self.procs) >= 4:
            return
        parent = self.procs[i % len(self.procs)]
        try:
            child = parent.fork()
        except OutOfMemory:  # pinned hugetlb pages to copy and no free one
            return
        self.procs.append(child)
        self.model[id(child)] = {n: list(v) for n, v in self.model[id(parent)].items()}

    @rule(i=st.integers(0, 3), region=st.sampled_from(sorted(REGIONS)), page=st.integers(0, 1023),
          byte=st.integers(1, 255))
    def write(self, i: int, region: str, page: int, byte: int) -> None:
        p = self.procs[i % len(self.procs)]
        npages = REGIONS[region][1] // K
        page %= npages
        if region != "shared" and self._pages(p, region)[page] is None:
            return
        try:
            p.write(self.va[region] + page * K + byte, bytes([byte]) * 3)
        except OutOfMemory:
            return
        self._store(p, region, page, byte, bytes([byte]) * 3)

    def _store(self, p: Process, region: str, page: int, at: int, data: bytes) -> None:
        if region == "shared":
            self.shared[page * K + at:page * K + at + len(data)] = data
            return
        old = self._pages(p, region)[page]
        assert old is not None
        self._pages(p, region)[page] = old[:at] + data + old[at + len(data):]

    @rule(i=st.integers(0, 3), region=st.sampled_from(sorted(REGIONS)), page=st.integers(0, 1023),
          write=st.booleans())
    def pin(self, i: int, region: str, page: int, write: bool) -> None:
        p = self.procs[i % len(self.procs)]
        page %= REGIONS[region][1] // K
        if region != "shared" and self._pages(p, region)[page] is None:
            return
        va = self.va[region] + page * K
        try:
            pfns = p.mm.pin_user_pages(va, 1, write)
        except OutOfMemory:
            return
        assert int(pfns[0]) == self._pfn(p, va)
        self.pins.append(Pin(p, region, page, pfns))

    @precondition(lambda self: self.pins)
    @rule(k=st.integers(0, 63), byte=st.integers(1, 255))
    def device_write(self, k: int, byte: int) -> None:
        pin = self.pins[k % len(self.pins)]
        self.m.mem.write(int(pin.pfns[0]) << 12 | 7, bytes([byte]))
        if pin.region == "shared" or (pin.proc in self.procs
                                      and self._pages(pin.proc, pin.region)[pin.page]):
            self._store(pin.proc, pin.region, pin.page, 7, bytes([byte]))  # every process
            # maps the one shmem page; a private page only its pinner

    @precondition(lambda self: self.pins)
    @rule(k=st.integers(0, 63))
    def unpin(self, k: int) -> None:
        pin = self.pins.pop(k % len(self.pins))
        pin.proc.mm.unpin_user_pages(pin.pfns)

    @rule(i=st.integers(0, 3), region=st.sampled_from(["anon", "thp", "huge"]),
          page=st.integers(0, 1023), n=st.integers(1, 700))
    def munmap(self, i: int, region: str, page: int, n: int) -> None:
        p = self.procs[i % len(self.procs)]
        npages = REGIONS[region][1] // K
        if region == "huge":
            page, n = 0, npages
        page %= npages
        n = min(n, npages - page)
        p.munmap(self.va[region] + page * K, n * K)
        self._pages(p, region)[page:page + n] = [None] * n

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 3))
    def exit(self, i: int) -> None:
        p = self.procs.pop(i % len(self.procs))
        p.exit()
        del self.model[id(p)]

    def _pfn(self, p: Process, va: int) -> int:
        vma = p.mm.find_vma(va)
        assert vma is not None
        return int(vma.pfns()[(va - vma.start) >> 12])

    @invariant()
    def reads_match_the_model(self) -> None:
        for p in self.procs:
            assert p.read(self.va["shared"], len(self.shared)) == self.shared
            for region, pages in self.model[id(p)].items():
                for page, want in enumerate(pages):
                    if want is not None and (want != bytes(K) or page % 64 == 0):
                        assert p.read(self.va[region] + page * K, K) == want, (region, page)

    @invariant()
    def pins_hold_the_pinning_process_own_pages(self) -> None:
        for pin in self.pins:
            if pin.proc in self.procs and (pin.region == "shared"
                                           or self._pages(pin.proc, pin.region)[pin.page]):
                va = self.va[pin.region] + pin.page * K
                assert self._pfn(pin.proc, va) == int(pin.pfns[0])

    @invariant()
    def counts_are_consistent(self) -> None:
        for p in self.procs:
            p.mm._check()
        self.m.mem._check()

    def teardown(self) -> None:
        for pin in self.pins:
            pin.proc.mm.unpin_user_pages(pin.pfns)
        for p in self.procs:
            p.exit()
        mem = self.m.mem
        assert mem.frames.free_frames == mem.frames.total_frames
        assert mem.pins.pins == 0 and mem.anon.maps.total == 0
        mem._check()


class ForkMachine70(ForkMachine):
    kernel = "7.0"  # reuses pages of THPs mapped by 4K pages (from 6.15)


for _machine in (ForkMachine, ForkMachine70):
    _machine.TestCase.settings = settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
test_fork_and_cow_against_a_plain_model = ForkMachine.TestCase
test_fork_and_cow_against_a_plain_model_7_0 = ForkMachine70.TestCase
