"""Build the C test programs with the system gcc; skip with the reason when we cannot."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.bridge import _landlock

PROGRAMS = Path(__file__).parent / "programs"


def _seccomp_notify_works() -> str | None:
    """None if this kernel gives a seccomp listener; else why not."""
    import ctypes
    import os

    from iommulab.bridge import _abi as A
    from iommulab.bridge._bpf import FilterConfig, build_filter

    prog = build_filter(FilterConfig(768, 1024))
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = ctypes.create_string_buffer(
        (len(prog) // 8).to_bytes(2, "little") + bytes(6)
        + ctypes.addressof(buf).to_bytes(8, "little"), 16)
    pid = os.fork()
    if pid == 0:  # the filter stays with this child, which exits at once
        try:
            A.syscall(A.NR_seccomp, A.SECCOMP_SET_MODE_FILTER,
                      A.SECCOMP_FILTER_FLAG_NEW_LISTENER
                      | A.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, ctypes.addressof(fprog))
        except OSError as e:
            os._exit(e.errno or 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    err = os.waitstatus_to_exitcode(status)
    return None if err == 0 else f"seccomp(NEW_LISTENER) fails: {os.strerror(err)}"


@pytest.fixture(scope="session")
def bridge_ok() -> None:
    why = _seccomp_notify_works()
    if why:
        pytest.skip(why)
    if _landlock.landlock_abi() == 0:
        pytest.skip("Landlock is not enabled in this kernel: the bridge has no fence")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory,
          bridge_ok: None) -> Callable[..., Path]:
    """``build("fork", static=True)``: the compiled program (cached for the session)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the bridge tests compile C programs")
    out = tmp_path_factory.mktemp("programs")
    built: dict[tuple[str, bool], Path] = {}

    def _build(name: str, *, static: bool = False) -> Path:
        key = (name, static)
        if key not in built:
            if static:
                libc = subprocess.run([gcc, "-print-file-name=libc.a"], capture_output=True,
                                      text=True, check=True).stdout.strip()
                if not Path(libc).is_absolute():
                    pytest.skip("no static libc (apt-get install libc6-dev)")
            exe = out / (name + ("-static" if static else ""))
            cmd = [gcc, "-O2", "-Wall", "-Werror", "-pthread", "-o", str(exe),
                   str(PROGRAMS / f"{name}.c")]
            subprocess.run(cmd + (["-static"] if static else []), check=True)
            built[key] = exe
        return built[key]

    return _build
