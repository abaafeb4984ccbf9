"""Trace replay: parse and replay an ftrace text trace of a NIC's streaming DMA.

The trace is generated in the exact ftrace framing and the v6.12+ printk formats: for
each packet a ``map`` event, the ``dma_map_phys`` it pairs with, then the ``unmap``
and ``dma_unmap_phys``, on four CPUs, over a ring of IOVAs; one line in every 64 is
hard-wrapped as mail clients do. Figures: parse time and replay time per event.
"""

from __future__ import annotations

import argparse
import time

from _common import Figure, print_figures
from iommulab.trace import parse_trace, replay


def make_trace(packets: int) -> list[str]:
    lines = ["# tracer: nop", "#"]
    t = 100.0
    for i in range(packets):
        cpu = i % 4
        iova = 0xFFFF_0000_0000 - ((i % 4096) + 1) * 4096
        pa = 0x1_0000_0000 + (i % 65536) * 4096
        task = f"ksoftirqd/{cpu}-{20 + cpu}"
        head = f"  {task:>18} [{cpu:03d}] ..s1."
        for body in (f"map: IOMMU: iova=0x{iova:016x} - 0x{iova + 4096:016x} "
                     f"paddr=0x{pa:016x} size=4096",
                     f"dma_map_phys: 0000:01:00.0 dir=FROM_DEVICE dma_addr={iova:x} size=1536 "
                     f"phys_addr={pa:x} attrs=",
                     f"unmap: IOMMU: iova=0x{iova:016x} - 0x{iova + 4096:016x} size=4096 "
                     "unmapped_size=4096",
                     f"dma_unmap_phys: 0000:01:00.0 dir=FROM_DEVICE dma_addr={iova:x} "
                     "size=1536 attrs="):
            t += 0.000001
            line = f"{head} {t:12.6f}: {body}"
            if len(lines) % 64 == 0:  # hard-wrapped at a space, as pasted into mail
                cut = line.rfind(" ", 0, 90)
                lines += [line[:cut], line[cut + 1:]]
            else:
                lines.append(line)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, default=25_000)
    args = ap.parse_args()
    lines = make_trace(args.packets)
    start = time.perf_counter()
    trace = parse_trace(lines)
    parse_s = time.perf_counter() - start
    assert not trace.unparsed and len(trace.events) == 4 * args.packets
    start = time.perf_counter()
    result = replay(trace)
    replay_s = time.perf_counter() - start
    assert result.headline["disagreements"] == 0 and result.headline["streams"] == 1
    n = len(trace.events)
    print_figures(f"replay of {n} events ({len(lines)} lines)", [
        Figure("parse", parse_s / n * 1e6, "us/event"),
        Figure("replay (attribution, map/unmap, checks)", replay_s / n * 1e6, "us/event"),
    ])


if __name__ == "__main__":
    main()
