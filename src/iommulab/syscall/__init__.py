"""The syscall surface (lab): one layer between the callers and the front ends.

A :class:`Process` with its fd table dispatches ``open``/``ioctl``/``mmap``/``read``/
``write``/``fork``/exit to the :class:`File` an fd points at; ``open`` resolves a path
in :data:`DEVICE_FILES`, into which the front ends (VFIO, iommufd) register the paths
they serve (:mod:`iommulab.frontends`, the analogue of their ``module_init``). The
Python API (:meth:`Machine.spawn_process <iommulab.machine.Machine.spawn_process>`)
and the exec bridge (:mod:`iommulab.exec.handler`) are two doors onto it. Core files
that are no front end's (memfd; eventfd in :mod:`iommulab.eventfd`) are here too.
"""

from .devtable import DEVICE_FILES, DeviceTable, DevNode
from .file import File, collect_cycles, fput, get_file
from .host import Host
from .memfd import MemFdFile
from .process import Process

__all__ = ["DEVICE_FILES", "DevNode", "DeviceTable", "File", "Host", "MemFdFile", "Process",
           "collect_cycles", "fput", "get_file"]
