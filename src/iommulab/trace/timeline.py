"""A replay's maps, unmaps and faults per device over time (lab; the report's ``timeline``).

One lane per replayed stream (a device, or a task whose mappings no device could
be tied to) and per faulting device with no stream. Maps and unmaps are counted
in :data:`TIMELINE_BINS` equal slices of the trace's time span, so the size does
not grow with the trace; faults are rare and each is listed (up to
:data:`MAX_FAULTS`) with its time, IOVA, line and whether the model agrees.
The clock is the trace's timestamps in seconds, or the event order when some
events have none (a pasted excerpt without ftrace framing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_FAULTS", "TIMELINE_BINS", "TimelineRecorder"]

TIMELINE_BINS = 100
MAX_FAULTS = 10_000
KINDS = ("map", "unmap", "fault")


@dataclass
class _Mark:
    t: float
    order: int
    kind: str
    lane: str
    iova: int
    line: int
    agreed: bool = True


@dataclass
class TimelineRecorder:
    """Collects marks during a replay; :meth:`document` bins them."""

    marks: list[_Mark] = field(default_factory=list)
    devices: dict[str, str | None] = field(default_factory=dict)  # lane -> device, in order

    def add(self, kind: str, lane: str, device: str | None, *, t: float, order: int,
            iova: int, line: int, agreed: bool = True) -> None:
        self.devices.setdefault(lane, device)
        self.marks.append(_Mark(t, order, kind, lane, iova, line, agreed))

    def document(self, bins: int = TIMELINE_BINS, max_faults: int = MAX_FAULTS) -> dict[str, Any]:
        """The ``timeline`` object of the JSON report (``report-v2.schema.json``)."""
        timed = all(m.t >= 0 for m in self.marks)
        clock = [m.t if timed else float(m.order) for m in self.marks]
        start, end = (min(clock), max(clock)) if clock else (0.0, 0.0)
        span = end - start
        counts = {lane: {k: [0] * bins for k in KINDS} for lane in self.devices}
        faults: list[dict[str, Any]] = []
        for m, c in zip(self.marks, clock, strict=True):
            b = min(int((c - start) / span * bins), bins - 1) if span > 0 else 0
            counts[m.lane][m.kind][b] += 1
            if m.kind == "fault" and len(faults) < max_faults:
                faults.append({"lane": m.lane, "t": c, "iova": m.iova, "line": m.line,
                               "agreed": m.agreed})
        return {
            "clock": "seconds" if timed else "event order", "start": start, "end": end,
            "bins": bins,
            "lanes": [{"name": lane, "device": dev, "maps": counts[lane]["map"],
                       "unmaps": counts[lane]["unmap"], "faults": counts[lane]["fault"]}
                      for lane, dev in self.devices.items()],
            "fault_events": faults,
            "faults_total": sum(1 for m in self.marks if m.kind == "fault"),
        }
