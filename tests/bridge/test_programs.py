"""Real C programs under the bridge with the echo handler (compiled at test time)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from iommulab.bridge import Bridge
from iommulab.bridge.echo import ECHO_NOP, EchoHandler
from iommulab.bridge.memory import TargetMemory

Build = Callable[..., Path]


def run(argv: Sequence[str | Path], tmp_path: Path, handler: EchoHandler | None = None,
        **kw: object) -> tuple[int, str, EchoHandler, Bridge]:
    """Run under a fresh bridge; stdout goes to a file (a pipe could fill while we serve)."""
    h = handler or EchoHandler()
    bridge = Bridge(h, **kw)  # type: ignore[arg-type]
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        rc = bridge.run([str(a) for a in argv], timeout=60, stdout=f)
    text = out.read_text()
    assert bridge.handler_errors == []
    assert h.open_files == {}, "every open file was released"
    return rc, text, h, bridge


def assert_all_ok(text: str) -> None:
    assert "FAIL" not in text, text
    assert "done 0" in text, text


def kinds(h: EchoHandler, kind: str) -> list[tuple[object, ...]]:
    return [e for e in h.events if e[0] == kind]


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_echo_program(build: Build, tmp_path: Path, static: bool) -> None:
    rc, text, h, bridge = run([build("echo_basic", static=static)], tmp_path)
    assert rc == 0
    assert_all_ok(text)
    (fork,) = kinds(h, "fork")
    pid = fork[2]
    assert fork == ("fork", None, pid)
    assert h.events[-1] == ("exit", pid) or ("exit", pid) in h.events
    assert len(kinds(h, "open")) == 2 and len(kinds(h, "release")) == 2  # open + reopen
    st = bridge.stats
    assert st.received == st.continued + st.answered + st.gone
    assert st.installed == 5  # open, dup, dup2, F_DUPFD_CLOEXEC, reopen


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fork_children_are_met_and_files_released_at_last_close(build: Build, tmp_path: Path,
                                                                static: bool) -> None:
    rc, text, h, _ = run([build("fork", static=static)], tmp_path)
    assert rc == 0, text
    forks = kinds(h, "fork")
    assert len(forks) == 3
    parent, child, grandchild = (f[2] for f in forks)
    assert forks == [("fork", None, parent), ("fork", parent, child),
                     ("fork", child, grandchild)]
    assert {e[1] for e in kinds(h, "exit")} == {parent, child, grandchild}
    opens = kinds(h, "open")
    assert [o[1] for o in opens] == [parent, child]
    # the parent's file, inherited by child and grandchild, is released only after the
    # parent used it again once they were gone
    shared = opens[0][2]
    assert h.events.index(("release", shared)) > h.events.index(("exit", grandchild))


def test_threads_are_one_process(build: Build, tmp_path: Path) -> None:
    rc, text, h, _ = run([build("threads")], tmp_path)
    assert rc == 0, text
    assert "bad=0" in text
    assert len(kinds(h, "fork")) == 1
    assert h.ioctls == 4 * 100 * 2
    assert len(kinds(h, "open")) == 5


def test_threads_static(build: Build, tmp_path: Path) -> None:
    rc, text, h, _ = run([build("threads", static=True)], tmp_path)
    assert rc == 0, text
    assert h.ioctls == 800


def test_garbage_pointers_get_efault(build: Build, tmp_path: Path) -> None:
    rc, text, _h, bridge = run([build("garbage")], tmp_path)
    assert rc == 0
    assert_all_ok(text)
    assert text.count("ok ") == 18
    assert bridge.stats.answered > 15


class KillChildren(EchoHandler):
    """Kills what is left of the tree when the launched program exits."""

    def __init__(self) -> None:
        super().__init__()
        self.root: int | None = None

    def fork(self, parent: int | None, child: int) -> None:
        super().fork(parent, child)
        if parent is None:
            self.root = child

    def exit(self, pid: int) -> None:
        super().exit(pid)
        if pid == self.root:
            for e in kinds(self, "fork"):
                if e[2] != pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(e[2]), signal.SIGKILL)  # type: ignore[call-overload]


def test_killed_mid_call(build: Build, tmp_path: Path) -> None:
    h = KillChildren()
    rc, text, _, bridge = run([build("killed")], tmp_path, handler=h)
    assert rc == -signal.SIGKILL
    assert "FAIL" not in text and "about to be killed" in text
    assert len(kinds(h, "open")) == 2 and len(kinds(h, "release")) == 2
    assert len(kinds(h, "exit")) == 2
    # the answer to the killing call may or may not reach the dying task (SIGKILL
    # races the SEND); either way every call was accounted for
    st = bridge.stats
    assert st.received == st.continued + st.answered + st.gone


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a stand-in needs root")


@needs_root
def test_cannot_reach_the_real_device(build: Build, tmp_path: Path) -> None:
    """A char device node standing in for /dev/iommu, under protect=: never opened."""
    devdir = tmp_path / "dev"
    devdir.mkdir()
    node = devdir / "iommu"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rc, text, h, _ = run([build("reach"), node, scratch], tmp_path, protect=[str(node)])
    assert rc == 0, text
    assert_all_ok(text)
    assert kinds(h, "open") == []
    assert node.exists() and not (scratch / "hardlink").exists()


@pytest.mark.parametrize("real", ["/dev/iommu", "/dev/vfio/vfio"])
def test_cannot_reach_the_real_device_itself(build: Build, tmp_path: Path, real: str) -> None:
    """Where the host has the real device, the default fence keeps it out of reach."""
    if not os.path.exists(real):
        pytest.skip(f"{real} does not exist here (the stand-in test covers the fence)")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rc, text, h, _ = run([build("reach"), real, scratch, "--no-rename"], tmp_path)
    assert rc == 0, text
    assert_all_ok(text)
    assert kinds(h, "open") == []


@needs_root
def test_landlock_alone_fences_the_path(tmp_path: Path, bridge_ok: None) -> None:
    """The fence without the supervisor's own check: a child under the ruleset only."""
    from iommulab.bridge import _landlock

    node = tmp_path / "iommu"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    ruleset = _landlock.make_ruleset([str(node)])
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _landlock.restrict_self(ruleset)
            for path in (str(node), f"/proc/self/root{node}",
                         f"{tmp_path}/../{tmp_path.name}/iommu"):
                try:
                    os.close(os.open(path, os.O_RDONLY))
                    code = 1
                except PermissionError:
                    pass
            os.close(os.open("/etc/passwd", os.O_RDONLY))
        except BaseException:
            code = 2
        os._exit(code)
    os.close(ruleset)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_served_through_symlink_and_dev_fd(build: Build, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to("/dev/iommulab-test")
    # /bin/sh opens by path for redirections: a served path reached through a symlink and
    # through /dev/fd of a directory fd
    script = f"exec 3<>{link} && exec 4</dev && exec 5<>/dev/fd/4/iommulab-test && echo done 0"
    rc, text, h, _ = run(["/bin/sh", "-c", script], tmp_path)
    assert rc == 0, text
    assert "done 0" in text
    assert len(kinds(h, "open")) == 2


def test_handler_bug_is_eio_and_the_bridge_lives(build: Build, tmp_path: Path) -> None:
    class Broken(EchoHandler):
        def ioctl(self, pid: int, handle: object, request: int, arg: int,
                  mem: TargetMemory) -> int:
            if request == ECHO_NOP:
                raise RuntimeError("model bug")
            return super().ioctl(pid, handle, request, arg, mem)

    h = Broken()
    bridge = Bridge(h)
    out = tmp_path / "out"
    with out.open("wb") as f:
        rc = bridge.run([str(build("ioctl_loop")), "3", "struct", "nop"], timeout=60,
                        stdout=f)
    text = out.read_text()
    assert rc == 1
    assert "FAIL nop call 0 -> -1 errno 5" in text  # EIO
    assert len(bridge.handler_errors) == 1
    assert h.open_files == {}


def test_unserved_program_runs_untouched(build: Build, tmp_path: Path) -> None:
    rc, text, h, bridge = run(["/bin/sh", "-c", "ls / >/dev/null && echo done 0"], tmp_path)
    assert rc == 0 and "done 0" in text
    assert kinds(h, "open") == []
    assert bridge.stats.answered == 0


def test_signals_never_interrupt_or_repeat_an_answered_call(build: Build,
                                                            tmp_path: Path) -> None:
    """WAIT_KILLABLE_RECV: once received, a call is answered once, whatever the signals
    (the handler runs exactly once per call; an EINTR before receipt, which the program
    retries, never reaches it)."""
    class Slow(EchoHandler):
        slow_calls = 0

        def ioctl(self, pid: int, handle: object, request: int, arg: int,
                  mem: TargetMemory) -> int:
            if request == 0x3BF5:
                self.slow_calls += 1
                time.sleep(0.03)  # 30 timer ticks go by in the program
                return 77
            return super().ioctl(pid, handle, request, arg, mem)

    h = Slow()
    rc, text, _, _ = run([build("signals")], tmp_path, handler=h)
    assert rc == 0, text
    assert_all_ok(text)
    assert h.slow_calls == 3
    assert int(text.split("ticks ")[1].split()[0]) > 0


def test_missing_program_raises_and_cleans_up(bridge_ok: None) -> None:
    with Bridge(EchoHandler()) as bridge, pytest.raises(FileNotFoundError):
        bridge.run(["/nonexistent/program"])
    assert bridge.handler_errors == []
