"""``poll``, ``ppoll``, ``select``, ``pselect`` and ``epoll`` of an iommufd event queue's
fd by a C program under ``iommulab exec`` (``eventq_poll.c``, mock platform): the
program's own waits see the kernel's readiness (``iommufd_fault_fops_poll`` of 6.12,
``iommufd_eventq_fops_poll`` of 7.0): EPOLLIN | EPOLLRDNORM exactly while a record is
queued, EPOLLOUT always on a fault queue and never on a vEVENTQ, an EPOLLET edge per
record queued, and a wait with a timeout ends when another thread or process of the
program queues a record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

Build = Callable[..., Path]


def _hex(v: int) -> str:
    """C's ``%#x``: no prefix for 0."""
    return f"{v:#x}" if v else "0"


def _checks(step: str, queued: bool, fault: bool, epoll_out: bool = True) -> list[str]:
    """What ``show_all`` prints: poll and ppoll (POLLIN | POLLRDNORM | POLLOUT asked),
    epoll (EPOLLIN | EPOLLRDNORM, and EPOLLOUT while ``epoll_out``, registered), select
    (read and write sets), pselect (read set)."""
    r, w = int(queued), int(fault)
    mask = (0x41 if queued else 0) | (0x4 if fault else 0)
    emask = mask if epoll_out else mask & ~0x4
    return [f"{step} poll {int(bool(mask))} revents={_hex(mask)}",
            f"{step} ppoll {int(bool(mask))} revents={_hex(mask)}",
            f"{step} epoll {int(bool(emask))} events={_hex(emask)}",
            f"{step} select {r + w} r={r} w={w}",
            f"{step} pselect {r} r={r}"]


def _expected(fault: bool) -> list[str]:
    size = 40 if fault else 12  # struct iommu_hwpt_pgfault; a vevent header and its id
    ready, idle = (0x45, 0x4) if fault else (0x41, 0)
    out = [*_checks("empty", False, fault), "trigger 0", *_checks("queued", True, fault),
           f"dup poll 1 revents={_hex(ready)}", f"read {size}",
           *_checks("read", False, fault), "trigger2 0 0", f"read_one {size}",
           f"one_left poll 1 revents={_hex(ready)}", f"read_one {size}",
           f"none_left poll {int(fault)} revents={_hex(idle)}",
           # EPOLLET: an edge per record queued (wake_up_interruptible each time)
           "et_empty 0", "et_trigger 0 1 again 0", "et_trigger 0 1 again 0",
           f"et_read {2 * size} 0",
           f"wait_poll 1 revents=0x1 read {size}",
           f"wait_epoll 1 events=0x1 fd_ok=1 read {size}",
           f"wait_select 1 r=1 read {size}", "child 0",
           *_checks("end", False, fault, epoll_out=False)]
    if fault:  # an unread fault answered by the detach leaves nothing to read
        out += ["trigger3 0", "unread poll 1 revents=0x45", "replace 0",
                "detached poll 1 revents=0x4"]
    return out


@pytest.mark.parametrize(("mode", "kernel"), [("fault", "6.12"), ("veventq", "7.0")])
def test_eventq_fd_readiness(build: Build, tmp_path: Path, mode: str, kernel: str) -> None:
    m = Machine("mock", kernel=kernel)
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("eventq_poll")), mode], timeout=60, stdout=f)
    assert result.handler_errors == []
    assert result.status == 0, out.read_text()
    assert out.read_text().splitlines() == _expected(mode == "fault")
    if mode == "fault":  # the eight faults read were answered SUCCESS, the ninth INVALID
        codes = [r.code for _, r in m.core.driver.page_responses]
        assert codes == [0] * 8 + [1]
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert m.mem.pins.pins == 0
