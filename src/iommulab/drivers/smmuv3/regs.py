"""SMMUv3 register, STE, CD, command and event layouts, declared once as data.

Field positions from drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h (Linux 7.0)
and the SMMUv3 architecture specification (IHI 0070); the driver encodes
with them and the hardware model decodes with them.
"""

from __future__ import annotations

import enum

from ...pgtable.bits import Field, Layout

__all__ = [
    "CD0",
    "CD1",
    "CMD_CFGI0",
    "CMD_CFGI1",
    "CMD_CFGI_ALL1",
    "CMD_PREFETCH0",
    "CMD_SYNC0",
    "CMD_TLBI0",
    "CMD_TLBI1",
    "EVT0",
    "EVT1",
    "EVT3",
    "IDR0",
    "IDR1",
    "IDR3",
    "IDR5",
    "L1CD",
    "STE0",
    "STE1",
    "STE2",
    "STE3",
    "Cmd",
    "Evt",
    "Reg",
    "SteConfig",
]


class Reg(enum.IntEnum):
    """MMIO register offsets (page 0)."""

    IDR0 = 0x0
    IDR1 = 0x4
    IDR3 = 0xC
    IDR5 = 0x14
    IIDR = 0x18
    AIDR = 0x1C
    CR0 = 0x20
    CR0ACK = 0x24
    CR1 = 0x28
    CR2 = 0x2C
    GBPA = 0x44
    GERROR = 0x60
    GERRORN = 0x64
    STRTAB_BASE = 0x80
    STRTAB_BASE_CFG = 0x88
    CMDQ_BASE = 0x90
    CMDQ_PROD = 0x98
    CMDQ_CONS = 0x9C
    EVTQ_BASE = 0xA0
    EVTQ_PROD = 0xA8
    EVTQ_CONS = 0xAC


CR0_SMMUEN, CR0_EVTQEN, CR0_CMDQEN = 1 << 0, 1 << 2, 1 << 3
GERROR_CMDQ_ERR = 1 << 0
Q_BASE_ADDR_MASK = ((1 << 52) - 1) & ~((1 << 5) - 1)  # GENMASK_ULL(51, 5)
Q_BASE_LOG2SIZE_MASK = 0x1F
Q_OVERFLOW_FLAG = 1 << 31
CMDQ_CONS_ERR_SHIFT = 24  # CMDQ_CONS.ERR, bits 30:24
CMDQ_ERR_CERROR_ILL = 1
STRTAB_BASE_ADDR_MASK = ((1 << 52) - 1) & ~((1 << 6) - 1)  # GENMASK_ULL(51, 6)

IDR0 = Layout("SMMU_IDR0", (
    Field("S2P", 0, 0, "stage 2 translation"),
    Field("S1P", 1, 1, "stage 1 translation"),
    Field("TTF", 3, 2, "table formats: 2 = AArch64, 3 = AArch32 and AArch64"),
    Field("COHACC", 4, 4, "coherent access to tables and queues"),
    Field("BTM", 5, 5, "broadcast TLB maintenance"),
    Field("HTTU", 7, 6, "1 access flag, 2 access flag and dirty state"),
    Field("HYP", 9, 9, "EL2 stream world"),
    Field("ATS", 10, 10, "PCIe ATS"),
    Field("ASID16", 12, 12, "16-bit ASIDs"),
    Field("MSI", 13, 13, "MSI interrupts"),
    Field("SEV", 14, 14, "wake-up events"),
    Field("PRI", 16, 16, "PCIe PRI"),
    Field("VMID16", 18, 18, "16-bit VMIDs"),
    Field("CD2L", 19, 19, "2-level CD tables"),
    Field("TTENDIAN", 22, 21, "0 mixed, 2 little, 3 big endian"),
    Field("STALL_MODEL", 25, 24, "0 stall, 1 terminate only, 2 stall forced"),
    Field("ST_LEVEL", 28, 27, "0 linear, 1 2-level stream table"),
))

IDR1 = Layout("SMMU_IDR1", (
    Field("SIDSIZE", 5, 0, "StreamID bits"),
    Field("SSIDSIZE", 10, 6, "SubstreamID bits"),
    Field("PRIQS", 15, 11, "log2 PRI queue entries"),
    Field("EVTQS", 20, 16, "log2 event queue entries"),
    Field("CMDQS", 25, 21, "log2 command queue entries"),
))

IDR3 = Layout("SMMU_IDR3", (
    Field("FWB", 8, 8, "stage-2 forced write-back"),
    Field("RIL", 10, 10, "range invalidation"),
    Field("BBML", 12, 11, "break-before-make level 0, 1 or 2"),
))

IDR5 = Layout("SMMU_IDR5", (
    Field("OAS", 2, 0, "output size: 0 32, 1 36, 2 40, 3 42, 4 44, 5 48, 6 52 bits"),
    Field("GRAN4K", 4, 4, "4K granule"),
    Field("GRAN16K", 5, 5, "16K granule"),
    Field("GRAN64K", 6, 6, "64K granule"),
    Field("VAX", 11, 10, "1 = 52-bit virtual addresses"),
    Field("STALL_MAX", 31, 16, "outstanding stalled transactions"),
))


class SteConfig(enum.IntEnum):
    """STE.Config (STRTAB_STE_0_CFG)."""

    ABORT = 0
    BYPASS = 4
    S1_TRANS = 5
    S2_TRANS = 6
    NESTED = 7


STE0 = Layout("STE word 0", (
    Field("V", 0, 0, "valid"),
    Field("CONFIG", 3, 1, "0 abort, 4 bypass, 5 S1, 6 S2, 7 nested"),
    Field("S1FMT", 5, 4, "CD table format"),
    Field("S1CTXPTR", 51, 6, "CD table address", address=True),
    Field("S1CDMAX", 63, 59, "log2 number of CDs"),
))
STE1 = Layout("STE word 1", (
    Field("S1DSS", 1, 0, "0 terminate, 1 bypass, 2 use SSID 0 without a PASID"),
    Field("S1CIR", 3, 2), Field("S1COR", 5, 4), Field("S1CSH", 7, 6),
    Field("MEV", 19, 19), Field("S2FWB", 25, 25), Field("S1STALLD", 27, 27),
    Field("EATS", 29, 28), Field("STRW", 31, 30, "0 NS-EL1, 2 EL2"),
    Field("SHCFG", 45, 44),
))
STE2 = Layout("STE word 2", (
    Field("S2VMID", 15, 0),
    Field("S2T0SZ", 37, 32), Field("S2SL0", 39, 38), Field("S2IR0", 41, 40),
    Field("S2OR0", 43, 42), Field("S2SH0", 45, 44), Field("S2TG", 47, 46),
    Field("S2PS", 50, 48), Field("S2AA64", 51, 51), Field("S2ENDI", 52, 52),
    Field("S2AFFD", 53, 53), Field("S2PTW", 54, 54), Field("S2HD", 55, 55),
    Field("S2HA", 56, 56), Field("S2S", 57, 57), Field("S2R", 58, 58, "record S2 faults"),
))
STE3 = Layout("STE word 3", (
    Field("S2TTB", 51, 4, "stage-2 table base", address=True),
))

CD0 = Layout("CD word 0", (
    Field("T0SZ", 5, 0), Field("TG0", 7, 6, "0 4K, 1 64K, 2 16K"), Field("IR0", 9, 8),
    Field("OR0", 11, 10), Field("SH0", 13, 12), Field("EPD0", 14, 14), Field("ENDI", 15, 15),
    Field("EPD1", 30, 30), Field("V", 31, 31), Field("IPS", 34, 32),
    Field("AFFD", 35, 35), Field("TBI0", 38, 38), Field("AA64", 41, 41),
    Field("HD", 42, 42, "hardware dirty state update"), Field("HA", 43, 43, "hardware AF update"),
    Field("S", 44, 44), Field("R", 45, 45, "record faults"), Field("A", 46, 46),
    Field("ASET", 47, 47), Field("ASID", 63, 48),
))
CD1 = Layout("CD word 1", (
    Field("TTB0", 51, 4, "stage-1 table base", address=True),
))


class Cmd(enum.IntEnum):
    """Command opcodes (CMDQ_OP_*)."""

    PREFETCH_CFG = 0x1
    CFGI_STE = 0x3
    CFGI_ALL = 0x4  # CMD_CFGI_STE_RANGE; CFGI_ALL is its Range = 31 form
    CFGI_CD = 0x5
    CFGI_CD_ALL = 0x6
    TLBI_NH_ALL = 0x10
    TLBI_NH_ASID = 0x11
    TLBI_NH_VA = 0x12
    TLBI_NH_VAA = 0x13
    TLBI_EL2_ALL = 0x20
    TLBI_EL2_ASID = 0x21
    TLBI_EL2_VA = 0x22
    TLBI_S12_VMALL = 0x28
    TLBI_S2_IPA = 0x2A
    TLBI_NSNH_ALL = 0x30
    ATC_INV = 0x40
    PRI_RESP = 0x41
    RESUME = 0x44
    CMD_SYNC = 0x46


CMD_TLBI0 = Layout("TLBI word 0", (
    Field("OP", 7, 0), Field("NUM", 16, 12, "range: number of chunks - 1"),
    Field("SCALE", 24, 20, "range: chunk = 2^SCALE granules"),
    Field("VMID", 47, 32), Field("ASID", 63, 48),
))
CMD_TLBI1 = Layout("TLBI word 1", (
    Field("LEAF", 0, 0, "last-level entries only"),
    Field("TTL", 9, 8, "level hint"), Field("TG", 11, 10, "range granule: 1 4K, 2 16K, 3 64K"),
    Field("ADDR", 63, 12, "VA or IPA", address=True),
))
CMD_CFGI0 = Layout("CFGI word 0", (
    Field("OP", 7, 0), Field("SSV", 11, 11), Field("SSID", 31, 12), Field("SID", 63, 32),
))
CMD_CFGI1 = Layout("CFGI_STE/CFGI_CD word 1", (
    Field("LEAF", 0, 0, "STE/CD only, not the tables above"),
))
CMD_CFGI_ALL1 = Layout("CFGI_ALL word 1", (
    Field("RANGE", 4, 0, "log2 of the StreamIDs covered - 1 (31: all)"),
))
CMD_PREFETCH0 = Layout("PREFETCH_CFG word 0", (
    Field("OP", 7, 0), Field("SID", 63, 32),
))
CMD_SYNC0 = Layout("CMD_SYNC word 0", (
    Field("OP", 7, 0), Field("CS", 13, 12, "0 none, 1 IRQ, 2 SEV"),
    Field("MSH", 23, 22, "MSI shareability"), Field("MSIATTR", 27, 24, "MSI memory type"),
    Field("MSIDATA", 63, 32),
))


class Evt(enum.IntEnum):
    """Event record types (EVT_ID_*)."""

    C_BAD_STREAMID = 0x02
    F_STE_FETCH = 0x03
    C_BAD_STE = 0x04
    F_STREAM_DISABLED = 0x06
    C_BAD_SUBSTREAMID = 0x08
    F_CD_FETCH = 0x09
    C_BAD_CD = 0x0A
    F_TRANSLATION = 0x10
    F_ADDR_SIZE = 0x11
    F_ACCESS = 0x12
    F_PERMISSION = 0x13


EVT0 = Layout("event word 0", (
    Field("ID", 7, 0), Field("SSV", 11, 11), Field("SSID", 31, 12), Field("SID", 63, 32),
))
EVT1 = Layout("event word 1", (
    Field("STAG", 15, 0), Field("STALL", 31, 31), Field("PnU", 33, 33, "privileged"),
    Field("InD", 34, 34, "instruction fetch"), Field("RnW", 35, 35, "1 = read"),
    Field("S2", 39, 39, "fault at stage 2"), Field("CLASS", 41, 40, "0 CD, 1 TT, 2 input"),
    Field("TTRnW", 44, 44, "CLASS TT: 1 the table access was a read, 0 an HTTU write"),
))
EVT3 = Layout("event word 3", (
    Field("IPA", 51, 12, "intermediate physical address", address=True),
))
EVT_CLASS_CD, EVT_CLASS_TT, EVT_CLASS_IN = 0, 1, 2

# Level-1 CD table descriptor (CTXDESC_L1_DESC_*): V and the level-2 table address.
L1CD = Layout("L1 CD descriptor", (
    Field("V", 0, 0, "valid"),
    Field("L2PTR", 51, 12, "level-2 CD table address", address=True),
))
# STE.S1Fmt: linear; two levels with 4KB leaf tables (SSID[5:0] indexes the leaf);
# two levels with 64KB leaf tables (SSID[9:0]; Linux STRTAB_STE_0_S1FMT_64K_L2 = 2)
S1FMT_LINEAR, S1FMT_4K_L2, S1FMT_64K_L2 = 0, 1, 2
