"""The short seeded fuzz run: every platform, both kernels, a few thousand operations each
(x86-vtd more: half its worlds have a scalable-mode unit, where the nested paths run),
no finding (crash, failed _check(), leak, hang, host memory) allowed.

Each failing finding is printed with its minimal reproducer, a Python script that builds
the machine and replays the calls (``python3 -c "$(...)"`` reruns it). The long run is
``benchmarks/fuzz_long.py``.
"""

from __future__ import annotations

import functools

import pytest

from iommulab.testing.fuzz import Fuzzer, FuzzReport, Guard, address_space_limit

SEED = 19
OPS = 5000  # per platform: a few seconds each
PLATFORM_OPS = {"x86-vtd": 10000}  # legacy and scalable-mode worlds
PLATFORMS = ["x86-vtd", "arm64-smmuv3", "ppc64-pseries", "mock"]

#: Calls each platform's run must have made succeed at least once: the run gets past the
#: argument checks to maps, attachments, dirty tracking, accesses and DMA.
_COMMON = {"mmap", "munmap", "fork", "memfd_create", "ftruncate", "write", "read", "close",
           "exit", "dma_read", "dma_write"}
_IOMMU = _COMMON | {
    "open", "ioctl VFIO_GROUP_SET_CONTAINER", "ioctl VFIO_SET_IOMMU", "ioctl VFIO_IOMMU_MAP_DMA",
    "ioctl VFIO_IOMMU_UNMAP_DMA", "ioctl VFIO_GROUP_GET_DEVICE_FD",
    "ioctl VFIO_DEVICE_BIND_IOMMUFD", "ioctl VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "ioctl VFIO_DEVICE_GET_REGION_INFO", "ioctl IOMMU_IOAS_ALLOC", "ioctl IOMMU_IOAS_MAP",
    "ioctl IOMMU_IOAS_UNMAP", "ioctl IOMMU_IOAS_COPY", "ioctl IOMMU_HWPT_ALLOC",
    "ioctl IOMMU_DESTROY", "ioctl IOMMU_IOAS_MAP_FILE"}
EXPECTED = {
    # dirty tracking and HWPT_INVALIDATE (of a nested HWPT): only on a scalable-mode unit
    "x86-vtd": _IOMMU | {"ioctl IOMMU_HWPT_SET_DIRTY_TRACKING", "ioctl IOMMU_HWPT_INVALIDATE"},
    "arm64-smmuv3": _IOMMU | {"ioctl IOMMU_HWPT_SET_DIRTY_TRACKING",
                             "ioctl IOMMU_HWPT_GET_DIRTY_BITMAP", "ioctl IOMMU_VIOMMU_ALLOC"},
    "ppc64-pseries": _COMMON - {"dma_read", "dma_write"},
    "mock": _IOMMU | {"ioctl IOMMU_HWPT_SET_DIRTY_TRACKING", "ioctl IOMMU_HWPT_INVALIDATE",
                      "ioctl IOMMU_VIOMMU_ALLOC",
                      "ioctl IOMMU_TEST_CMD TEST_MOCK_DOMAIN",
                      "ioctl IOMMU_TEST_CMD TEST_CREATE_ACCESS",
                      "ioctl IOMMU_TEST_CMD TEST_ACCESS_PAGES",
                      "ioctl IOMMU_TEST_CMD TEST_ACCESS_RW", "ioctl IOMMU_TEST_CMD TEST_DIRTY",
                      "ioctl IOMMU_TEST_CMD TEST_MD_CHECK_MAP"},
}


@functools.cache
def _report(platform: str) -> FuzzReport:
    """One run per platform, shared by the tests below (allocations sized by a length are
    bounded by RLIMIT_AS, so they fail with MemoryError instead of taking the host)."""
    fuzzer = Fuzzer(SEED, [platform], guard=Guard(hang_seconds=60), minimize_budget=150)
    with address_space_limit(2 << 30):
        return fuzzer.run(PLATFORM_OPS.get(platform, OPS))


def _describe(rep: FuzzReport) -> str:
    out = []
    for f in rep.findings.values():
        out.append(f"{f.key} (seen {f.count} times, sequences {f.seeds})\n{f.message}\n"
                   f"reproducer:\n{f.reproducer()}")
    return "\n".join(out)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_short_seeded_run_finds_no_crash_broken_invariant_or_leak(platform: str) -> None:
    rep = _report(platform)
    assert rep.ops == PLATFORM_OPS.get(platform, OPS)
    assert not rep.findings, _describe(rep)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_short_run_gets_past_the_argument_checks(platform: str) -> None:
    """Calls that need state (a group set to a container, a bound device, a mapping)
    succeed at least once, on both kernels."""
    rep = _report(platform)
    ok = {name for name, results in rep.outcomes.items() if results["ok"]}
    assert EXPECTED[platform] <= ok, sorted(EXPECTED[platform] - ok)
    assert set(rep.ops_by_kernel) == {"6.12", "7.0"}


def test_the_x86_run_has_legacy_and_scalable_mode_worlds() -> None:
    """``vtd_scalable`` is drawn for x86-vtd worlds only, about half of them."""
    rep = _report("x86-vtd")
    fuzzer = Fuzzer(SEED, ["x86-vtd"])
    modes = {fuzzer.sequence(i)[0].vtd_scalable for i in range(rep.sequences)}
    assert modes == {False, True}
    assert not any(Fuzzer(SEED, [p]).sequence(i)[0].vtd_scalable
                   for p in PLATFORMS[1:] for i in range(40))
