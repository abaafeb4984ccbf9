"""Round trips through the exec bridge: a C program timing its own calls.

``tests/bridge/programs/ioctl_loop.c`` is compiled with the system gcc and run under the
bridge with the echo handler (not the model, so the figures are the bridge's own cost):
each kind of call is timed ``--calls`` times inside the program, and the figure is the
median over ``--repeat`` runs of the per-run medians. Issue 20 item 6 sets 50 us for a
small ioctl through the bridge, model included; the model's own cost adds to these.
On a loaded machine the supervisor's wake-up dominates: run it on an idle one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Figure, print_figures
from iommulab.bridge import Bridge
from iommulab.bridge.echo import EchoHandler

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "bridge" / "programs" / "ioctl_loop.c"
KINDS = {
    "nop": ("trapped ioctl, answered, no user memory", 50.0),
    "struct": ("trapped ioctl, 24-byte struct in, 8 bytes out", 50.0),
    "continue": ("trapped ioctl on a real fd, CONTINUEd", None),
    "fstat": ("trapped fstat (newfstatat) of a real fd, CONTINUEd", None),
    "getppid": ("untrapped syscall (the filter only)", None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench_bridge: gcc is needed to build the timing program")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "ioctl_loop")
        subprocess.run([gcc, "-O2", "-o", exe, str(SOURCE)], check=True)
        per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(args.repeat):
            out = Path(tmp) / "out"
            with out.open("wb") as f:
                rc = Bridge(EchoHandler()).run([exe, str(args.calls), *KINDS], timeout=600,
                                               stdout=f)
            text = out.read_text()
            if rc != 0:
                sys.exit(f"bench_bridge: the timing program failed:\n{text}")
            for line in text.splitlines():
                kind, median, _p90, _min = line.split()
                per_kind[kind].append(float(median))
    print_figures(f"bench_bridge: median of {args.repeat} runs x {args.calls} calls",
                  [Figure(desc, statistics.median(per_kind[k]), "us/call", target)
                   for k, (desc, target) in KINDS.items()])


if __name__ == "__main__":
    main()
