"""Replay of recorded real-kernel VFIO type1 answers (../shared/oracle-sample format).

One JSON object per line: section, case, op, args, ret, errno, out. Each
section runs on a fresh container; sections after ``type1_setup`` start
with the group set and the TYPE1v2 IOMMU on, as the recording program did.
More recordings in the same format can be dropped into the directory.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iommulab import Machine, Process
from iommulab.vfio import uapi as u

SAMPLES = Path(__file__).resolve().parents[1] / "oracle"  # copied from shared/oracle-sample
BDF = "0000:00:02.0"


@dataclass
class Outcome:
    ret: int
    errno: int
    out: dict[str, Any]


def load(name: str) -> list[dict[str, Any]]:
    lines = (SAMPLES / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class Type1Replayer:
    """The recording program's user memory and fds, on an ``x86-vtd`` machine."""

    def __init__(self) -> None:
        self.m = Machine("x86-vtd", ram="1G")
        self.dev = self.m.add_pci_device(BDF)
        self.p: Process = self.m.spawn_process(memlock_limit=None, cap_ipc_lock=True)
        p = self.p
        self.buf = p.mmap(64 << 20, "anon", populate=True)  # MADV_NOHUGEPAGE, all written
        p.write(self.buf, bytes(range(256)) * 16)
        self.robuf = p.mmap(16 << 12, "anon", prot="r")
        self.holebuf = p.mmap(3 << 12, "anon")  # the model unmaps whole VMAs: make a hole
        self.munmapped = p.mmap(4 << 12, "anon")
        p.munmap(self.munmapped, 4 << 12)
        self.group = p.open(f"/dev/vfio/{self.dev.iommu_group}")
        self.container = -1
        self.section: str | None = None
        self._hole: int | None = None

    def fresh_section(self, section: str) -> None:
        p = self.p
        if self.container >= 0:  # a group keeps its container alive: leave it first
            if u.GROUP_STATUS.unpack(self._status())[1] & u.VFIO_GROUP_FLAGS_CONTAINER_SET:
                p.ioctl(self.group, u.VFIO_GROUP_UNSET_CONTAINER)
            p.close(self.container)
        self.container = p.open("/dev/vfio/vfio")
        if section != "type1_setup":
            p.ioctl(self.group, u.VFIO_GROUP_SET_CONTAINER,
                    bytearray(struct.pack("<i", self.container)))
            p.ioctl(self.container, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)

    def _status(self) -> bytearray:
        buf = bytearray(u.GROUP_STATUS.pack(8, 0))
        self.p.ioctl(self.group, u.VFIO_GROUP_GET_STATUS, buf)
        return buf

    def vaddr(self, text: str) -> int:
        if text.startswith("buf+"):
            return self.buf + int(text[4:], 16)
        if text.startswith("robuf"):
            return self.robuf
        if text.startswith("holebuf"):
            return self.hole_start()
        if text == "munmapped":
            return self.munmapped
        if text == "NULL":
            return 0
        return int(text, 16)

    def hole_start(self) -> int:
        """Three pages with the middle one missing: the first page of a 1-page VMA
        followed by an unmapped page (what GUP sees of the recorded holebuf)."""
        if self._hole is None:
            self._hole = self.p.mmap(1 << 12, "anon")
        return self._hole

    def run(self, case: dict[str, Any]) -> Outcome:
        op, args = case["op"], case["args"]
        try:
            ret, out = getattr(self, "op_" + op)(args)
        except OSError as err:
            return Outcome(-1, err.errno or 0, {})
        return Outcome(ret, 0, out)

    # -- ops --------------------------------------------------------------------------------------
    def op_VFIO_GET_API_VERSION(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.p.ioctl(self.container, u.VFIO_GET_API_VERSION), {}

    def op_VFIO_CHECK_EXTENSION(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.p.ioctl(self.container, u.VFIO_CHECK_EXTENSION, args["ext"]), {}

    def op_VFIO_SET_IOMMU(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.p.ioctl(self.container, u.VFIO_SET_IOMMU, args["type"]), {}

    def op_VFIO_GROUP_GET_STATUS(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        buf = bytearray(u.GROUP_STATUS.pack(8, 0))
        ret = self.p.ioctl(self.group, u.VFIO_GROUP_GET_STATUS, buf)
        return ret, {"flags": u.GROUP_STATUS.unpack(buf)[1]}

    def op_VFIO_GROUP_SET_CONTAINER(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arg = bytearray(struct.pack("<i", self.container))
        return self.p.ioctl(self.group, u.VFIO_GROUP_SET_CONTAINER, arg), {}

    def op_VFIO_GROUP_GET_DEVICE_FD(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fd = self.p.ioctl(self.group, u.VFIO_GROUP_GET_DEVICE_FD,
                          bytearray(args["device"].encode() + b"\0"))
        self.p.close(fd)
        return 0 if fd >= 0 else fd, {}

    def op_VFIO_IOMMU_GET_INFO(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        argsz = args["argsz"]
        buf = bytearray(max(argsz, 24))
        struct.pack_into("<I", buf, 0, argsz)
        ret = self.p.ioctl(self.container, u.VFIO_IOMMU_GET_INFO, buf)
        return ret, parse_info(bytes(buf), argsz)

    def op_VFIO_IOMMU_MAP_DMA(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if args.get("arg", 0) is None:
            return self.p.ioctl(self.container, u.VFIO_IOMMU_MAP_DMA, 0), {}
        buf = bytearray(max(args["argsz"], 32))
        u.DMA_MAP.pack_into(buf, 0, args["argsz"], args["flags"], self.vaddr(args["vaddr"]),
                            args["iova"], args["size"])
        return self.p.ioctl(self.container, u.VFIO_IOMMU_MAP_DMA, buf), {}

    def op_VFIO_IOMMU_UNMAP_DMA(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        buf = bytearray(u.DMA_UNMAP.pack(args["argsz"], args["flags"], args["iova"],
                                         args["size"]))
        ret = self.p.ioctl(self.container, u.VFIO_IOMMU_UNMAP_DMA, buf)
        return ret, {"size": u.DMA_UNMAP.unpack(buf)[3]}

    def close(self) -> None:
        self.p.exit()


def parse_info(buf: bytes, argsz_in: int) -> dict[str, Any]:
    """The fields GET_INFO wrote back: ``min(argsz, 24)`` bytes, then the chain."""
    argsz, flags, pgsizes, cap_offset, _ = u.IOMMU_INFO.unpack_from(buf)
    out: dict[str, Any] = {"argsz": argsz, "flags": flags, "iova_pgsizes": pgsizes}
    if argsz_in >= 24:
        out["cap_offset"] = cap_offset
    if cap_offset:
        caps = []
        off = cap_offset
        while off:
            cid, ver, nxt = u.CAP_HEADER.unpack_from(buf, off)
            cap: dict[str, Any] = {"id": cid, "version": ver, "next": nxt}
            if cid == u.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                _, _, _, fl, pg, mx = u.CAP_MIGRATION.unpack_from(buf, off)
                cap.update(name="MIGRATION", flags=fl, pgsize_bitmap=pg,
                           max_dirty_bitmap_size=mx)
            elif cid == u.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                cap.update(name="DMA_AVAIL", avail=u.CAP_DMA_AVAIL.unpack_from(buf, off)[3])
            elif cid == u.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                n = u.CAP_IOVA_RANGE.unpack_from(buf, off)[3]
                ranges = [list(u.IOVA_RANGE.unpack_from(buf, off + 16 + 16 * i))
                          for i in range(n)]
                cap.update(name="IOVA_RANGE", nr_iovas=n, ranges=ranges)
            caps.append(cap)
            off = nxt
        out["caps"] = caps
    return out
