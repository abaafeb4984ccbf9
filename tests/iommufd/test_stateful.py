"""Hypothesis state machine: MAP, COPY, UNMAP (exact and arbitrary ranges), extra domains
attached and detached, and access pins on two IOASes of the mock platform, against a plain
model of areas and ``iopt_pages``.

Invariants after every step: every domain of an IOAS maps exactly the model's areas to
the right bytes (MD_CHECK_MAP), each buffer page is pinned once per ``iopt_pages`` that
covers it (however many areas, domains and accesses share those pages), and the USER
charge and pinned_vm equal the pins.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from .selftest_lib import MOCK_APERTURE_START, PAGE_SIZE, MockDomain, Selftest

NPAGES = 24
NEEDS_PIN = 1 << 0


@dataclass
class Area:
    ioas: int
    iova: int
    length: int
    offset: int  # byte offset into the buffer
    pages_id: int  # the iopt_pages (one per MAP, shared by COPY)


class IoasMachine(RuleBasedStateMachine):
    areas = Bundle("areas")

    def __init__(self) -> None:
        super().__init__()
        self.t = Selftest(cap_ipc_lock=False)
        self.buf = self.t.p.mmap(NPAGES * PAGE_SIZE, "anon", populate=True)
        self.ioas = [self.t.ioas_alloc(), self.t.ioas_alloc()]
        self.domains: dict[int, list[MockDomain]] = {i: [self.t.mock_domain(i)] for i in self.ioas}
        self.model: list[Area] = []
        self.next_pages = 0
        self.access = self.t.create_access(self.ioas[0], NEEDS_PIN)
        self.pinned: list[tuple[int, Area]] = []  # (item, area)

    def teardown(self) -> None:
        self.t.close()

    # -- rules ------------------------------------------------------------------------------
    @rule(target=areas, which=st.integers(0, 1), first=st.integers(0, NPAGES - 1),
          npages=st.integers(1, 6))
    def map(self, which: int, first: int, npages: int) -> Area:
        npages = min(npages, NPAGES - first)
        ioas = self.ioas[which]
        iova = self.t.map(ioas, self.buf + first * PAGE_SIZE, npages * PAGE_SIZE)
        area = Area(ioas, iova, npages * PAGE_SIZE, first * PAGE_SIZE, self.next_pages)
        self.next_pages += 1
        self.model.append(area)
        return area

    @rule(target=areas, src=areas)
    def copy(self, src: Area) -> Area:
        if src not in self.model:
            return src
        dst_ioas = self.ioas[1] if src.ioas == self.ioas[0] else self.ioas[0]
        iova = self.t.copy(dst_ioas, src.ioas, src.iova, src.length,
                           flags=6)  # READ | WRITE, automatic IOVA
        area = Area(dst_ioas, iova, src.length, src.offset, src.pages_id)
        self.model.append(area)
        return area

    @rule(area=consumes(areas))
    def unmap(self, area: Area) -> None:
        if area not in self.model:
            return
        self._drop_pins(area)
        assert self.t.unmap(area.ioas, area.iova, area.length) == area.length
        self.model.remove(area)

    @rule(which=st.integers(0, 1), start=st.integers(0, 64), npages=st.integers(1, 64))
    def unmap_range(self, which: int, start: int, npages: int) -> None:
        """Whole areas only; an area sticking out stops it with ENOENT (those before are
        gone); ENOENT when nothing is there."""
        ioas = self.ioas[which]
        lo = MOCK_APERTURE_START + start * PAGE_SIZE
        hi = lo + npages * PAGE_SIZE - 1
        hit = sorted((a for a in self.model if a.ioas == ioas and a.iova <= hi and
                      lo <= a.iova + a.length - 1), key=lambda a: a.iova)
        expect_ok = bool(hit)
        gone: list[Area] = []
        for a in hit:
            if a.iova < lo or a.iova + a.length - 1 > hi:
                expect_ok = False
                break
            gone.append(a)
        for a in gone:
            self._drop_pins(a)
        try:
            unmapped = self.t.unmap(ioas, lo, hi - lo + 1)
        except OSError as err:
            assert not expect_ok and err.errno == errno.ENOENT
        else:
            assert expect_ok and unmapped == sum(a.length for a in gone)
        for a in gone:
            self.model.remove(a)

    @rule(which=st.integers(0, 1))
    def attach_domain(self, which: int) -> None:
        ioas = self.ioas[which]
        if len(self.domains[ioas]) < 3:
            self.domains[ioas].append(self.t.mock_domain(ioas))

    @precondition(lambda self: any(len(d) > 1 for d in self.domains.values()))
    @rule(which=st.integers(0, 1))
    def detach_domain(self, which: int) -> None:
        ioas = self.ioas[which]
        if len(self.domains[ioas]) > 1:
            self.t.destroy(self.domains[ioas].pop(0).stdev_id)

    @rule(area=areas)
    def access_pin(self, area: Area) -> None:
        if area not in self.model or area.ioas != self.ioas[0]:
            return
        item = self.t.access_pages(self.access, area.iova, area.length,
                                   self.buf + area.offset)
        self.pinned.append((item, area))

    @precondition(lambda self: bool(self.pinned))
    @rule(data=st.data())
    def access_unpin(self, data: st.DataObject) -> None:
        item, _area = self.pinned.pop(data.draw(st.integers(0, len(self.pinned) - 1)))
        self.t.destroy_access_pages(self.access, item)

    def _drop_pins(self, area: Area) -> None:
        """The access's unmap op unpins what it held in an area being unmapped."""
        self.pinned = [(i, a) for i, a in self.pinned if a is not area]

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def domains_map_the_model(self) -> None:
        for area in self.model:
            for md in self.domains[area.ioas]:
                self.t.check_map(md.hwpt_id, area.iova, self.buf + area.offset, area.length)

    @invariant()
    def tables_are_consistent(self) -> None:
        ctx = self.t.p.files[self.t.fd].ctx  # type: ignore[attr-defined]
        ctx._check()  # every IOAS's table, and the objects' users
        assert not ctx.warnings

    @invariant()
    def each_page_pinned_once_per_pages(self) -> None:
        per_page: list[set[int]] = [set() for _ in range(NPAGES)]
        for a in self.model:
            for page in range(a.offset // PAGE_SIZE, (a.offset + a.length) // PAGE_SIZE):
                per_page[page].add(a.pages_id)
        for page, ids in enumerate(per_page):
            self.t.check_refs(self.buf + page * PAGE_SIZE, PAGE_SIZE, len(ids))
        pins = sum(len(ids) for ids in per_page)
        assert self.t.p.mm.pinned_vm == pins
        assert self.t.p.user.locked_vm == pins


IoasMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                         deadline=None)
TestIoasStateful = IoasMachine.TestCase
