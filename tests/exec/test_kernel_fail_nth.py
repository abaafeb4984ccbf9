"""Linux 6.12's own ``iommufd_fail_nth`` selftest, built from the kernel's source
unmodified, run under ``iommulab exec`` against the mock platform: every TEST_FAIL_NTH
passes, and each sweeps as many fail-nth steps as the Python replay of its body
(``tests/failnth/kernel_sequences.py``) does on the same kernel; the machine is left as
it was."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from iommulab.machine import Machine
from iommulab.testing import leak_snapshot
from iommulab.testing.kselftest import find_source

from ..failnth.kernel_sequences import SEQUENCES, run_fail_nth
from .kselftest_fail_nth import (
    SELFTEST,
    TESTS,
    build_fail_nth,
    run_fail_nth_exec,
)


@pytest.fixture(scope="module")
def fail_nth_exe(tmp_path_factory: pytest.TempPathFactory, bridge_ok: None) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    try:
        return build_fail_nth(tmp_path_factory.mktemp("kselftest-fail-nth"), gcc)
    except FileNotFoundError as e:
        pytest.skip(f"no Linux 6.12 source: {e}")


def test_the_tests_are_the_sequences(fail_nth_exe: Path) -> None:
    """The C file's TEST_FAIL_NTHs are the seven the Python replays, in its order."""
    text = (find_source() / SELFTEST).read_text()
    names = re.findall(r"^TEST_FAIL_NTH\(basic_fail_nth, (\w+)\)", text, re.M)
    assert tuple(names) == TESTS
    assert tuple(s.name for s in SEQUENCES) == TESTS


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_kernel_fail_nth_under_exec(fail_nth_exe: Path, kernel: str) -> None:
    m = Machine("mock", ram="256M", kernel=kernel)
    fresh = leak_snapshot(m)
    run = run_fail_nth_exec(m, fail_nth_exe, timeout=900)
    assert run.handler_errors == [], run.handler_errors
    assert run.verdicts == {name: "ok" for name in TESTS}, run.output
    assert run.status == 0, run.output
    want = {s.name: run_fail_nth(s, kernel).steps for s in SEQUENCES}
    assert run.steps == want
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert m.mem.external is not None and len(m.mem.external) == 0


def test_one_test_alone(fail_nth_exe: Path) -> None:
    """``-t NAME`` runs one TEST_F (the harness's filter): its steps alone."""
    m = Machine("mock", ram="256M")
    run = run_fail_nth_exec(m, fail_nth_exe, ("access_rw",), timeout=300)
    assert run.verdicts == {"access_rw": "ok"}, run.output
    assert run.steps == {"access_rw": 18}
