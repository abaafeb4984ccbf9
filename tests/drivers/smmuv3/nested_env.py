"""A nested SMMUv3 stream for tests: a host stage-2 nest parent and a guest stage 1.

The host side is the driver's own (a 7.0 NEST_PARENT domain mapping guest RAM
and a window of data pages); the guest side is written here by hand, as a
guest kernel would: a 4-level 4K stage-1 table and CDs in guest RAM, addressed
by IPAs. The STE is the one :func:`make_nested_domain_ste` builds from a vSTE.
Host stage-2 changes to data pages are raw descriptor edits, so each test
chooses its invalidation commands.
"""

from __future__ import annotations

from iommulab.drivers.smmuv3 import HWPT_ALLOC_NEST_PARENT, make_nested_domain_ste
from iommulab.drivers.smmuv3.cmds import Command, tlbi_context, tlbi_range
from iommulab.drivers.smmuv3.regs import CD0, CD1, CMD_TLBI0, L1CD, STE0, STE1, STE2, Cmd
from iommulab.sizes import SZ_4K

from .platform import RW, Platform

SID = 0x10
ASID = 5
GRAM_IPA = 0x8000_0000  # guest RAM holding CDs and stage-1 tables
GRAM_SIZE = 1 << 20
DATA_IPA = 0x4000_0000  # IPA window of data pages, mapped by the host
DATA_PAGES = 64
PA_POOL = 128  # host pages the data window may be pointed at
AF, AP_RDONLY, AP_UNPRIV, DBM = 1 << 10, 1 << 7, 1 << 6, 1 << 51
S2AP_R, S2AP_W = 1 << 6, 1 << 7
_ADDR = ((1 << 48) - 1) & ~0xFFF


class NestedEnv:
    """One nested stream (SID 0x10) on ``plat`` (a 7.0 platform)."""

    def __init__(self, plat: Platform, *, cd_words0: int = 0, s2_extra: int = 0, s2_clear: int = 0,
                 cdmax: int = 0, s1fmt: int = 0, s1dss: int = 2, ssids: tuple[int, ...] = (),
                 ste1_extra: int = 0) -> None:
        self.plat = plat
        self.mem = plat.mem
        self.master, self.dev = plat.device(SID)
        self.s2 = plat.domain(self.master, HWPT_ALLOC_NEST_PARENT)
        self.vmid = self.s2.vmid
        self.gram_pa = plat.buffer(GRAM_SIZE, fill=False)
        self.s2.map(GRAM_IPA, self.gram_pa, GRAM_SIZE, RW)
        self.pool_pa = plat.buffer(PA_POOL * SZ_4K)
        for i in range(DATA_PAGES):  # 4K leaves, page i of the window on pool page i
            self.s2.map(DATA_IPA + i * SZ_4K, self.pool_pa + i * SZ_4K, SZ_4K, RW)
        pgtbl = self.s2.pgtbl
        assert pgtbl is not None
        walk = pgtbl.pgtable_walk(DATA_IPA)
        self.s2_l3_pa = walk[-2] & _ADDR  # the leaf table of the data window
        self._next = GRAM_IPA + 4 * SZ_4K  # pages 0-3: CD table and level-1 CD table
        self.pgd = self._alloc_table()
        self.cd0 = cd_words0 or CD0.encode(T0SZ=16, TG0=0, IR0=1, OR0=1, SH0=3, EPD1=1, V=1,
                                           IPS=5, AA64=1, R=1, A=1, ASET=1, ASID=ASID)
        if s1fmt:  # two levels, 4K leaf tables: L1 at page 1, leaves from page 2 on
            self.ctxptr = GRAM_IPA + SZ_4K
            for n, ssid in enumerate(sorted({s >> 6 for s in ssids})):
                leaf = GRAM_IPA + (2 + n) * SZ_4K
                self.gwrite(self.ctxptr + ssid * 8, L1CD.encode(V=1, L2PTR=leaf))
                for s in ssids:
                    if s >> 6 == ssid:
                        self.write_cd(leaf + (s & 63) * 64)
        else:
            self.ctxptr = GRAM_IPA
            for s in ssids or (0,):
                self.write_cd(GRAM_IPA + s * 64)
        vste = (STE0.encode(V=1, CONFIG=5, S1FMT=s1fmt, S1CTXPTR=self.ctxptr, S1CDMAX=cdmax),
                STE1.encode(S1DSS=s1dss, S1CIR=1, S1COR=1, S1CSH=3) | ste1_extra)
        s2cfg = pgtbl.cfg.arm_lpae_s2_cfg
        assert s2cfg is not None
        ste = make_nested_domain_ste(vste, s2cfg, self.vmid)
        self.ste = (ste[0], ste[1], (ste[2] | s2_extra) & ~s2_clear, *ste[3:])
        plat.smmu._write_ste(SID, self.ste)

    def close(self) -> None:
        """Give the stream back to the driver (a blocked STE) and release the device."""
        self.plat.smmu.attach_dev(self.plat.smmu.blocked_domain, self.master)
        self.plat.smmu.release_device(self.master)
        self.plat.masters.remove(self.master)

    # -- guest memory and its stage 1 -------------------------------------------------------
    def gpa(self, ipa: int) -> int:
        assert GRAM_IPA <= ipa < GRAM_IPA + GRAM_SIZE, hex(ipa)
        return self.gram_pa + ipa - GRAM_IPA

    def gwrite(self, ipa: int, value: int) -> None:
        self.mem.write_u64(self.gpa(ipa), value)

    def gread(self, ipa: int) -> int:
        return self.mem.read_u64(self.gpa(ipa))

    def write_cd(self, ipa: int, ttb: int | None = None, word0: int | None = None) -> None:
        self.gwrite(ipa, self.cd0 if word0 is None else word0)
        self.gwrite(ipa + 8, CD1.encode(TTB0=self.pgd if ttb is None else ttb))

    def _alloc_table(self) -> int:
        ipa = self._next
        self._next += SZ_4K
        assert self._next <= GRAM_IPA + GRAM_SIZE
        return ipa

    def s1_leaf_ipa(self, iova: int) -> int:
        """The IPA of the level-3 descriptor for ``iova``, making tables as needed."""
        table = self.pgd
        for level in range(3):
            slot = table + ((iova >> (39 - 9 * level)) & 511) * 8
            desc = self.gread(slot)
            if not desc & 1:
                nxt = self._alloc_table()
                self.gwrite(slot, nxt | 3)
                desc = nxt | 3
            table = desc & _ADDR
        return table + ((iova >> 12) & 511) * 8

    def s1_map(self, iova: int, ipa: int, writable: bool = True, *, af: bool = True,
               dbm: bool = False) -> None:
        self.gwrite(self.s1_leaf_ipa(iova), ipa | 3 | AP_UNPRIV | (AF if af else 0)
                    | (0 if writable else AP_RDONLY) | (DBM if dbm else 0))

    def s1_map_2m(self, iova: int, ipa: int) -> None:
        """A 2 MiB stage-1 block (a level-2 leaf), read/write."""
        table = self.pgd
        for level in range(2):
            slot = table + ((iova >> (39 - 9 * level)) & 511) * 8
            desc = self.gread(slot)
            if not desc & 1:
                desc = self._alloc_table() | 3
                self.gwrite(slot, desc)
            table = desc & _ADDR
        self.gwrite(table + ((iova >> 21) & 511) * 8, ipa | 1 | AP_UNPRIV | AF)

    def s1_unmap(self, iova: int) -> None:
        self.gwrite(self.s1_leaf_ipa(iova), 0)

    # -- the host's stage 2 of the data window -------------------------------------------------
    def s2_desc_pa(self, ipa: int) -> int:
        """The physical address of the host's level-3 descriptor for ``ipa``."""
        pgtbl = self.s2.pgtbl
        assert pgtbl is not None
        walk = pgtbl.pgtable_walk(ipa)
        assert len(walk) == 4, "a 4K leaf"
        return (walk[-2] & _ADDR) + ((ipa >> 12) & 511) * 8

    def s2_leaf_pa(self, page: int) -> int:
        return self.s2_l3_pa + ((DATA_IPA >> 12) + page) % 512 * 8

    def s2_set(self, page: int, pool: int | None, writable: bool = True, *,
               dbm: bool = False, af: bool = True) -> None:
        """Point data page ``page`` of the window at pool page ``pool`` (None: invalid)."""
        if pool is None:
            self.mem.write_u64(self.s2_leaf_pa(page), 0)
            return
        old = self.mem.read_u64(self.s2_leaf_pa(page))
        attrs = old & ~_ADDR & ~(S2AP_R | S2AP_W | AF | DBM | 3)
        self.mem.write_u64(self.s2_leaf_pa(page), (self.pool_pa + pool * SZ_4K) | attrs | 3
                           | S2AP_R | (S2AP_W if writable else 0) | (AF if af else 0)
                           | (DBM if dbm else 0))

    # -- commands -----------------------------------------------------------------------------
    def issue(self, *cmds: Command) -> None:
        self.plat.smmu.issue(list(cmds))

    def nh_va(self, iova: int, asid: int = ASID) -> Command:
        (cmd,) = tlbi_range(Cmd.TLBI_NH_VA, iova, SZ_4K, SZ_4K, 12, True, asid=asid,
                            vmid=self.vmid)
        return cmd

    def nh_vaa(self, iova: int) -> Command:
        return CMD_TLBI0.encode(OP=Cmd.TLBI_NH_VAA, VMID=self.vmid), iova & ~0xFFF

    def s2_ipa(self, ipa: int) -> Command:
        (cmd,) = tlbi_range(Cmd.TLBI_S2_IPA, ipa, SZ_4K, SZ_4K, 12, True, vmid=self.vmid)
        return cmd

    def nh_asid(self, asid: int = ASID) -> Command:
        return tlbi_context(Cmd.TLBI_NH_ASID, asid=asid, vmid=self.vmid)

    def nh_all(self) -> Command:
        return tlbi_context(Cmd.TLBI_NH_ALL, vmid=self.vmid)

    def s12_vmall(self) -> Command:
        return tlbi_context(Cmd.TLBI_S12_VMALL, vmid=self.vmid)


STE2_S2HA, STE2_S2HD = STE2["S2HA"].mask, STE2["S2HD"].mask
STE2_S2R, STE2_S2S = STE2["S2R"].mask, STE2["S2S"].mask
