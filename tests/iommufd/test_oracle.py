"""Every recorded real-kernel iommufd answer (tests/oracle/iommufd.sample.jsonl), replayed on
the x86-vtd model: each section opens /dev/iommu afresh and allocates IOAS A and B, as the
recording program did; a case named ``bogus`` uses the invalid id 0xdead, ``destroyed``
the IOAS the misc section destroyed."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest

from iommulab import Machine
from iommulab.iommufd import uapi as u

from ..vfio.oracle import load

CASES = [c for c in load("iommufd.sample.jsonl") if c["section"] != "meta"]


class Replayer:
    def __init__(self) -> None:
        self.m = Machine("x86-vtd", ram="1G")
        self.p = self.m.spawn_process(memlock_limit=None, cap_ipc_lock=True,
                                      cap_sys_resource=True)
        self.buf = self.p.mmap(64 << 20, "anon", populate=True)
        self.robuf = self.p.mmap(16 << 12, "anon", prot="r")
        self.munmapped = self.p.mmap(4 << 12, "anon")
        self.p.munmap(self.munmapped, 4 << 12)
        self.fd = -1
        self.section = ""
        self.ioas: list[int] = []

    def fresh(self, section: str) -> None:
        if self.fd >= 0:
            self.p.close(self.fd)
        self.fd = self.p.open("/dev/iommu")
        self.ioas = [] if section == "iommufd_setup" else [self.alloc(), self.alloc()]
        self.section = section

    def alloc(self) -> int:
        buf = bytearray(u.IOAS_ALLOC.pack(12, 0, 0))
        self.p.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, buf)
        return int(u.IOAS_ALLOC.unpack(buf)[2])

    def vaddr(self, text: str) -> int:
        if text.startswith("buf+"):
            return self.buf + int(text[4:], 16)
        return {"robuf(PROT_READ)": self.robuf, "munmapped": self.munmapped, "NULL": 0}[text]

    def ioas_id(self, case: dict[str, Any]) -> int:
        if "bogus" in case["case"]:
            return 0xDEAD
        if "destroyed" in case["case"] or "ioas_B" in case["case"]:
            return self.ioas[1]
        return self.ioas[0]

    def run(self, case: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
        try:
            out = getattr(self, "op_" + case["op"])(case, case["args"])
        except OSError as err:
            return -1, err.errno or 0, getattr(self, "partial", {})
        return 0, 0, out

    def op_open(self, case: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        return {}

    def op_IOMMU_IOAS_ALLOC(self, case: dict[str, Any], args: dict[str, Any]
                            ) -> dict[str, Any]:
        size = args.get("size", 12)
        raw = bytearray(u.IOAS_ALLOC.pack(12, args.get("flags", 0), 0))
        raw[:4] = struct.pack("<I", size)
        raw = raw.ljust(size, b"\0")
        if args.get("trailing") == "nonzero":
            raw[size - 1] = 1
        self.p.ioctl(self.fd, u.IOMMU_IOAS_ALLOC, raw)
        new = int(u.IOAS_ALLOC.unpack_from(raw)[2])
        self.ioas.append(new)
        return {"out_ioas_id_nonzero": int(new != 0)}

    def op_IOMMU_IOAS_IOVA_RANGES(self, case: dict[str, Any], args: dict[str, Any]
                                  ) -> dict[str, Any]:
        num = args.get("num_iovas", 0)
        arr = self.p.mmap(max(16, 16 * num))
        buf = bytearray(u.IOAS_IOVA_RANGES.pack(32, self.ioas_id(case), num, 0, arr, 0))
        try:
            self.p.ioctl(self.fd, u.IOMMU_IOAS_IOVA_RANGES, buf)
        finally:
            _, _, n, _, _, align = u.IOAS_IOVA_RANGES.unpack(buf)
            self.partial = {"num_iovas": n, "out_iova_alignment": align}
        raw = self.p.read(arr, 16 * min(n, num))
        ranges = [list(u.IOVA_RANGE.unpack_from(raw, 16 * i)) for i in range(min(n, num))]
        return {"num_iovas": n, "out_iova_alignment": align, "ranges": ranges}

    def op_IOMMU_IOAS_MAP(self, case: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        buf = bytearray(u.IOAS_MAP.pack(40, args["flags"], self.ioas_id(case), 0,
                                        self.vaddr(args["user_va"]), args["length"],
                                        args["iova"]))
        self.p.ioctl(self.fd, u.IOMMU_IOAS_MAP, buf)
        return {"iova": u.IOAS_MAP.unpack(buf)[6]}

    def op_IOMMU_IOAS_UNMAP(self, case: dict[str, Any], args: dict[str, Any]
                            ) -> dict[str, Any]:
        buf = bytearray(u.IOAS_UNMAP.pack(24, self.ioas_id(case), args["iova"],
                                          args["length"]))
        self.p.ioctl(self.fd, u.IOMMU_IOAS_UNMAP, buf)
        return {"length": u.IOAS_UNMAP.unpack(buf)[3]}

    def op_IOMMU_OPTION(self, case: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        option = {"RLIMIT_MODE": u.IOMMU_OPTION_RLIMIT_MODE,
                  "HUGE_PAGES": u.IOMMU_OPTION_HUGE_PAGES}[args["option"]]
        op = {"GET": u.IOMMU_OPTION_OP_GET, "SET": u.IOMMU_OPTION_OP_SET}[args["op"]]
        obj = self.ioas[0] if option == u.IOMMU_OPTION_HUGE_PAGES else 0
        buf = bytearray(u.OPTION.pack(24, option, op, 0, obj, args.get("val64", 0)))
        self.p.ioctl(self.fd, u.IOMMU_OPTION, buf)
        return {"val64": u.OPTION.unpack(buf)[5]}

    def op_IOMMU_DESTROY(self, case: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        self.p.ioctl(self.fd, u.IOMMU_DESTROY, bytearray(u.DESTROY.pack(8, self.ioas[1])))
        return {}


@pytest.fixture(scope="module")
def replayer() -> Iterator[Replayer]:
    r = Replayer()
    yield r
    r.p.exit()
    assert r.m.mem.pins.pins == 0 and r.p.mm.pinned_vm == 0


def test_the_sample_is_there() -> None:
    assert len(CASES) > 50


@pytest.mark.parametrize("case", CASES, ids=[f"{c['section']}:{c['case']}" for c in CASES])
def test_same_answer_as_linux(replayer: Replayer, case: dict[str, Any]) -> None:
    if case["section"] != replayer.section:
        replayer.fresh(case["section"])
    replayer.partial = {}
    ret, err, out = replayer.run(case)
    assert (ret, err) == (case["ret"], case["errno"]), case["errno_name"]
    for key, want in case["out"].items():
        assert out.get(key) == want, key
