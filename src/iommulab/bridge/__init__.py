"""Real programs against a handler: the interception layer of ``iommulab exec``.

A program runs under a seccomp user-notification filter; its calls on served paths and
on the files opened there go to a :class:`Handler`, everything else to the real kernel.
See ``docs/design/exec-bridge.md`` for the mechanism and its limits.
"""

from .handler import CONTINUE, Backing, Continue, Handler, Node
from .memory import TargetMemory
from .supervisor import DEFAULT_PROTECT, Bridge, BridgeStats, fd_window

__all__ = ["CONTINUE", "DEFAULT_PROTECT", "Backing", "Bridge", "BridgeStats", "Continue",
           "Handler", "Node", "TargetMemory", "fd_window"]
