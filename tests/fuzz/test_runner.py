"""The fuzzer's machinery: seeded sequences replay, each kind of finding is caught and
grouped by site, reproducers run, ddmin shortens them, fail-nth and RLIMIT_AS apply."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from iommulab.iommufd import uapi as iu
from iommulab.iommufd.file import IommufdFile
from iommulab.machine import Process
from iommulab.mem.mm import MmStruct
from iommulab.testing.fuzz import (
    Guard,
    Op,
    WorldConfig,
    address_space_limit,
    minimize,
    random_config,
    render,
    replay,
    run_sequence,
)
from iommulab.testing.fuzz.runner import _Run

CONFIG = WorldConfig("mock", "7.0", devices=1)
IOAS_ALLOC = Op(0, "ioctl", (3, iu.IOMMU_IOAS_ALLOC, iu.IOAS_ALLOC.pack(12, 0, 0)))


def test_a_seed_gives_the_same_sequence_and_outcomes() -> None:
    config = random_config(random.Random(5), "arm64-smmuv3")
    a = run_sequence(config, random.Random(7), 150)
    b = run_sequence(config, random.Random(7), 150)
    assert a.ops == b.ops and a.outcomes == b.outcomes
    assert len(a.ops) == 150 or a.found


def test_an_exception_other_than_oserror_is_a_crash_named_by_its_model_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: MmStruct, *args: Any) -> None:
        raise KeyError("broken")

    monkeypatch.setattr(MmStruct, "_overlapping", broken)
    ops = [Op(0, "mmap", (4 * 4096,)), Op(0, "munmap", (0x7FFF_EFFF_C000, 4096)),
           Op(0, "open", ("/dev/iommu",))]
    found = replay(CONFIG, ops)
    assert [(f.kind, f.key, f.upto) for f in found] == [
        ("crash", "crash: KeyError at mem/mm.py:munmap", 2)]
    script = render(CONFIG, ops[:2])
    with pytest.raises(KeyError):  # the reproducer reproduces
        exec(compile(script, "<reproducer>", "exec"), {})


def test_an_op_that_never_returns_is_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog interrupts the op (here a loop inside the address space's read) and
    names the innermost frame of the model it was in."""
    def spin(self: MmStruct, addr: int, n: int) -> bytes:
        while True:
            pass

    monkeypatch.setattr(MmStruct, "read", spin)
    found = replay(CONFIG, [Op(0, "read", (0, 8))], Guard(hang_seconds=0.2))
    assert [(f.kind, f.key) for f in found] == [("hang", "hang: Hang at syscall/process.py:read")]


def test_what_is_left_after_every_process_exited_is_a_leak(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IommufdFile, "release", lambda self: None)
    found = replay(CONFIG, [Op(0, "open", ("/dev/iommu",)), IOAS_ALLOC])
    assert [(f.kind, f.key) for f in found] == [("leak", "leak: iommufd_objects[Ioas: N]")]
    assert found[0].message == "iommufd_objects: Ioas: 1 (fresh: -)"


def test_a_broken_invariant_is_named_by_its_assertion(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Process.write

    def write(self: Process, vaddr: int, data: bytes) -> None:
        real(self, vaddr, data)
        self.machine.mem.frames.free_frames += 1

    monkeypatch.setattr(Process, "write", write)
    found = replay(CONFIG, [Op(0, "mmap", (4096,)), Op(0, "write", (0x7FFF_EFFF_F000, b"x"))])
    assert len(found) == 1 and found[0].kind == "invariant"
    assert found[0].key.startswith("invariant: mem/frames.py:_check:")


def test_ddmin_keeps_only_the_ops_the_finding_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IommufdFile, "release", lambda self: None)
    noise = [Op(0, "mmap", (4096,)), Op(0, "fork"), Op(1, "exit"), Op(0, "mmap", (8192,))]
    ops = [*noise, Op(0, "open", ("/dev/iommu",)), *noise, IOAS_ALLOC, *noise]
    short = minimize(CONFIG, ops, "leak: iommufd_objects[Ioas: N]")
    assert short == [Op(0, "open", ("/dev/iommu",)), IOAS_ALLOC]


def test_fail_nth_is_armed_for_the_share_asked_and_disarmed_after() -> None:
    res = run_sequence(random_config(random.Random(1), "mock"), random.Random(2), 60,
                       failnth_share=1.0)
    assert res.ops and all(op.fail_nth >= 1 for op in res.ops)


def test_an_allocation_past_the_address_space_limit_is_a_memory_error() -> None:
    with address_space_limit(256 << 20), pytest.raises(MemoryError):
        bytearray(1 << 31)
    assert len(bytearray(1 << 20)) == 1 << 20


def test_the_reproducer_of_an_ioctl_sequence_runs() -> None:
    fill = struct.pack("<I", 0)
    ops = [Op(0, "open", ("/dev/iommu",)), IOAS_ALLOC,
           Op(0, "ioctl", (3, iu.IOMMU_DESTROY, iu.DESTROY.pack(8, 1)), note="DESTROY"),
           Op(0, "ioctl", (3, iu.IOMMU_DESTROY, iu.DESTROY.pack(8, 1) + fill), fail_nth=1),
           Op(0, "fork"), Op(1, "exit")]
    script = render(CONFIG, ops)
    assert "m.mem.fail_nth.arm(1)" in script and "p.append(p[0].fork())" in script
    exec(compile(script, "<reproducer>", "exec"), {})
    assert replay(CONFIG, ops) == []


def test_a_scalable_mode_world_and_its_reproducer() -> None:
    """``vtd_scalable`` builds the nesting unit, and the reproducer asks for it too: a
    NEST_PARENT HWPT is refused by the legacy unit and made on the scalable one."""
    ops = [Op(0, "open", ("/dev/iommu",)), IOAS_ALLOC,
           Op(0, "open", ("/dev/vfio/devices/vfio0",)),
           Op(0, "ioctl", (4, 0x3B76, struct.pack("<IIiIQ", 24, 0, 3, 0, 0)), note="BIND"),
           Op(0, "ioctl", (3, iu.IOMMU_HWPT_ALLOC, iu.HWPT_ALLOC.pack(
               48, iu.IOMMU_HWPT_ALLOC_NEST_PARENT, 2, 1, 0, 0, 0, 0, 0, 0, 0)))]
    outcomes: dict[bool, str] = {}
    for scalable in (False, True):
        config = WorldConfig("x86-vtd", "6.12", devices=1, vtd_scalable=scalable)
        script = render(config, ops)
        assert ("vtd_scalable=True" in script) == scalable
        assert replay(config, ops) == []
        outcomes[scalable] = _outcomes(config, ops)[-1]
        exec(compile(script, "<reproducer>", "exec"), {})
    assert outcomes == {False: "95", True: "ok"}  # EOPNOTSUPP on the legacy unit


def _outcomes(config: WorldConfig, ops: list[Op]) -> list[str]:
    """How each of ``ops`` ended on a fresh world of ``config`` ("ok" or the errno)."""
    run = _Run(config, Guard())
    for op in ops:
        run.step(op)
    return [result for _, result in run.outcomes]


def test_change_process_is_refused_where_the_kernel_would_strand_a_pinned_vm_charge() -> None:
    """Pages a CAP_IPC_LOCK process pinned (ACCOUNT_NONE) from a file: IOAS_CHANGE_PROCESS
    from another process would move their mm and not their ``pinned_vm`` (the kernel's
    behaviour), which the leak check reports, so the generator sends it with
    ``__reserved`` set there; from the pinning process itself it is sent as is."""
    from iommulab.testing.fuzz.gen import Gen
    from iommulab.testing.fuzz.world import ProcSpec, World

    config = WorldConfig("x86-vtd", "7.0", devices=1, procs=(ProcSpec(cap_ipc_lock=True),))
    w = World(config)
    w.spawn_initial()
    parent = w.procs[0]
    fd = parent.open("/dev/iommu")
    parent.ioctl(fd, iu.IOMMU_IOAS_ALLOC, bytearray(iu.IOAS_ALLOC.pack(12, 0, 0)))
    child = parent.fork()
    w._add(child)
    mfd = child.memfd_create("f", 1 << 16)
    child.ioctl(fd, iu.IOMMU_IOAS_MAP_FILE, bytearray(iu.IOAS_MAP_FILE.pack(
        40, iu.IOMMU_IOAS_MAP_READABLE | iu.IOMMU_IOAS_MAP_WRITEABLE, 1, mfd, 0, 1 << 16, 0)))
    gen = Gen(w, random.Random(0), mutate=0.0)
    f = parent.files[fd]
    assert isinstance(f, IommufdFile)
    rsvd = {pi: struct.unpack_from("<I", gen._fd_change(pi, fd, f)[0].args[2], 4)[0]
            for pi in (0, 1)}
    assert rsvd == {0: 1, 1: 0}
    child.exit()
    parent.exit()
