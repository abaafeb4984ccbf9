"""eventfd's counter at its limits (fs/eventfd.c, 6.12)."""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine
from iommulab.eventfd import EventFdFile
from iommulab.testing import check_invariants

MAX = (1 << 64) - 1


def test_a_signal_may_take_the_counter_to_ullong_max() -> None:
    """``eventfd_signal_mask`` lets the counter reach ULLONG_MAX (poll's EPOLLERR), where
    a write stops one short; the fuzzer met this through a SET_IRQS trigger."""
    m = Machine("x86-vtd", ram="64M")
    p = m.spawn_process()
    fd = p.eventfd(0)
    p.write_fd(fd, (MAX - 1).to_bytes(8, "little"))
    f = p.files[fd]
    assert isinstance(f, EventFdFile)
    f.ctx.signal()
    f.ctx.signal()  # saturates
    assert f.ctx.count == MAX and f.ctx.signals == 2
    check_invariants([m, f.ctx])
    with pytest.raises(OSError) as e:
        p.write_fd(fd, (1).to_bytes(8, "little"))
    assert e.value.errno == errno.EAGAIN
    assert int.from_bytes(p.read_fd(fd, 8), "little") == MAX
    p.exit()
