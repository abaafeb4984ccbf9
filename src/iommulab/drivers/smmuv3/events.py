"""SMMUv3 event records as the driver decodes them (``arm_smmu_decode_event``)."""

from __future__ import annotations

from dataclasses import dataclass

from . import regs
from .regs import Evt

__all__ = ["SmmuEvent", "decode_event"]


@dataclass(frozen=True)
class SmmuEvent:
    """An event record as ``arm_smmu_decode_event`` unpacks it."""

    id: int
    sid: int
    iova: int
    read: bool
    privileged: bool
    s2: bool
    klass: int
    ipa: int
    raw: tuple[int, int, int, int]
    ssv: bool = False
    ssid: int = 0  # IOMMU_NO_PASID unless ssv
    stall: bool = False
    stag: int = 0
    ttrnw: bool = False  # CLASS TT: the table access was a read

    @property
    def name(self) -> str:
        try:
            return Evt(self.id).name
        except ValueError:
            return f"UNKNOWN({self.id:#x})"

    def __repr__(self) -> str:
        return (f"SmmuEvent({self.name} sid={self.sid:#x} iova={self.iova:#x} "
                f"{'read' if self.read else 'write'}{' s2' if self.s2 else ''})")


def decode_event(raw: tuple[int, int, int, int]) -> SmmuEvent:
    """``arm_smmu_decode_event`` (Linux 7.0: SSV/SSID, STALL/STAG and TT_READ too)."""
    w0, w1, w2, w3 = raw
    ssv = bool(regs.EVT0["SSV"].get(w0))
    return SmmuEvent(id=regs.EVT0["ID"].get(w0), sid=regs.EVT0["SID"].get(w0), iova=w2,
                     read=bool(regs.EVT1["RnW"].get(w1)),
                     privileged=bool(regs.EVT1["PnU"].get(w1)), s2=bool(regs.EVT1["S2"].get(w1)),
                     klass=regs.EVT1["CLASS"].get(w1), ipa=w3 & regs.EVT3["IPA"].mask, raw=raw,
                     ssv=ssv, ssid=regs.EVT0["SSID"].get(w0) if ssv else 0,
                     stall=bool(regs.EVT1["STALL"].get(w1)), stag=regs.EVT1["STAG"].get(w1),
                     ttrnw=bool(regs.EVT1["TTRnW"].get(w1)))
