"""A seeded fuzzer of the model's user-facing calls: processes' ``open``, ``mmap``,
``munmap``, ``memfd_create``, ``ftruncate``, ``read``, ``write``, ``fork``, ``close`` and
``exit``, every VFIO and iommufd ioctl (the selftest's IOMMU_TEST_CMD on the mock
platform, the VFIO compatibility ioctls on iommufd) and device DMA, with well-formed,
mutated and random-byte arguments. After each sequence: only OSErrors escaped, every
``_check()`` holds, and once every process exited the machine holds what a fresh one
does (:mod:`iommulab.testing.leaks`).

    report = Fuzzer(seed=1, platforms=["mock"]).run(2000)
    for f in report.findings.values():
        print(f.key, f.count); print(f.reproducer())
"""

from .runner import (
    Finding,
    Fuzzer,
    FuzzReport,
    Guard,
    SequenceResult,
    address_space_limit,
    minimize,
    random_config,
    replay,
    run_sequence,
)
from .world import Op, ProcSpec, World, WorldConfig, find_device, render

__all__ = ["Finding", "FuzzReport", "Fuzzer", "Guard", "Op", "ProcSpec", "SequenceResult",
           "World", "WorldConfig", "address_space_limit", "find_device", "minimize",
           "random_config", "render", "replay", "run_sequence"]
