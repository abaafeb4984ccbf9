"""The demo's DDW cases: default window to a direct DDW, and the refusal when in use."""

from iommulab.workload.ddw import DEMO_CASES, run_ddw


def test_demo_cases() -> None:
    got = {c.name: run_ddw(c) for c in DEMO_CASES}
    qemu = got["QEMU: second window"]
    assert qemu.mode == "direct" and qemu.dma_after == (1 << 59) + 0x1234_5000
    assert qemu.hcalls["H_PUT_TCE_INDIRECT"] == 1  # 8G in 512 TCEs of 16M (QEMU 10)
    idle = got["one window, default table idle"]
    assert idle.mode == "direct" and idle.rtas == {"query": 2, "remove": 1, "create": 1}
    busy = got["one window, default table in use"]
    assert busy.mode == "refused" and busy.dma_after < 1 << 30 and busy.dma_ok
    assert "current IOMMU table in use, can't be replaced." in busy.log
    small = got["small largest block"]
    assert small.mode == "dynamic" and small.window.startswith("2^31 ")
    assert all(r.dma_ok for r in got.values())
