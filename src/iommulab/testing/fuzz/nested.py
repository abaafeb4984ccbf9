"""The generator's nested-translation steps: a nest-parent HWPT on an IOAS that holds
"guest RAM", nested HWPTs over it with driver data (VT-d ``struct iommu_hwpt_vtd_s1``
on a scalable-mode unit, the selftest's ``struct iommu_hwpt_selftest`` on the mock, an
SMMUv3 vSTE through a vIOMMU on 7.0), a guest first stage written into the process's
memory behind the IOAS, attach and replace onto nested HWPTs, DMA through both stages,
HWPT_INVALIDATE with each driver's entries (well-formed and mutated), the vIOMMU
objects of 7.0 (vIOMMU, vDEVICE, vEVENTQ, fault queue) and unmaps of the parent's IOAS
under live nested HWPTs.

Everything becomes plain :class:`~.world.Op` s (``write`` for the guest's memory and
the ioctls' arrays), so a finding replays without this module.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ...drivers.mock import (
    IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
    IOMMU_VEVENTQ_TYPE_SELFTEST,
    IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST,
    IOMMU_VIOMMU_TYPE_SELFTEST,
)
from ...drivers.mock_pt import IOMMU_HWPT_DATA_SELFTEST
from ...drivers.smmuv3.regs import CD0, CD1, STE0, STE1, SteConfig
from ...iommufd import uapi as iu
from ...iommufd.eventq import FaultObject
from ...iommufd.file import IommufdFile
from ...iommufd.objects import Device, HwptNested, HwptPaging, Ioas, IommufdObject
from ...iommufd.sources import UserSource
from ...iommufd.viommu import Vdevice, Veventq, Viommu
from ...kernel import LINUX_7_0
from ...pgtable.vtd_fs import FL_A, FL_D, FirstStageBuilder
from ...uapi import iommufd as h
from ...vfio.device import VfioDeviceFile
from . import specs
from .values import U32, U64, boundary, fill_bytes
from .world import Op

if TYPE_CHECKING:
    from ...devices import DmaDevice
    from .gen import Gen

__all__ = ["NestedSteps"]

Obj = TypeVar("Obj", bound=IommufdObject)

PAGE = 4096
_VTD_S1_BYTES = 24  # struct iommu_hwpt_vtd_s1 / iommu_hwpt_vtd_s1_invalidate
_SMMU_CMD_BYTES = 16  # struct iommu_viommu_arm_smmuv3_invalidate
# SMMUv3 vSTE words a guest may set (V, Config, S1 table fields) and CMDQ opcodes
_STE_V, _STE_CFG_BYPASS = 1, 0b100 << 1
_SETUP_MUTATE = 0.08
_SMMU_OPS = [0x10, 0x11, 0x12, 0x13, 0x05, 0x06, 0x40, 0x30, 0x2A, 0x03, 0x46]


@dataclass
class _Guest:
    """A range of an IOAS that holds user memory: guest-physical ``gpa`` (the IOVA),
    ``length`` bytes at ``uptr`` in the process."""

    ioas: int
    gpa: int
    length: int
    uptr: int

    def va(self, gpa: int) -> int:
        return self.uptr + gpa - self.gpa


@dataclass
class _ArmS1Builder:
    """A guest's SMMUv3 stage 1 in its memory: a CD (4K granule, 48-bit, ASID 5) at
    ``root`` (what the vSTE's S1ContextPtr names) and a 4-level AArch64 table under it;
    :meth:`map` writes table descriptors and a 4K page descriptor (AF, EL0, AP[2] for
    read-only), as the Arm ARM's VMSAv8-64 stage-1 formats give them."""

    alloc: Callable[[], int]
    write_u64: Callable[[int, int], None]
    levels: int = 4
    root: int = 0
    pgd: int = 0
    _tables: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root, self.pgd = self.alloc(), self.alloc()
        self.write_u64(self.root, CD0.encode(
            T0SZ=16, TG0=0, IR0=1, OR0=1, SH0=3, EPD1=1, V=1, IPS=5, AA64=1, R=1, A=1,
            ASET=1, ASID=5))
        # guest RAM at an IPA past 52 bits (an IOAS area up high) cannot be named
        self.write_u64(self.root + 8, CD1.encode(TTB0=self.pgd & ((1 << 52) - 1)))

    def map(self, iova: int, gpa: int, *, write: bool = True, user: bool = True,
            extra: int = 0) -> None:
        table = self.pgd
        for level in range(3):
            idx = (iova >> (39 - 9 * level)) & 511
            nxt = self._tables.get((table, idx))
            if nxt is None:
                nxt = self._tables[(table, idx)] = self.alloc()
                self.write_u64(table + idx * 8, nxt | 3)
            table = nxt
        leaf = gpa | 3 | 1 << 10 | (1 << 6 if user else 0) | (0 if write else 1 << 7)
        self.write_u64(table + ((iova >> 12) & 511) * 8, leaf)


@dataclass
class _Table:
    """A stage 1 the generator wrote: its root (VT-d: the first-stage table; SMMUv3:
    the CD), and the IOVAs its leaves map."""

    ctx: int
    root: int
    guest: _Guest
    builder: FirstStageBuilder | _ArmS1Builder
    iovas: list[tuple[int, int]] = field(default_factory=list)


def _root_of(domain: object) -> int | None:
    """The guest table a nested domain walks: VT-d's ``pgtbl_addr``, SMMUv3's CD."""
    cfg = getattr(domain, "s1_cfg", None)
    if cfg is not None:
        return int(cfg.pgtbl_addr)
    ste = getattr(domain, "ste", None)
    return STE0["S1CTXPTR"].get(ste[0]) if ste is not None else None


class NestedSteps:
    """The nested family of :class:`~.gen.Gen`: ``vtd`` (a scalable-mode VT-d unit),
    ``mock`` or ``smmu`` (arm64-smmuv3) decide which driver data the steps build."""

    def __init__(self, gen: Gen) -> None:
        self.g = gen
        self.tables: list[_Table] = []
        self.cursor = 0  # the next guest page a table goes to (wraps)

    @property
    def vtd(self) -> bool:
        return self.g.w.config.vtd_scalable

    @property
    def viommu_cmds(self) -> bool:
        """The vIOMMU commands exist (7.0) and the driver has vIOMMUs."""
        return self.g.kernel >= LINUX_7_0 and not self.vtd

    # -- state -----------------------------------------------------------------------------
    def guest(self, pi: int, f: IommufdFile) -> _Guest | None:
        """A mapped range of one of ``f``'s IOASes backed by process ``pi``'s memory (at
        least two pages), mostly one a nest parent translates."""
        g = self.g
        mm = g.w.procs[pi].mm
        parents = {o.ioas.id for o in f.ctx.objects.values()
                   if isinstance(o, HwptPaging) and o.nest_parent}
        out = []
        for o in f.ctx.objects.values():
            if not isinstance(o, Ioas):
                continue
            for a in o.iopt.areas():
                src = a.pages.source if a.pages is not None else None
                if not isinstance(src, UserSource) or src.mm is not mm:
                    continue
                uptr = src.uptr + a.start_byte
                if a.length >= 2 * PAGE:
                    out.append((o.id in parents, _Guest(o.id, a.iova, a.length, uptr)))
        best = [x for p, x in out if p] if any(p for p, _ in out) and \
            g.rng.random() < 0.85 else [x for _, x in out]
        return g.rng.choice(best) if best else None

    def parents(self, f: IommufdFile) -> list[HwptPaging]:
        return [o for o in f.ctx.objects.values() if isinstance(o, HwptPaging) and o.nest_parent]

    def objs(self, f: IommufdFile, kind: type[Obj]) -> list[Obj]:
        return [o for o in f.ctx.objects.values() if isinstance(o, kind)]

    def cmd(self, pi: int, fd: int, f: IommufdFile, req: int, values: dict[str, int],
            note: str, *, setup: bool = False) -> list[Op]:
        """The iommufd command, noted; a ``setup`` step (guest RAM, a parent, a nested
        HWPT, an attach) is mutated less, so sequences get deep."""
        return self.g.ioctl(pi, fd, specs.IOMMUFD[req], values, note, file=f,
                            mutate=_SETUP_MUTATE if setup else None)

    def _progress(self, f: IommufdFile) -> int:
        return 2 * bool(self.parents(f)) + bool(self.g.ids(f, Device))

    # -- the step ------------------------------------------------------------------------------
    def step(self, pi: int) -> list[Op]:
        g = self.g
        rng = g.rng
        fds = g.files(pi, IommufdFile)
        if not fds:
            return [Op(pi, "open", ("/dev/iommu",))]
        # mostly the iommufd furthest along: a nest parent, else a bound device
        ranked = sorted(fds, key=lambda x: -self._progress(g.file(pi, x, IommufdFile)))
        fd = ranked[0] if rng.random() < 0.85 else g.pick(fds)
        f = g.file(pi, fd, IommufdFile)
        if not g.ids(f, Ioas):
            return g._fd_alloc(pi, fd, f)
        need = g._need_device(pi, fd, f)
        if need is not None:
            return need
        guest = self.guest(pi, f)
        if guest is None or rng.random() < 0.03:
            return self.map_guest(pi, fd, f)
        if not self.parents(f) or rng.random() < 0.06:
            return self.alloc_parent(pi, fd, f, guest)
        steps = {"nested": 3, "table": 0 if g.mock else 2.5, "attach": 3, "dma": 6,
                 "invalidate": 3, "unmap": 0.8, "dirty": 1.2, "destroy": 0.8, "remap": 0.5,
                 "fault": 0.6}  # a fault queue a nested HWPT can name (FAULT_ID_VALID)
        if self.viommu_cmds:
            steps |= {"viommu": 2, "vdevice": 1.5, "veventq": 1, "viommu_inv": 2}
        name = rng.choices(list(steps), list(steps.values()))[0]
        ops: list[Op] = getattr(self, "s_" + name)(pi, fd, f, guest)
        return ops

    # -- guest RAM and the parent -------------------------------------------------------------
    def map_guest(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        """Guest RAM: an anonymous mapping, then IOAS_MAP of it at a fixed IOVA."""
        g = self.g
        rng = g.rng
        length = rng.choice([16, 32, 64]) * PAGE
        vmas = [v for v in g.w.procs[pi].mm.vmas
                if v.writable and not v.pfnmap and v.end - v.start >= length]
        if not vmas:
            return [Op(pi, "mmap", (length, "anon", "rw"))]
        vma = rng.choice(vmas)
        base = 0x1000_0000 if g.mock else 1 << 32
        iova = base + rng.randrange(64) * (1 << 21)
        ioas = g.pick(g.ids(f, Ioas))
        return self.cmd(pi, fd, f, iu.IOMMU_IOAS_MAP, {
            "flags": iu.IOMMU_IOAS_MAP_FIXED_IOVA | iu.IOMMU_IOAS_MAP_READABLE |
            iu.IOMMU_IOAS_MAP_WRITEABLE, "ioas_id": ioas, "user_va": vma.start,
            "length": length, "iova": iova}, "guest RAM", setup=True)

    def alloc_parent(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        g = self.g
        flags = iu.IOMMU_HWPT_ALLOC_NEST_PARENT
        if g.rng.random() < (0.35 if self.vtd else 0.05):  # SMMUv3 refuses the pair
            flags |= iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
        return self.cmd(pi, fd, f, iu.IOMMU_HWPT_ALLOC, {
            "flags": flags, "dev_id": g.obj_id(f, Device),
            "pt_id": guest.ioas if g.rng.random() < 0.9 else g.obj_id(f, Ioas)},
            "nest parent", setup=True)

    def s_remap(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        return self.map_guest(pi, fd, f)

    # -- the guest's first stage --------------------------------------------------------------
    def _page(self, guest: _Guest) -> int:
        """The next 4K guest page for a table, in the lower half of guest RAM (wrapping:
        a new table can overwrite an old one)."""
        n = max(1, (guest.length // PAGE) // 2)
        gpa = -(-guest.gpa // PAGE) * PAGE + (self.cursor % n) * PAGE
        self.cursor += 1
        return gpa

    def s_table(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """A guest stage 1 (VT-d: FirstStageBuilder; SMMUv3: a CD and its table) written
        into the process's memory behind ``guest``: a zeroed page per table, one entry
        write per entry, leaves to guest pages (at times outside guest RAM: a
        second-stage fault)."""
        g = self.g
        rng = g.rng
        ops: list[Op] = []

        def alloc() -> int:
            gpa = self._page(guest)
            ops.append(Op(pi, "write", (guest.va(gpa), bytes(PAGE)), note="guest table page"))
            return gpa

        def write_u64(gpa: int, value: int) -> None:
            ops.append(Op(pi, "write", (guest.va(gpa), struct.pack("<Q", value & U64))))

        old = [t for t in self.tables if t.ctx == id(f.ctx) and t.guest == guest]
        if old and rng.random() < 0.5:  # more leaves in a table the guest has
            table = rng.choice(old)
            fs = table.builder
            fs.alloc, fs.write_u64 = alloc, write_u64
        else:
            fs = FirstStageBuilder(alloc, write_u64, levels=5 if rng.random() < 0.1 else 4) \
                if self.vtd else _ArmS1Builder(alloc, write_u64)
            table = _Table(id(f.ctx), fs.root, guest, fs)
            self.tables.append(table)
            del self.tables[:-16]
        half = guest.length // PAGE // 2
        for _ in range(rng.choice([1, 1, 2, 3])):
            iova = rng.choice([0, 0x4000_0000, 0x7F_FFFF_F000 & ~0xFFF,
                               rng.randrange(1 << 20) * PAGE])
            gpa = -(-guest.gpa // PAGE) * PAGE + (half + rng.randrange(half)) * PAGE
            if rng.random() < 0.1:
                gpa = boundary(rng, 52) & ~0xFFF
            extra = rng.choice([0, FL_A, FL_A | FL_D])
            fs.map(iova, gpa, write=rng.random() < 0.8, user=rng.random() < 0.9, extra=extra)
            table.iovas.append((iova, PAGE))
        if rng.random() < 0.1:  # a hostile guest: a random entry somewhere in the table
            write_u64(fs.root + rng.randrange(512) * 8, rng.getrandbits(64))
        return ops

    def _root(self, f: IommufdFile, guest: _Guest) -> int:
        rng = self.g.rng
        mine = [t.root for t in self.tables if t.ctx == id(f.ctx)]
        r = rng.random()
        if mine and r < 0.8:
            return int(rng.choice(mine))
        if r < 0.85:
            return guest.gpa + rng.randrange(guest.length // PAGE) * PAGE
        return rng.choice([0, guest.gpa + 8, guest.gpa + guest.length, boundary(rng),
                           1 << 52, U64 & ~0xFFF])

    # -- nested HWPTs ---------------------------------------------------------------------
    def _data(self, pi: int, f: IommufdFile, guest: _Guest) -> tuple[int, bytes]:
        """The driver's data type and bytes: VT-d S1, the selftest's iotlb, a vSTE."""
        rng = self.g.rng
        if self.vtd:
            root = self._root(f, guest)
            table = next((t for t in self.tables if t.root == root), None)
            aw = 57 if table is not None and table.builder.levels == 5 else 48
            flags, rsvd = rng.choice([0, 0, 0, 1, 4]), 0
            if rng.random() < 0.3:  # hostile: a flag, width or reserved field wrong
                r = rng.random()
                if r < 0.4:
                    flags = rng.choice([2, 7, 8]) if rng.random() < 0.8 else boundary(rng)
                elif r < 0.8:
                    aw = rng.choice([105 - aw, 39, 0, 64, U32])
                else:
                    rsvd = boundary(rng, 32) or 1
            return h.IOMMU_HWPT_DATA_VTD_S1, struct.pack("<QQII", flags, root & U64, aw, rsvd)
        if self.g.mock:
            return IOMMU_HWPT_DATA_SELFTEST, struct.pack(
                "<I", rng.choice([0, 0xBEEF, 0xFFFF_FFFF, rng.getrandbits(32)]))
        w0 = STE0.encode(V=1, CONFIG=SteConfig.S1_TRANS,
                         S1CTXPTR=self._root(f, guest) & ((1 << 52) - 1) & ~0x3F)
        w1 = STE1.encode(S1DSS=2, S1CIR=1, S1COR=1, S1CSH=3)
        if rng.random() < 0.3:  # hostile: another Config, EATS, a bit nesting forbids
            w0 = rng.choice([0, w0, _STE_V | _STE_CFG_BYPASS, _STE_V, _STE_V | (0b110 << 1),
                             rng.getrandbits(64)])
            w1 = rng.choice([w1, 0, 1 << 28, 2 << 28, rng.getrandbits(64)])
        return h.IOMMU_HWPT_DATA_ARM_SMMUV3, struct.pack("<QQ", w0 & U64, w1)

    def s_nested(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """HWPT_ALLOC of a nested HWPT: the data written first, over a nest parent (or a
        vIOMMU on 7.0), data_len mostly the struct's (else short, long with a non-zero
        tail, or none)."""
        g = self.g
        rng = g.rng
        viommus = self.objs(f, Viommu)
        if not (self.vtd or g.mock or viommus) and rng.random() < 0.8:
            return self.s_viommu(pi, fd, f, guest)  # SMMUv3 nests on a vIOMMU only
        if not g.mock and not any(t.ctx == id(f.ctx) for t in self.tables) and \
                rng.random() < 0.95:
            return self.s_table(pi, fd, f, guest)  # a table for pgtbl_addr first
        dtype, data = self._data(pi, f, guest)
        if viommus and rng.random() < (0.9 if not (self.vtd or g.mock) else 0.4):
            pt = rng.choice(viommus).id
        else:
            pt = g._hwpt_id(f, g.pick(self.parents(f)))
        dlen = len(data)
        r = rng.random()
        if r < 0.08:
            dlen = rng.choice([0, 4, dlen - 1, dlen + 8, 1 << 20, U32])
            data += fill_bytes(rng, 8) if rng.random() < 0.5 else bytes(8)
        ptr = g.uptr(pi, len(data), writable=True, pinnable=False)
        flags = 0
        fault = 0
        if self.objs(f, FaultObject) and rng.random() < 0.3:
            flags, fault = iu.IOMMU_HWPT_FAULT_ID_VALID, g.obj_id(f, FaultObject)
        if rng.random() < 0.12:
            flags = rng.choice([iu.IOMMU_HWPT_FAULT_ID_VALID, iu.IOMMU_HWPT_ALLOC_PASID,
                                iu.IOMMU_HWPT_ALLOC_NEST_PARENT,
                                iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING])
            fault = g.obj_id(f, FaultObject)
        if rng.random() < 0.05:
            dtype = rng.choice([0, 1, 2, 3, IOMMU_HWPT_DATA_SELFTEST])
        return [Op(pi, "write", (ptr, data), note="nested HWPT data"),
                *self.cmd(pi, fd, f, iu.IOMMU_HWPT_ALLOC, {
                    "flags": flags, "dev_id": g.obj_id(f, Device), "pt_id": pt,
                    "data_type": dtype, "data_len": dlen, "data_uptr": ptr,
                    "fault_id": fault}, "nested", setup=True)]

    def _nested_id(self, f: IommufdFile) -> int:
        g = self.g
        nested = self.objs(f, HwptNested)
        if nested and g.rng.random() < 0.85:
            return int(g.rng.choice(nested).id)
        return g.obj_id(f, HwptNested, HwptPaging, Ioas)

    def s_attach(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """A device onto a nested HWPT (or its parent, or its IOAS): ATTACH_IOMMUFD_PT of
        a bound cdev (attach or replace) or, on the mock, MOCK_DOMAIN_REPLACE."""
        g = self.g
        rng = g.rng
        if not self.objs(f, HwptNested) and rng.random() < 0.7:
            return self.s_nested(pi, fd, f, guest)
        if self.viommu_cmds and not self.objs(f, Vdevice) and rng.random() < 0.8:
            return self.s_vdevice(pi, fd, f, guest)  # SMMUv3 attaches need a vSID
        pt = self._nested_id(f) if rng.random() < 0.75 else g.obj_id(f, HwptPaging, Ioas)
        if g.mock and rng.random() < 0.6:
            from ...iommufd import selftest as st
            from ...iommufd.selftest import SelftestDevice
            return g.ioctl(pi, fd, specs.TEST[st.OP_MOCK_DOMAIN_REPLACE], {
                "op": st.OP_MOCK_DOMAIN_REPLACE, "id": g.obj_id(f, SelftestDevice),
                "pt_id": pt}, "onto a nested HWPT", file=f, mutate=_SETUP_MUTATE)
        cdevs = g.files(pi, VfioDeviceFile, lambda d: d.group is None and d.access_granted
                        and d.iommufd is not None and d.iommufd.ctx is f.ctx)
        if not cdevs:
            return g.cdev(pi)
        cdev = g.pick(cdevs)
        ops = g.ioctl(pi, cdev, specs.VFIO["ATTACH"], {"pt_id": pt}, "onto a nested HWPT",
                      file=f, mutate=_SETUP_MUTATE)
        target = f.ctx.objects.get(pt)
        if isinstance(target, HwptNested) and rng.random() < 0.7:  # then DMA through it
            ops += self._dma(f, guest, g.file(pi, cdev, VfioDeviceFile).dev, target.domain)
        return ops

    def s_dma(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """A device on a nested HWPT reads or writes an IOVA its guest table maps (or
        near one, or anywhere)."""
        g = self.g
        rng = g.rng
        on = [(d.dev, n.domain) for n in self.objs(f, HwptNested) for d in n.devices]
        if not on or rng.random() < 0.05:
            return self.s_attach(pi, fd, f, guest)
        roots = {t.root for t in self.tables if t.ctx == id(f.ctx)}
        walked = [x for x in on if _root_of(x[1]) in roots]
        dev, dom = rng.choice(walked if walked and rng.random() < 0.85 else on)
        return self._dma(f, guest, dev, dom)

    def _dma(self, f: IommufdFile, guest: _Guest, dev: DmaDevice, dom: object) -> list[Op]:
        """A read or write of ``dev`` at an IOVA the guest table of ``dom`` (a nested
        domain) maps, mostly."""
        rng = self.g.rng
        root = _root_of(dom)
        iovas = [iv for t in self.tables if t.ctx == id(f.ctx) and
                 (root is None or t.root == root) for iv in t.iovas]
        if iovas and rng.random() < 0.85:
            iova, size = rng.choice(iovas)
            iova += rng.choice([0, 0, 8, size - 4, size])
        else:
            iova = rng.choice([guest.gpa, 0, boundary(rng)]) & ~0x7
        n = rng.choice([1, 4, 64, PAGE, 2 * PAGE])
        iova = min(iova, (1 << 64) - n)
        if rng.random() < 0.5:
            return [Op(dev.sid, "dma_read", (iova, n))]
        return [Op(dev.sid, "dma_write", (iova, fill_bytes(rng, n)))]

    # -- invalidation -------------------------------------------------------------------------
    def _entries(self, guest: _Guest, f: IommufdFile) -> tuple[int, int, bytes, int]:
        """(data_type, entry_len, entries, entry_num) for a nested HWPT's driver."""
        g = self.g
        rng = g.rng
        num = rng.choice([0, 1, 1, 2, 3, 5])
        hostile = rng.random() < 0.35  # else every entry well formed
        if self.vtd:
            elen = _VTD_S1_BYTES if not hostile or rng.random() < 0.6 else \
                rng.choice([0, 8, 16, 23, 32, 40, 4096])
            raw = b""
            iovas = [iv for t in self.tables if t.ctx == id(f.ctx) for iv in t.iovas]
            for _ in range(num):
                addr = rng.choice(iovas)[0] if iovas and rng.random() < 0.6 else \
                    rng.randrange(1 << 20) * PAGE
                npages = rng.choice([1, 1, 2, 512, 0])
                if addr == 0 and rng.random() < 0.2:
                    npages = U64  # everything
                flags = rng.choice([0, 0, 1])
                rsvd = 0
                r = rng.random() if hostile else 1.0
                if r < 0.08:
                    flags = boundary(rng, 32)
                elif r < 0.14:
                    rsvd = boundary(rng, 32) or 1
                elif r < 0.2:
                    addr += rng.choice([1, 0x800, 0xFFF])
                elif r < 0.26:
                    addr, npages = rng.choice([(0, U64), (PAGE, U64), (U64 & ~0xFFF, 2)])
                one = struct.pack("<QQII", addr & U64, npages, flags & U32, rsvd & U32)
                tail = b"\1" if hostile and rng.random() < 0.2 else b"\0"
                one = one.ljust(elen, tail)[:max(elen, 1)]
                raw += one if elen else b""
            dtype = h.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1
        elif g.mock:
            elen = rng.choice([8, 8, 8, 4, 12, 16])
            raw = b"".join(struct.pack("<II", rng.choice([0, 0, 1, 2, U32]),
                                       rng.choice([0, 1, 3, 4, U32])).ljust(elen, b"\0")[:elen]
                           for _ in range(num))
            dtype = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
        else:
            return self._smmu_cmds(num)
        if rng.random() < 0.05:
            dtype = rng.choice([0, 1, 2, 0xDEADBEEF, U32])
        return dtype, elen, raw, num

    def _smmu_cmds(self, num: int) -> tuple[int, int, bytes, int]:
        rng = self.g.rng
        elen = _SMMU_CMD_BYTES if rng.random() < 0.9 else rng.choice([0, 8, 24, 32])
        raw = b""
        for _ in range(num):
            w0 = rng.choice(_SMMU_OPS) | (rng.choice([0, 0, 1, 2, 0xFFFF]) << 32)
            w1 = rng.choice([0, PAGE, rng.getrandbits(64)])
            raw += struct.pack("<QQ", w0, w1).ljust(elen, b"\0")[:elen]
        return h.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, elen, raw, num

    def _invalidate(self, pi: int, fd: int, f: IommufdFile, hwpt_id: int, dtype: int,
                    elen: int, raw: bytes, num: int) -> list[Op]:
        g = self.g
        rng = g.rng
        ptr = g.uptr(pi, max(len(raw), 1), writable=True, pinnable=False)
        ops = [Op(pi, "write", (ptr, raw), note="invalidation entries")] if raw else []
        if rng.random() < 0.1:
            num = rng.choice([num + 1, 1 << 20, U32])
        return ops + self.cmd(pi, fd, f, iu.IOMMU_HWPT_INVALIDATE, {
            "hwpt_id": hwpt_id, "data_uptr": ptr if rng.random() < 0.95 else 0,
            "data_type": dtype, "entry_len": elen, "entry_num": num}, "nested",
            setup=True)  # the entries carry their own mutations

    def s_invalidate(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """HWPT_INVALIDATE of a nested HWPT with its driver's entries (or of a paging
        one, which refuses)."""
        if not self.vtd and not self.g.mock:  # SMMUv3's nested HWPTs: on the vIOMMU
            return self.s_viommu_inv(pi, fd, f, guest)
        if not self.objs(f, HwptNested) and self.g.rng.random() < 0.6:
            return self.s_nested(pi, fd, f, guest)
        dtype, elen, raw, num = self._entries(guest, f)
        return self._invalidate(pi, fd, f, self._nested_id(f), dtype, elen, raw, num)

    def s_viommu_inv(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """HWPT_INVALIDATE on a vIOMMU (7.0): SMMUv3 CMDQ commands, or the selftest's
        ``struct iommu_viommu_invalidate_selftest`` (flags, vdev_id, cache_id)."""
        g = self.g
        rng = g.rng
        viommus = self.objs(f, Viommu)
        if not viommus and rng.random() < 0.8:
            return self.s_viommu(pi, fd, f, guest)
        vid = rng.choice(viommus).id if viommus and rng.random() < 0.9 else \
            g.obj_id(f, Viommu, HwptNested)
        num = rng.choice([0, 1, 2, 3, 8])
        if g.mock:
            elen = rng.choice([12, 12, 12, 8, 16])
            vdevs = [v.virt_id & U32 for v in self.objs(f, Vdevice)] or [0]
            raw = b"".join(struct.pack("<III", rng.choice([0, 0, 1, 2]), rng.choice(vdevs),
                                       rng.choice([0, 1, 3, 4])).ljust(elen, b"\0")[:elen]
                           for _ in range(num))
            dtype = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
        else:
            dtype, elen, raw, num = self._smmu_cmds(num)
        return self._invalidate(pi, fd, f, vid, dtype, elen, raw, num)

    # -- the parent under nested HWPTs ---------------------------------------------------------
    def s_unmap(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """IOAS_UNMAP of the guest RAM (all of it, a page, or the table's page) while
        nested HWPTs over it live."""
        g = self.g
        rng = g.rng
        iova, length = guest.gpa, guest.length
        if rng.random() < 0.5:
            iova += rng.randrange(guest.length // PAGE) * PAGE
            length = PAGE
        return g._cmd(pi, fd, f, iu.IOMMU_IOAS_UNMAP,
                      {"ioas_id": guest.ioas, "iova": iova, "length": length})

    def s_dirty(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        """Dirty tracking of a nest parent (SET, or GET_DIRTY_BITMAP over guest RAM)."""
        g = self.g
        rng = g.rng
        parent = g.pick(self.parents(f))
        pid = parent.id if parent is not None else g.obj_id(f, HwptPaging)
        if rng.random() < 0.4:
            return g._cmd(pi, fd, f, iu.IOMMU_HWPT_SET_DIRTY_TRACKING,
                          {"flags": rng.choice([1, 1, 0, 2]), "hwpt_id": pid})
        nbytes = max(8, -(-(guest.length // PAGE) // 64) * 8)
        return g._cmd(pi, fd, f, iu.IOMMU_HWPT_GET_DIRTY_BITMAP, {
            "hwpt_id": pid, "flags": rng.choice([0, 0, 1]), "iova": guest.gpa,
            "length": guest.length, "page_size": PAGE,
            "data": g.uptr(pi, nbytes, writable=True, pinnable=False)})

    def s_destroy(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        g = self.g
        kinds = [HwptNested, HwptPaging, Viommu, Vdevice, Veventq, FaultObject]
        return g._cmd(pi, fd, f, iu.IOMMU_DESTROY, {"id": g.obj_id(f, *kinds)})

    # -- 7.0's vIOMMU objects -----------------------------------------------------------------
    def s_viommu(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        g = self.g
        rng = g.rng
        vtype = IOMMU_VIOMMU_TYPE_SELFTEST if g.mock else h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
        if rng.random() < 0.1:
            vtype = rng.choice([0, 1, IOMMU_VIOMMU_TYPE_SELFTEST, U32])
        dlen = 0 if rng.random() < 0.8 else rng.choice([4, 8, 16])
        return self.cmd(pi, fd, f, iu.IOMMU_VIOMMU_ALLOC, {
            "type": vtype, "dev_id": g.obj_id(f, Device),
            "hwpt_id": g._hwpt_id(f, g.pick(self.parents(f))), "data_len": dlen,
            "data_uptr": g.uptr(pi, max(dlen, 1), pinnable=False) if dlen else 0},
            "", setup=True)

    def s_vdevice(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        g = self.g
        rng = g.rng
        if not self.objs(f, Viommu) and rng.random() < 0.8:
            return self.s_viommu(pi, fd, f, guest)
        return self.cmd(pi, fd, f, iu.IOMMU_VDEVICE_ALLOC, {
            "viommu_id": g.obj_id(f, Viommu), "dev_id": g.obj_id(f, Device),
            "virt_id": rng.choice([0, 1, 2, 0x10, 0x10, 1 << 31, U64, rng.getrandbits(64)])},
            "", setup=True)

    def s_veventq(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        g = self.g
        rng = g.rng
        if not self.objs(f, Viommu) and rng.random() < 0.8:
            return self.s_viommu(pi, fd, f, guest)
        vtype = IOMMU_VEVENTQ_TYPE_SELFTEST if g.mock else h.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3
        if rng.random() < 0.1:
            vtype = rng.choice([0, 1, 2, U32])
        return g._cmd(pi, fd, f, iu.IOMMU_VEVENTQ_ALLOC, {
            "viommu_id": g.obj_id(f, Viommu), "type": vtype,
            "veventq_depth": rng.choice([1, 2, 16, 0, 1 << 19, U32])})

    def s_fault(self, pi: int, fd: int, f: IommufdFile, guest: _Guest) -> list[Op]:
        return self.g._cmd(pi, fd, f, iu.IOMMU_FAULT_QUEUE_ALLOC, {})
