"""Run one program tree against a machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from ..bridge import Bridge, BridgeStats
from .handler import ModelHandler
from .report import ExecLog

if TYPE_CHECKING:
    from ..syscall.host import Host

__all__ = ["ExecResult", "run_exec"]


@dataclass
class ExecResult:
    """What a run left: the exit status, the supervisor's counts, the model's errors."""

    status: int
    ioctls: int
    stats: BridgeStats
    handler_errors: list[BaseException] = field(default_factory=list)
    #: each write to a ``fail-nth`` file: (pid, tid, the counter it set)
    fail_nth_writes: list[tuple[int, int, int]] = field(default_factory=list)


def run_exec(machine: Host, argv: Sequence[str], *, timeout: float | None = None,
             env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int | IO[bytes] | None = None, stdout: int | IO[bytes] | None = None,
             stderr: int | IO[bytes] | None = None, log: ExecLog | None = None) -> ExecResult:
    """Run ``argv`` with its calls on the IOMMU device paths answered by ``machine``,
    until every process of its tree has gone; the machine keeps what the program left
    (nothing, once every file is released and every process has exited). ``log``, if
    given, is told of every model ioctl (for the report)."""
    handler = ModelHandler(machine, log=log)
    bridge = Bridge(handler)
    handler.bridge = bridge
    handler.backing_dir = bridge.backing_dir
    try:
        status = bridge.run(argv, timeout=timeout, env=env, cwd=cwd, stdin=stdin,
                            stdout=stdout, stderr=stderr)
    finally:
        handler.close()
    return ExecResult(status, handler.ioctls, bridge.stats, list(bridge.handler_errors),
                      handler.fail_nth_writes)
