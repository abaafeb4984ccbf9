"""The kernel version a machine answers as."""

import pytest

from iommulab import Machine
from iommulab.kernel import DEFAULT_KERNEL, LINUX_6_12, LINUX_7_0, KernelVersion


def test_default_is_the_recorded_kernel() -> None:
    # tests/oracle holds answers recorded from Linux 6.12.95
    assert DEFAULT_KERNEL == LINUX_6_12
    m = Machine("x86-vtd", ram="1G")
    assert m.kernel == LINUX_6_12 and m.driver.kernel == LINUX_6_12
    assert "kernel=6.12" in repr(m)


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3", "mock"])
def test_machine_passes_its_version_to_the_driver(platform: str) -> None:
    m = Machine(platform, ram="1G", kernel="7.0")
    assert m.kernel == LINUX_7_0 and m.driver.kernel is m.kernel


def test_comparisons_name_the_release_that_changed() -> None:
    assert LINUX_7_0 >= (6, 13) and not LINUX_6_12 >= (6, 13)
    assert LINUX_6_12 < (6, 13) and LINUX_6_12 <= (6, 12) and LINUX_7_0 > LINUX_6_12
    assert str(LINUX_7_0) == "7.0" and KernelVersion.parse(LINUX_7_0) is LINUX_7_0


@pytest.mark.parametrize(("text", "why"), [("6.13", "answers as 6.12 or 7.0"),
                                           ("7", "want one of 6.12, 7.0"),
                                           ("latest", "want one of")])
def test_unmodelled_versions_are_refused_by_name(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as e:
        Machine("x86-vtd", ram="1G", kernel=text)
    assert repr(text) in str(e.value)
