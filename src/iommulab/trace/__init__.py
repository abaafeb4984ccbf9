"""Replaying Linux ftrace output of the ``iommu`` and ``dma`` events through the model."""

from .parse import (
    DMA_DIRECTIONS,
    KNOWN_EVENTS,
    ParsedTrace,
    TraceError,
    TraceEvent,
    Unparsed,
    parse_trace,
    parse_trace_file,
)
from .replay import REPLAY_PLATFORMS, replay

__all__ = [
    "DMA_DIRECTIONS",
    "KNOWN_EVENTS",
    "REPLAY_PLATFORMS",
    "ParsedTrace",
    "TraceError",
    "TraceEvent",
    "Unparsed",
    "parse_trace",
    "parse_trace_file",
    "replay",
]
