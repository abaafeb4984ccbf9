"""The sysfs files a VMM reads under ``iommulab exec``: an IOMMU group's ``type`` and
``reserved_regions`` (``iommu_group_show_type``, ``iommu_group_show_resv_regions``) and
vfio_iommu_type1's module parameters, with the kernel's formats and errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

Build = Callable[..., Path]
ROOT = os.getuid() == 0
GROUPS = "/sys/kernel/iommu_groups/0"
PARAMS = "/sys/module/vfio_iommu_type1/parameters"

#: what 6.12 shows for a lone PCI device's group: VT-d reserves the interrupt range as
#: MSI (IOAPIC_RANGE_START..END), SMMUv3 its software MSI window (MSI_IOVA_BASE, 1M);
#: x86 defaults to lazy invalidation (DMA-FQ), arm64 to strict (DMA)
SHOWN = {"x86-vtd": ("DMA-FQ", "0x00000000fee00000 0x00000000feefffff msi"),
         "arm64-smmuv3": ("DMA", "0x0000000008000000 0x00000000080fffff msi")}


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_sysfs_files(build: Build, tmp_path: Path, platform: str) -> None:
    m = Machine(platform)
    m.add_pci_device("0000:00:02.0", model="edu")
    m.module_params["vfio_iommu_type1.dma_entry_limit"] = 1000
    m.module_params["vfio_iommu_type1.disable_hugepages"] = 1
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("sysfs")), "0"], timeout=60, stdout=f)
    assert result.handler_errors == [] and result.status == 0
    type_, regions = SHOWN[platform]
    assert out.read_text().splitlines() == [
        f"{GROUPS}/type: {type_}",
        f"{GROUPS}/reserved_regions: {regions}",
        f"{PARAMS}/dma_entry_limit: 1000",  # param_get_uint
        f"{PARAMS}/allow_unsafe_interrupts: N",  # param_get_bool
        f"{PARAMS}/disable_hugepages: Y",
        "pieces 2 3 1000", "read_at_end 0 0", "pread_2 3 0",
        "fstat 0 0", "mode 100644 size 4096",  # a sysfs attribute: PAGE_SIZE bytes
        "write_rdonly -1 9",  # EBADF: not open for writing
        "mmap -1 19",  # ENODEV: kernfs without KERNFS_HAS_MMAP
        "sendfile -1 22", "copy_file_range -1 18",  # lab: not spliced, see bridge
        "stat_regions 0 0", "mode 100444 size 4096",
        "open_wronly -1 13",  # lab: read-only under exec
        "open_directory -1 20",  # ENOTDIR
        "stat_group_dir 0 0", "dir 1",
        "open_missing -1 2", "open_group_99 -1 2", "open_param_missing -1 2",
        "access_type 0 0",
        "open_type_wronly -1 13",  # lab: type is read-only under exec
        *(["open_param_wronly 0 0", "write_hex 5 0", "write_bad -1 22",
            "write_range -1 34",  # kstrtouint: EINVAL, ERANGE
            f"{PARAMS}/dma_entry_limit: 32", "write_on 2 0", "write_x -1 22",
            f"{PARAMS}/allow_unsafe_interrupts: Y"] if ROOT else
          ["open_param_wronly -1 13", "write_hex -1 9", "write_bad -1 9",
           "write_range -1 9", f"{PARAMS}/dma_entry_limit: 1000",
           "write_on -1 9", "write_x -1 9", f"{PARAMS}/allow_unsafe_interrupts: N"])]
    assert m.module_params["vfio_iommu_type1.dma_entry_limit"] == (32 if ROOT else 1000)
    assert m.module_params["vfio_iommu_type1.allow_unsafe_interrupts"] == int(ROOT)
    assert result.stats.installed == result.stats.released == (10 if ROOT else 8)
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_sysfs_shows_what_the_machine_has(build: Build, tmp_path: Path) -> None:
    """No device: no group directory; a group's files follow the machine, read at each
    open (a second group, its own regions)."""
    m = Machine("x86-vtd")
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("sysfs")), "0"], timeout=60, stdout=f)
    assert result.status == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == [f"{GROUPS}/type: errno 2", f"{GROUPS}/reserved_regions: errno 2"]
    m.add_pci_device("0000:00:02.0")
    m.add_pci_device("0000:00:03.0")
    with out.open("wb") as f:
        result = run_exec(m, [str(build("sysfs")), "1"], timeout=60, stdout=f)
    assert result.status == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == ["/sys/kernel/iommu_groups/1/type: DMA-FQ",
                         "/sys/kernel/iommu_groups/1/reserved_regions: "
                         "0x00000000fee00000 0x00000000feefffff msi"]


def test_sysfs_links_and_listings(build: Build, tmp_path: Path) -> None:
    """A device's links (``/sys/bus/pci/devices/BDF``, its ``iommu_group``, the group's
    ``devices/``), ``vfio-dev``, directory listings with their types, ``openat`` from a
    directory fd, ``getdents64``'s buffer rules and a directory's errors."""
    m = Machine("x86-vtd")
    m.add_pci_device("0000:00:02.0", model="edu")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("sysfs_tree")), "0000:00:02.0"], timeout=60,
                          stdout=f)
    assert result.handler_errors == [] and result.status == 0
    dev = "/sys/bus/pci/devices/0000:00:02.0"
    assert out.read_text().splitlines() == [
        f"readlink {dev}: ../../../devices/pci0000:00/0000:00:02.0",
        f"readlink {dev}/iommu_group: ../../../kernel/iommu_groups/0",
        "realpath /sys/kernel/iommu_groups/0",
        "lstat_link 0 0", "link 1 size 30", "stat_link 0 0", "dir 1",
        "open_nofollow -1 40",  # ELOOP
        "readlink_file -1 22", "readlink_zero -1 22",  # EINVAL
        # DT_DIR 4, DT_REG 8, DT_LNK 10, DT_CHR 2
        "ls /sys/kernel/iommu_groups: ./4 ../4 0/4",
        "ls /sys/kernel/iommu_groups/0: ./4 ../4 devices/4 reserved_regions/8 type/8",
        "ls /sys/kernel/iommu_groups/0/devices: ./4 ../4 0000:00:02.0/10",
        "ls /sys/module/vfio_iommu_type1/parameters: ./4 ../4 allow_unsafe_interrupts/8 "
        "disable_hugepages/8 dma_entry_limit/8",
        f"ls {dev}: ./4 ../4 iommu_group/10 vfio-dev/4",
        "ls /dev/vfio: ./4 ../4 devices/4 0/2 vfio/2",
        "ls /dev/vfio/devices: ./4 ../4 vfio0/2",
        "vfio-dev 237:0",
        "open_dir 0 0", "fstat_dir 0 0", "dir 1", "openat type: DMA-FQ",
        "openat_missing -1 2",  # ENOENT inside a served directory
        "getdents_small -1 22",  # EINVAL: not even one record fits
        "getdents 144 bytes in 4 calls, last 0", "getdents_again 144 0",  # after rewind
        "read_dir -1 21",  # EISDIR
        "getdents_file -1 20",  # ENOTDIR
        "open_dir_write -1 21",  # EISDIR
        "open_dir_plain 0 0"]
    assert result.stats.installed == result.stats.released
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
