"""A C program reading and answering an iommufd fault queue under ``iommulab exec`` (mock,
Linux 6.12): the fault fd is a real fd of the program whose read and write reach the
model with the program's own buffers, nonseekable as ``nonseekable_open`` makes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

Build = Callable[..., Path]
EFAULT, EBUSY, EINVAL, ESPIPE, EOPNOTSUPP = 14, 16, 22, 29, 95
#: the kernel's answers (drivers/iommu/iommufd/fault.c): ids are the lowest free ones
#: (IOAS 1, selftest object 2, device 3, its HWPT 4, the parent 5, the fault 6)
EXPECTED = [
    "parent 0 0",
    f"fault_alloc_flags -1 {EOPNOTSUPP}",
    "fault_alloc 0 0",
    "fault_fd anon_inode:[iommufd-pgfault] cloexec=1",
    "nested_iopf 0 0",
    "replace_iopf 0 0",
    "read_empty 0 0 flags=0 dev=0 pasid=0 grpid=0 perm=0 addr=0 cookie=0",
    "trigger 0 0", "trigger 0 0", "trigger 0 0",
    f"pread -1 {ESPIPE}",
    f"read_short -1 {ESPIPE}",
    f"read_efault -1 {EFAULT}",
    "read_1 40 0 flags=3 dev=3 pasid=1 grpid=1 perm=3 addr=0xdeadbeaf cookie=1",
    "read_2 40 0 flags=3 dev=3 pasid=1 grpid=2 perm=3 addr=0xdeadbeaf cookie=2",
    "read_big 40 0 grpid=3 cookie=3",
    "write_partial 8 0",
    f"write_unknown -1 {EINVAL}",
    f"write_code -1 {EINVAL}",
    f"write_efault -1 {EFAULT}",
    f"pwrite -1 {ESPIPE}",
    "write_1 8 0",
    f"destroy_iopf_attached {EBUSY}",
    "replace_parent 0 0",
    f"write_3_after_detach -1 {EINVAL}",
    "destroy_iopf 0",
    f"destroy_fault_open {EBUSY}",
    "destroy_fault 0",
    f"destroy_parent {EBUSY}",  # the device is attached to it
]


def test_fault_queue_program(build: Build, tmp_path: Path) -> None:
    m = Machine("mock", kernel="6.12")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("fault_queue"))], timeout=60, stdout=f)
    assert result.handler_errors == [] and result.status == 0
    assert out.read_text().splitlines() == EXPECTED
    responses = [(r.grpid, r.code) for _, r in m.core.driver.page_responses]
    assert responses == [(2, 0), (1, 1), (3, 1)]  # SUCCESS, INVALID, and the replace's
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
