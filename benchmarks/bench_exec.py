"""Round trips of model ioctls through ``iommulab exec``: a C program timing its own calls.

``tests/exec/programs/model_ioctl_loop.c`` is compiled with the system gcc and run under
the bridge with the model handler on an x86-vtd machine: each kind of call is timed
``--calls`` times inside the program and the figure is the median over ``--repeat``
runs of the per-run medians; the device kinds drive QEMU's edu device. Issue 20 item 6
sets 50 us for a small ioctl, model included. On a loaded machine the supervisor's
wake-up dominates: run it on an idle one.
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
from iommulab.exec import run_exec
from iommulab.machine import Machine

SOURCE = (Path(__file__).resolve().parents[1] / "tests" / "exec" / "programs"
          / "model_ioctl_loop.c")
KINDS = {
    "version": ("VFIO_GET_API_VERSION: no user memory", 50.0),
    "option": ("IOMMU_OPTION get: 24-byte struct in and out", 50.0),
    "ranges": ("IOMMU_IOAS_IOVA_RANGES: struct + array via its pointer", 50.0),
    "enoent": ("IOMMU_DESTROY of no object: the error path", 50.0),
    "mapunmap": ("IOMMU_IOAS_MAP + UNMAP of one page (two calls, mirror read)", None),
    "barread": ("pread of 4 bytes of edu's BAR 0 (vfio_pci_bar_rw)", 50.0),
    "barwrite": ("pwrite of 4 bytes of edu's BAR 0", 50.0),
    "msi": ("edu raises MSI (BAR 0 pwrite), the program reads its eventfd", None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench_exec: gcc is needed to build the timing program")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "model_ioctl_loop")
        subprocess.run([gcc, "-O2", "-o", exe, str(SOURCE)], check=True)
        per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(args.repeat):
            m = Machine("x86-vtd")
            m.add_pci_device("0000:00:02.0", model="edu")
            out = Path(tmp) / "out"
            with out.open("wb") as f:
                result = run_exec(m, [exe, str(args.calls), *KINDS], timeout=3600, stdout=f)
            text = out.read_text()
            if result.status != 0 or result.handler_errors:
                sys.exit(f"bench_exec: the timing program failed:\n{text}\n"
                         f"{result.handler_errors}")
            for line in text.splitlines():
                kind, median, _p90, _min = line.split()
                per_kind[kind].append(float(median))
    print_figures(f"bench_exec: median of {args.repeat} runs x {args.calls} calls",
                  [Figure(desc, statistics.median(per_kind[k]), "us/call", target)
                   for k, (desc, target) in KINDS.items()])


if __name__ == "__main__":
    main()
