"""``iommulab exec``: real programs against the model (lab).

:func:`run_exec` runs a program under the bridge (:mod:`iommulab.bridge`) with a
:class:`ModelHandler` answering its calls on the IOMMU device paths from one
:class:`~iommulab.machine.Machine`; the program's own memory is the user memory
(:mod:`.usermem`). See ``docs/design/exec-bridge.md``.
"""

from .handler import ExecProcess, ModelFile, ModelHandler
from .report import ExecLog
from .run import ExecResult, run_exec

__all__ = ["ExecLog", "ExecProcess", "ExecResult", "ModelFile", "ModelHandler", "run_exec"]
