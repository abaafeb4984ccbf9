"""Building SMMUv3 commands as the driver does (``arm_smmu_cmdq_build_cmd``).

A command is two little-endian 64-bit words. The range builder follows
``arm_smmu_cmdq_batch_add_range`` and ``arm_smmu_inv_size_too_big``
(arm-smmu-v3.c, Linux 7.0): with range invalidation (IDR3.RIL) a range
becomes few commands of NUM x 2^SCALE pages; without it, one command per
granule, replaced by a whole-context command once that would take
``1 << (log2(granule) - 3)`` commands or more.
"""

from __future__ import annotations

from .regs import (
    CMD_CFGI0,
    CMD_CFGI1,
    CMD_CFGI_ALL1,
    CMD_PREFETCH0,
    CMD_SYNC0,
    CMD_TLBI0,
    CMD_TLBI1,
    Cmd,
)

__all__ = [
    "CMDQ_BATCH_ENTRIES",
    "CMDQ_TLBI_RANGE_NUM_MAX",
    "Command",
    "cfgi_all",
    "cfgi_cd",
    "cfgi_ste",
    "cmd_sync",
    "inv_size_too_big",
    "prefetch_cfg",
    "tlbi_context",
    "tlbi_range",
]

Command = tuple[int, int]
CMDQ_BATCH_ENTRIES = 64  # BITS_PER_LONG
CMDQ_TLBI_RANGE_NUM_MAX = 31
_VA_MASK = ((1 << 64) - 1) & ~0xFFF  # CMDQ_TLBI_1_VA_MASK, GENMASK_ULL(63, 12)
_IPA_MASK = ((1 << 52) - 1) & ~0xFFF  # CMDQ_TLBI_1_IPA_MASK, GENMASK_ULL(51, 12)
_CS_SEV, _MSH_ISH, _MSIATTR_OIWB = 2, 3, 0xF


def cfgi_ste(sid: int) -> Command:
    """CMDQ_OP_CFGI_STE for one StreamID, leaf (the STE only)."""
    return CMD_CFGI0.encode(OP=Cmd.CFGI_STE, SID=sid), CMD_CFGI1.encode(LEAF=1)


def cfgi_cd(sid: int, ssid: int = 0) -> Command:
    """CMDQ_OP_CFGI_CD for one (StreamID, SubstreamID), leaf."""
    return (CMD_CFGI0.encode(OP=Cmd.CFGI_CD, SID=sid, SSID=ssid),
            CMD_CFGI1.encode(LEAF=1))


def cfgi_all() -> Command:
    """CMDQ_OP_CFGI_ALL (range 31: every StreamID), as ``arm_smmu_device_reset`` issues."""
    return CMD_CFGI0.encode(OP=Cmd.CFGI_ALL), CMD_CFGI_ALL1.encode(RANGE=31)


def prefetch_cfg(sid: int) -> Command:
    return CMD_PREFETCH0.encode(OP=Cmd.PREFETCH_CFG, SID=sid), 0


def cmd_sync() -> Command:
    """CMD_SYNC completing by SEV (the driver's non-MSI polling mode)."""
    return CMD_SYNC0.encode(OP=Cmd.CMD_SYNC, CS=_CS_SEV, MSH=_MSH_ISH,
                            MSIATTR=_MSIATTR_OIWB), 0


def tlbi_context(op: Cmd, *, asid: int = 0, vmid: int = 0) -> Command:
    """TLBI_NH_ASID / TLBI_S12_VMALL / TLBI_NH_ALL / TLBI_NSNH_ALL: a whole context."""
    if op == Cmd.TLBI_NH_ASID:
        return CMD_TLBI0.encode(OP=op, ASID=asid, VMID=vmid), 0
    if op in (Cmd.TLBI_NH_ALL, Cmd.TLBI_S12_VMALL):
        return CMD_TLBI0.encode(OP=op, VMID=vmid), 0
    return CMD_TLBI0.encode(OP=op), 0


def inv_size_too_big(size: int, granule: int, ril: bool) -> bool:
    """``arm_smmu_inv_size_too_big``: use one whole-context command instead."""
    if not size or size == (1 << 64) - 1:
        return True
    if ril:
        return False
    max_tlbi_ops = 1 << (granule.bit_length() - 1 - 3)
    return size >= max_tlbi_ops * granule


def tlbi_range(op: Cmd, iova: int, size: int, granule: int, pgsize_shift: int, leaf: bool, *,
               asid: int = 0, vmid: int = 0, ril: bool = True) -> list[Command]:
    """``arm_smmu_cmdq_batch_add_range``: the TLBI_NH_VA / TLBI_S2_IPA commands for a range.

    ``pgsize_shift`` is ``__ffs(domain->pgsize_bitmap)``. With RIL the
    commands carry TG, NUM, SCALE and (for leaf invalidation) the TTL hint;
    a non-leaf range whose page count has ``& 31 == 1`` is widened by one
    page so no command has NUM = SCALE = TTL = 0 (Linux 6.6 fix). O(log pages).
    """
    end = iova + size
    num_pages = tg = ttl = 0
    inv_range = granule
    if ril:
        tg = pgsize_shift
        num_pages = size >> tg
        if leaf:
            ttl = 4 - ((granule.bit_length() - 1 - 3) // (tg - 3))
        elif num_pages & CMDQ_TLBI_RANGE_NUM_MAX == 1:
            num_pages += 1
    w1_base = CMD_TLBI1.encode(LEAF=int(leaf), TTL=ttl, TG=(tg - 10) // 2 if ril else 0)
    addr_mask = _IPA_MASK if op == Cmd.TLBI_S2_IPA else _VA_MASK
    ids = {"VMID": vmid} if op == Cmd.TLBI_S2_IPA else {"ASID": asid, "VMID": vmid}
    out: list[Command] = []
    while iova < end:
        w0 = CMD_TLBI0.encode(OP=op, **ids)
        if ril:
            scale = (num_pages & -num_pages).bit_length() - 1
            num = (num_pages >> scale) & CMDQ_TLBI_RANGE_NUM_MAX
            w0 |= CMD_TLBI0.encode(NUM=num - 1, SCALE=scale)
            inv_range = num << (scale + tg)
            num_pages -= num << scale
        out.append((w0, w1_base | (iova & addr_mask)))
        iova += inv_range
    return out
