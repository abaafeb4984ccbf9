"""The kinds of memory a program maps, as the mirror pins them and the pinned pages'
bytes reach the program (``programs/mirror_kinds.c``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

Build = Callable[..., Path]

# what the kernel answers: a writeable pin of a read-only mapping and a range with a
# hole fail with EFAULT (pin_user_pages stops there); everything else maps, and a
# buffer mapped twice around an mprotect holds two pins on each of its pages
EXPECTED = """mock_domain 0
create_access 0
map_memfd 0 0
map_shared_anon 0 0
map_ro_readable 0 0
map_ro_writeable -1 14
map_hole -1 14
map_before_grow 0 0
map_after_grow 0 0
map_before_mprotect 0 0
map_readonly_after_mprotect 0 0
check_refs_two_maps 0 0
map_thp 0 0
thread_map 0 0
done 0""".splitlines()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_mirror_kinds(build: Build, tmp_path: Path, static: bool) -> None:
    m = Machine("mock")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("mirror_kinds", static=static))], timeout=60,
                          stdout=f)
    lines = out.read_text().splitlines()
    assert result.handler_errors == []
    assert lines == EXPECTED  # no FAIL: every byte the program checked was right
    assert result.status == 0
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_killed_program_leaves_the_machine_fresh(build: Build) -> None:
    m = Machine("mock")
    fresh = leak_snapshot(m)
    result = run_exec(m, [str(build("killed_mid_run"))], timeout=60)
    assert result.status == -9  # SIGKILL, after its pins were taken
    assert result.ioctls == 4 and result.handler_errors == []
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_write_back_faults(build: Build, tmp_path: Path) -> None:
    """A write-back the program's memory refuses fails where the kernel's copy_to_user
    does: IOAS_ALLOC then destroys the new IOAS, so the id is the next one's."""
    m = Machine("mock")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("writeback_fault"))], timeout=60, stdout=f)
    assert result.status == 0 and result.handler_errors == []
    assert out.read_text().splitlines() == [
        "alloc_readonly -1 14 0", "alloc 0 0 1",
        "alloc_straddle -1 14 12",  # the first 8 bytes were written (the same values)
        "alloc_again 0 0 2",
        # the selftest's ops undo what they made when the answer cannot be written
        "mock_domain_readonly -1 14", "create_access_readonly -1 14",
        "mock_domain 0 0 3 5 4",  # the ids of the undone one, free again
        "fds_added 0"]  # the access fd was never installed
    assert not (diff := fresh.diff(leak_snapshot(m))), diff


def test_memlock_is_the_programs_own_at_the_call(build: Build, tmp_path: Path) -> None:
    """A child that drops CAP_IPC_LOCK and lowers RLIMIT_MEMLOCK to 64K is charged by
    them (ENOMEM for 1M, 32K fits); its unchanged parent is not."""
    m = Machine("mock")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("memlock"))], timeout=60, stdout=f)
    assert result.status == 0 and result.handler_errors == []
    assert out.read_text().splitlines() == [
        "mock_domain 0", "child_map_1M -1 12", "child_map_32K 0 0", "parent_map_1M 0 0"]
    assert not (diff := fresh.diff(leak_snapshot(m))), diff

