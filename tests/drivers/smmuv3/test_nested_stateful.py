"""Stateful check of nested translation: no stale translation once the right commands ran.

A guest changes its stage-1 table in guest memory, the host changes its stage 2
(raw descriptor edits), either issues invalidation commands of its choice, and
the device does DMA. The reference is two plain dicts composed. A page is
*clean* when every change that could affect it has been invalidated as
IHI 0070 requires: a stage-1 change by TLBI_NH_VA / NH_VAA of the address or a
whole-ASID/VMID command; a stage-2 change by TLBI_S2_IPA of the IPA (stage-2
entries) *and then* NH_ALL or S12_VMALL (combined entries: S2_IPA need not
remove them, and a walk between the two may rebuild one from a stale stage-2
entry). On a clean page the SMMU must answer exactly as the reference does,
fault kind and stage included.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from iommulab.drivers.smmuv3 import IotlbConfig
from iommulab.errors import DmaFault
from iommulab.sizes import SZ_4K

from .nested_env import DATA_IPA, SID, NestedEnv
from .platform import Platform, make_platform

GPAGES, DPAGES, POOL = 8, 8, 16
IOVA = 0x10_0000_0000
gpages, dpages = st.integers(0, GPAGES - 1), st.integers(0, DPAGES - 1)


class NestedMachine(RuleBasedStateMachine):
    plat: Platform
    env: NestedEnv

    @initialize(iotlb=st.sampled_from([IotlbConfig.qemu(), IotlbConfig.gem5(),
                                       IotlbConfig.tiny()]))
    def setup(self, iotlb: IotlbConfig) -> None:
        self.plat = make_platform(kernel="7.0", iotlb=iotlb)
        self.env = NestedEnv(self.plat)
        self.s1: dict[int, tuple[int, bool]] = {}  # guest page -> (data page, writable)
        self.s2: dict[int, tuple[int, bool]] = {d: (d, True) for d in range(DPAGES)}
        self.s1_pending: set[int] = set()  # guest pages changed, not yet invalidated
        self.s2_pending: set[int] = set()  # data pages changed; their S2 entries may stay
        self.combined_stale = False  # a combined entry may hold an old stage 2

    def teardown(self) -> None:
        if hasattr(self, "env"):
            self.env.close()
            self.plat.close()

    # -- the guest -----------------------------------------------------------------------------
    @rule(g=gpages, d=dpages, writable=st.booleans())
    def guest_map(self, g: int, d: int, writable: bool) -> None:
        self.env.s1_map(IOVA + g * SZ_4K, DATA_IPA + d * SZ_4K, writable)
        self.s1[g] = (d, writable)
        self.s1_pending.add(g)

    @rule(g=gpages)
    def guest_unmap(self, g: int) -> None:
        self.env.s1_unmap(IOVA + g * SZ_4K)
        self.s1.pop(g, None)
        self.s1_pending.add(g)

    @rule(g=gpages, all_asids=st.booleans())
    def guest_tlbi_va(self, g: int, all_asids: bool) -> None:
        iova = IOVA + g * SZ_4K
        self.env.issue(self.env.nh_vaa(iova) if all_asids else self.env.nh_va(iova))
        self.s1_pending.discard(g)

    @rule()
    def guest_tlbi_asid(self) -> None:
        self.env.issue(self.env.nh_asid())
        self.s1_pending.clear()

    # -- the host ------------------------------------------------------------------------------
    @rule(d=dpages, pool=st.none() | st.integers(0, POOL - 1), writable=st.booleans())
    def host_set(self, d: int, pool: int | None, writable: bool) -> None:
        self.env.s2_set(d, pool, writable)
        if pool is None:
            self.s2.pop(d, None)
        else:
            self.s2[d] = (pool, writable)
        self.s2_pending.add(d)
        self.combined_stale = True

    @rule(d=dpages)
    def host_tlbi_s2_ipa(self, d: int) -> None:
        self.env.issue(self.env.s2_ipa(DATA_IPA + d * SZ_4K))
        self.s2_pending.discard(d)

    @rule()
    def host_tlbi_nh_all(self) -> None:
        self.env.issue(self.env.nh_all())
        self.s1_pending.clear()
        self.combined_stale = bool(self.s2_pending)

    @rule()
    def host_tlbi_s12_vmall(self) -> None:
        self.env.issue(self.env.s12_vmall())
        self.s1_pending.clear()
        self.s2_pending.clear()
        self.combined_stale = False

    # -- the device ----------------------------------------------------------------------------
    def _expect(self, g: int, write: bool) -> tuple[int, str, bool]:
        """(pa, "", _) or (-1, fault, at stage 2) from the composed reference."""
        if g not in self.s1:
            return -1, "F_TRANSLATION", False
        d, w1 = self.s1[g]
        if write and not w1:
            return -1, "F_PERMISSION", False
        if d not in self.s2:
            return -1, "F_TRANSLATION", True
        pool, w2 = self.s2[d]
        if write and not w2:
            return -1, "F_PERMISSION", True
        return self.env.pool_pa + pool * SZ_4K, "", False

    def _access(self, g: int, write: bool) -> None:
        clean = g not in self.s1_pending and not self.s2_pending and not self.combined_stale
        iova = IOVA + g * SZ_4K + 0x18
        try:
            pa, _ = self.plat.hw.translate_run(SID, iova, write)
        except DmaFault as f:
            got = (-1, f.reason, self.plat.smmu.handle_events()[-1].s2)
        else:
            got = (pa - 0x18, "", False)
        if self.s2_pending:  # a walk may have combined a stale stage-2 entry
            self.combined_stale = True
        if clean:
            assert got == self._expect(g, write), (g, write, got, self._expect(g, write))

    @rule(g=gpages, write=st.booleans())
    def dma(self, g: int, write: bool) -> None:
        self._access(g, write)

    @invariant()
    def clean_pages_translate_as_the_reference(self) -> None:
        if not hasattr(self, "env"):
            return
        for g in range(GPAGES):
            self._access(g, False)
            self._access(g, True)
        self.plat.hw._check()


NestedMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                           deadline=None)
TestNested = NestedMachine.TestCase
