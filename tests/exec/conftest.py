"""The exec tests build their C programs like the bridge tests do (same fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bridge import conftest as bridge_conftest

PROGRAMS = Path(__file__).parent / "programs"
bridge_ok = bridge_conftest.bridge_ok


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory,
          bridge_ok: None) -> Callable[..., Path]:
    """``build("iommufd_mock", static=True)``: a program of ``tests/exec/programs``."""
    import shutil
    import subprocess
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the exec tests compile C programs")
    out = tmp_path_factory.mktemp("exec-programs")
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
