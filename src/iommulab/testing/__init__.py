"""Fakes and checks for users' tests (and ours): a recording TLB, the leak baseline of a
machine, every ``_check()`` reachable from it, and a fuzzer (:mod:`.fuzz`)."""

from .invariants import check_invariants
from .leaks import LeakSnapshot, leak_snapshot
from .recording_tlb import RecordingTlb

__all__ = ["LeakSnapshot", "RecordingTlb", "check_invariants", "leak_snapshot"]
