"""Fakes for users' tests (and ours): a recording TLB."""

from .recording_tlb import RecordingTlb

__all__ = ["RecordingTlb"]
