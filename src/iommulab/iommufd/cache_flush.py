"""Lab: CPU cache flushes for pages mapped into non-coherent domains (not in mainline).

The 2024 series "Enforce CPU cache flush for non-coherent device assignment"
(Yan Zhao; reference §1.11) flushes the CPU caches over a page before it is
mapped into a domain that does not enforce cache coherency, so a device
that does not snoop cannot read what the CPU has not written back, and again
before the page leaves, so device writes are not followed by stale lines or
late write-backs. Review questioned how to track which pages need it; the
three designs discussed are the policies here:

- ``"sticky"``: a ``cache_flush_required`` bit per ``iopt_pages``, set when the
  pages are mapped into a non-coherent domain and never cleared; once set,
  every fill (into any domain) and every unpin of those pages flushes;
- ``"count"``: ``noncoherent_domain_cnt`` per IOAS; while it is not zero every
  fill and every area removal flushes, and a non-coherent domain leaving
  flushes what it had mapped;
- ``"every"``: no state; each map into and each unmap from a non-coherent
  domain flushes.

``"none"`` is mainline: no flush. A domain is non-coherent when its HWPT does
not enforce cache coherency, which is all the kernel can know; whether the
device really skips snooping only the CPU cache model
(:mod:`iommulab.mem.cpu_cache`) sees.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ..mem import PhysMem
    from .pages import IoptPages

__all__ = ["POLICIES", "CacheFlush", "FlushStats"]

POLICIES = ("none", "sticky", "count", "every")


@dataclass
class FlushStats:
    """Flushes by the point that asked for them (``map``, ``unmap``, ``unpin``,
    ``detach``) and the pages they covered."""

    calls: Counter[str] = field(default_factory=Counter)
    pages: Counter[str] = field(default_factory=Counter)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_pages(self) -> int:
        return sum(self.pages.values())


class CacheFlush:
    """The machine's policy and its counters; the io_pagetable asks it at each point."""

    def __init__(self, mem: PhysMem, policy: str = "none") -> None:
        self.mem = mem
        self.policy = policy
        self.stats = FlushStats()

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in POLICIES:
            raise ValueError(f"cache flush policy {value!r} (choose from {POLICIES})")
        self._policy = value

    def flush(self, pfns: npt.NDArray[np.int64], point: str) -> None:
        """``arch_clean_nonsnoop_dma`` over the pages."""
        if not len(pfns):
            return
        self.stats.calls[point] += 1
        self.stats.pages[point] += len(pfns)
        if self.mem.cpu_cache is not None:
            self.mem.cpu_cache.flush_pfns(pfns)

    # -- the decisions ----------------------------------------------------------------------
    def at_map(self, pages: IoptPages, into_noncoherent: bool, ioas_noncoherent: bool) -> bool:
        """Before ``pages`` are mapped into some domains of an IOAS."""
        if self._policy == "sticky":
            if into_noncoherent:
                pages.cache_flush_required = True
            return pages.cache_flush_required
        if self._policy == "count":
            return ioas_noncoherent
        return self._policy == "every" and into_noncoherent

    def at_unmap(self, domain_noncoherent: bool, ioas_noncoherent: bool, why: str) -> bool:
        """After an area is unmapped from one domain, ``why``: ``"area"`` (the area goes,
        this was its last domain), ``"area-other"`` (the area goes, another domain is
        left to unmap) or ``"domain"`` (the domain leaves the IOAS)."""
        if self._policy == "every":
            return domain_noncoherent
        if self._policy == "count":
            return ioas_noncoherent if why == "area" else why == "domain" and domain_noncoherent
        return False

    def at_unpin(self, pages: IoptPages) -> bool:
        """Before pages are unpinned."""
        return self._policy == "sticky" and pages.cache_flush_required
