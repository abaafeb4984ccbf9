"""DMA ownership of IOMMU groups (drivers/iommu/iommu.c, identical in Linux 6.12 and 7.0):
claim and release by a user owner (VFIO's group claim, iommufd's device claim), the
blocking domain while owned, a kernel driver's use of the default domain, and how user
domains are attached and detached over that. Groups with two devices are built on the
SMMUv3 platform of the DMA tests."""

from __future__ import annotations

import errno

import pytest

from iommulab import Prot
from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import ArmSmmuMaster
from iommulab.errors import InvalidArgument
from iommulab.iommu import DomainType, IommuDomain, IommuGroup, ResvRegion, ResvType

from ..dma.platform import DmaPlatform, make_dma_platform
from ..helpers import expect_errno

KERNELS = ["6.12", "7.0"]


def _two_device_group(kernel: str, *, resv: list[ResvRegion] | None = None
                      ) -> tuple[DmaPlatform, DmaDevice, DmaDevice, IommuGroup]:
    p = make_dma_platform(strict=True, kernel=kernel)
    first = p.device()
    second = p.device(0x20, "second", probe=False, resv=resv)
    assert first.group is not None
    p.core.probe_device(second, first.group)
    return p, first, second, first.group


def _user_domain(p: DmaPlatform, dev: DmaDevice) -> IommuDomain:
    assert dev.dev_iommu is not None
    domain: IommuDomain = p.smmu.domain_alloc_paging(dev.dev_iommu.priv, DomainType.UNMANAGED)
    return domain


def _unowned_on_default(group: IommuGroup) -> None:
    group._check()
    assert group.owner is None and group.owner_cnt == 0
    assert group.domain is group.default_domain


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_group_claim_blocks_dma_and_its_release_restores_the_default_domain(
        kernel: str) -> None:
    """iommu_group_claim_dma_owner: the whole group to the blocking domain, one owner
    counted; a second claim of the group, by anyone, is EPERM; iommufd's device claim by
    another owner is EPERM too; iommu_group_release_dma_owner: the default domain."""
    p, _, second, group = _two_device_group(kernel)
    vfio_group = object()
    p.core.group_claim_dma_owner(group, vfio_group)
    group._check()
    assert group.domain is p.smmu.blocked_domain is group.blocking_domain
    assert (group.owner, group.owner_cnt) == (vfio_group, 1)
    assert p.core.group_dma_owner_claimed(group)
    with pytest.raises(OSError) as err:
        p.core.group_claim_dma_owner(group, vfio_group)
    assert err.value.errno == errno.EPERM and "already has 1 DMA owner" in str(err.value)
    expect_errno(errno.EPERM, p.core.device_claim_dma_owner, second, object())
    assert group.owner_cnt == 1
    p.core.group_release_dma_owner(group)
    _unowned_on_default(group)
    assert not p.core.group_dma_owner_claimed(group)
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_device_claims_of_one_owner_are_counted_and_the_last_release_unblocks(
        kernel: str) -> None:
    """iommu_device_claim_dma_owner: devices of one group may each claim it for the same
    owner (owner_cnt counts them), another owner is EPERM; iommu_device_release_dma_owner
    drops one claim, and only the last one puts the default domain back."""
    p, first, second, group = _two_device_group(kernel)
    ictx = object()
    p.core.device_claim_dma_owner(first, ictx)
    p.core.device_claim_dma_owner(second, ictx)
    assert (group.owner, group.owner_cnt) == (ictx, 2)
    expect_errno(errno.EPERM, p.core.device_claim_dma_owner, second, object())
    expect_errno(errno.EPERM, p.core.group_claim_dma_owner, group, object())
    p.core.device_release_dma_owner(second)
    assert (group.owner, group.owner_cnt) == (ictx, 1)
    assert group.domain is group.blocking_domain
    p.core.device_release_dma_owner(first)
    _unowned_on_default(group)
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_claim_is_ebusy_while_the_group_is_not_on_its_default_domain(kernel: str) -> None:
    """__iommu_take_dma_ownership: EBUSY when group->domain is not the default domain (a
    kernel user attached its own domain); nothing changes."""
    p, first, _, group = _two_device_group(kernel)
    domain = _user_domain(p, first)
    p.core.attach_group(domain, group)
    expect_errno(errno.EBUSY, p.core.group_claim_dma_owner, group, object())
    expect_errno(errno.EBUSY, p.core.device_claim_dma_owner, first, object())
    assert group.domain is domain and group.owner_cnt == 0
    p.core.detach_group(group)  # unowned: back to the default domain
    _unowned_on_default(group)
    domain.free()
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_kernel_driver_on_the_dma_api_makes_user_claims_eperm(kernel: str) -> None:
    """iommu_device_use_default_domain (a driver without driver_managed_dma) counts an
    owner with no cookie: the group claim and a device claim are EPERM while it is bound.
    While a user owns the group a kernel driver cannot bind (EBUSY)."""
    p, first, second, group = _two_device_group(kernel)
    p.core.device_use_default_domain(first)
    assert (group.owner, group.owner_cnt) == (None, 1)
    expect_errno(errno.EPERM, p.core.group_claim_dma_owner, group, object())
    expect_errno(errno.EPERM, p.core.device_claim_dma_owner, second, object())
    assert group.domain is group.default_domain
    p.core.device_unuse_default_domain(first)
    ictx = object()
    p.core.device_claim_dma_owner(second, ictx)
    expect_errno(errno.EBUSY, p.core.device_use_default_domain, first)
    p.core.device_release_dma_owner(second)
    p.core.device_use_default_domain(first)  # unowned again: the driver binds
    p.core.device_unuse_default_domain(first)
    _unowned_on_default(group)
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_user_domains_attach_over_the_blocking_domain_and_detach_back_to_it(
        kernel: str) -> None:
    """iommu_attach_group: EBUSY while another user domain is attached (only a core
    domain, default or blocking, may be left that way); iommu_detach_group
    (__iommu_group_set_core_domain): the blocking domain while owned, so a detached
    owned group does no DMA; after the release, the default domain."""
    p, first, _, group = _two_device_group(kernel)
    owner = object()
    p.core.group_claim_dma_owner(group, owner)
    one, two = _user_domain(p, first), _user_domain(p, first)
    p.core.attach_group(one, group)
    assert group.domain is one
    with pytest.raises(OSError) as err:
        p.core.attach_group(two, group)
    assert err.value.errno == errno.EBUSY and "not to a core domain" in str(err.value)
    p.core.set_group_domain(group, two)  # iommu_group_replace_domain may
    p.core.detach_group(group)
    group._check()
    assert group.domain is group.blocking_domain and group.owner is owner
    p.core.group_release_dma_owner(group)
    _unowned_on_default(group)
    one.free()
    two.free()
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_device_that_needs_its_direct_mappings_cannot_be_claimed(kernel: str) -> None:
    """__iommu_device_set_domain: a device with an IOMMU_RESV_DIRECT region refuses the
    blocking domain (EINVAL, "Firmware has requested ... 1:1"), so the claim fails, the
    group is reverted to its default domain and nobody owns it."""
    direct = [ResvRegion(0x8000_0000, 0x1000, Prot.READ | Prot.WRITE, ResvType.DIRECT)]
    p, _, second, group = _two_device_group(kernel, resv=direct)
    with pytest.raises(InvalidArgument, match="1:1 IOMMU mapping"):
        p.core.group_claim_dma_owner(group, object())
    with pytest.raises(InvalidArgument, match="1:1 IOMMU mapping"):
        p.core.device_claim_dma_owner(second, object())
    _unowned_on_default(group)
    p.close()


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_release_puts_the_default_domain_back_even_if_a_device_refuses_it(
        kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """__iommu_release_dma_ownership sets the default domain with
    __iommu_group_set_domain_nofail: a device whose driver refuses it is left on the
    blocking domain, the other devices still move, the group is on the default domain
    and the kernel WARNs (logged)."""
    p, first, second, group = _two_device_group(kernel)
    p.core.group_claim_dma_owner(group, object())
    assert second.dev_iommu is not None
    refusing = second.dev_iommu.priv
    attached: list[tuple[object, object]] = []
    attach = p.smmu.attach_dev

    def refuse_default(domain: IommuDomain, master: ArmSmmuMaster) -> None:
        if master is refusing and domain is group.default_domain:
            raise InvalidArgument("injected: the driver refuses the default domain")
        attached.append((domain, master))
        attach(domain, master)

    monkeypatch.setattr(p.smmu, "attach_dev", refuse_default)
    p.core.group_release_dma_owner(group)
    assert first.dev_iommu is not None
    assert attached == [(group.default_domain, first.dev_iommu.priv),
                        (p.smmu.blocked_domain, refusing)]
    assert group.domain is group.default_domain and group.owner_cnt == 0
    assert "could not be set" in p.core.log[-1]
    monkeypatch.undo()
    p.close()


def test_a_claim_without_a_group_is_enodev() -> None:
    """iommu_device_claim_dma_owner: ENODEV for a device the IOMMU never probed."""
    p = make_dma_platform(strict=True)
    dev = p.device(probe=False)
    expect_errno(errno.ENODEV, p.core.device_claim_dma_owner, dev, object())
    p.close()
