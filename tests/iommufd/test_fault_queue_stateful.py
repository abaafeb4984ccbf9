"""The fault queue against a plain reference (hypothesis state machine): triggers, reads
of any count, writes of any responses, and leaving and coming back to the IOPF HWPT, on
the 6.12 mock. The reference is a list of unread group ids and a dict of cookies, with
fault.c's rules written out plainly."""

from __future__ import annotations

import errno
import struct

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iommulab.iommufd.eventq import EPOLLIN, EPOLLOUT, EPOLLRDNORM, HWPT_PGFAULT

from .test_fault_queue import INVALID, REC, Setup, response, trigger

RESP = 8


class FaultQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = Setup()
        self.s.t.mock_domain_replace(self.s.stdev, self.s.iopf)
        self.on_iopf = True
        self.unread: list[int] = []  # grpids, oldest first
        self.waiting: dict[int, int] = {}  # cookie -> grpid
        self.answered: list[tuple[int, int]] = []  # (grpid, code) the device got
        self.next_grpid = 1

    def _responses(self) -> list[tuple[int, int]]:
        return [(r.grpid, r.code) for _, r in self.s.driver.page_responses]

    @rule()
    def fault(self) -> None:
        trigger(self.s.t, self.s.dev, grpid=self.next_grpid)
        if self.on_iopf:
            self.unread.append(self.next_grpid)
        else:  # no queue takes it: the driver answers it INVALID at once
            self.answered.append((self.next_grpid, INVALID))
        self.next_grpid += 1

    @rule(records=st.integers(0, 4), extra=st.sampled_from([0, 0, 0, 1, 39]))
    def read(self, records: int, extra: int) -> None:
        t, fd = self.s.t, self.s.fault_fd
        count = records * REC + extra
        if extra:
            want: int | None = errno.ESPIPE
        elif self.unread and not records:
            want = errno.EINVAL
        else:
            want = None
        try:
            got = t.p.read_fd(fd, count)
        except OSError as e:
            assert e.errno == want
            return
        assert want is None
        n = min(records, len(self.unread))
        assert len(got) == n * REC
        for i in range(n):
            rec = HWPT_PGFAULT.unpack_from(got, i * REC)
            grpid, cookie = rec[3], rec[8]
            assert grpid == self.unread[i]
            free = next(c for c in range(1, len(self.waiting) + 2) if c not in self.waiting)
            assert cookie == free
            self.waiting[cookie] = grpid
        del self.unread[:n]

    @rule(picks=st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0, 1, 1, 2])),
                         max_size=3))
    def write(self, picks: list[tuple[int, int]]) -> None:
        data = b"".join(response(c, code) for c, code in picks)
        done = 0
        err = None
        for cookie, code in picks:
            if code not in (0, 1) or cookie not in self.waiting:
                err = errno.EINVAL
                break
            self.answered.append((self.waiting.pop(cookie), code))
            done += RESP
        try:
            assert self.s.t.p.write_fd(self.s.fault_fd, data) == done
            assert done or err is None
        except OSError as e:
            assert not done and e.errno == err

    @precondition(lambda self: self.on_iopf)
    @rule()
    def leave(self) -> None:
        self.s.t.mock_domain_replace(self.s.stdev, self.s.parent)
        self.answered += [(g, INVALID) for g in self.unread]
        self.answered += [(g, INVALID) for g in self.waiting.values()]
        self.unread, self.waiting = [], {}
        self.on_iopf = False

    @precondition(lambda self: not self.on_iopf)
    @rule()
    def come_back(self) -> None:
        self.s.t.mock_domain_replace(self.s.stdev, self.s.iopf)
        self.on_iopf = True

    @invariant()
    def agrees(self) -> None:
        assert sorted(self._responses()) == sorted(self.answered)
        ready = EPOLLIN | EPOLLRDNORM if self.unread else 0
        assert self.s.t.p.poll(self.s.fault_fd) == EPOLLOUT | ready
        assert self.s.ctx.objects[self.s.dev].iopf_enabled == int(self.on_iopf)
        self.s.check()

    def teardown(self) -> None:
        self.s.t.close()
        assert not self.s.ctx.objects


FaultQueueMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25,
                                               deadline=None)
TestFaultQueueStateful = FaultQueueMachine.TestCase


def test_reference_helpers_agree() -> None:
    """The record layout the reference reads: 40 bytes, cookie last."""
    assert REC == 40 and HWPT_PGFAULT.unpack(bytes(36) + struct.pack("<I", 7))[8] == 7
