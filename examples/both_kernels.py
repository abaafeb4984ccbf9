"""One program, two kernels: map a buffer for a device through iommufd with the
high-level API, on the model (the default) or on this machine's kernel (``--real``).

    python3 examples/both_kernels.py
    sudo python3 examples/both_kernels.py --real --cdev /dev/vfio/devices/vfio0

Nothing below the ``kernel = ...`` lines knows which one it talks to.
"""

from __future__ import annotations

import argparse
import os
import sys

from iommulab.api import Iommufd, Kernel, ModelKernel, RealKernel, VfioDevice


def run(kernel: Kernel, cdev_path: str) -> list[str]:
    """Bind the device to a new iommufd, attach it to an IOAS, map 2 MiB, unmap it."""
    out = []
    iommufd = Iommufd.open(kernel)
    device = VfioDevice.open_cdev(cdev_path, kernel)
    try:
        dev_id = device.bind_iommufd(iommufd)
        ioas = iommufd.ioas_alloc()
        device.attach_pt(ioas)
        ranges, align = iommufd.ioas_iova_ranges(ioas)
        out.append(f"ioas {ioas}: {len(ranges)} IOVA range(s), alignment {align:#x}")
        buf = kernel.alloc(2 << 20)
        iova = iommufd.ioas_map(ioas, buf, 2 << 20)
        out.append(f"device {dev_id}: 2 MiB buffer mapped at IOVA {iova:#x}")
        out.append(f"unmapped {iommufd.ioas_unmap(ioas, iova, 2 << 20):#x} bytes")
        device.detach_pt()
    finally:
        device.close()
        iommufd.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="this machine's kernel")
    ap.add_argument("--cdev", default="/dev/vfio/devices/vfio0",
                    help="the VFIO device cdev (a device bound to vfio-pci)")
    args = ap.parse_args(argv)
    kernel: Kernel
    if args.real:
        missing = [p for p in ("/dev/iommu", args.cdev) if not os.path.exists(p)]
        if missing:
            print(f"skipped: {', '.join(missing)} not present on this machine")
            return 0
        kernel = RealKernel()
    else:
        from iommulab import Machine
        m = Machine("x86-vtd", ram="1G")
        m.add_pci_device("0000:00:02.0")
        kernel = ModelKernel(m.spawn_process(memlock_limit="64M"))
    for line in run(kernel, args.cdev):
        print(line)
    if isinstance(kernel, ModelKernel):
        kernel.proc.exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
