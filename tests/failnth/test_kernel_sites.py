"""The model's fault-injection points follow Linux 6.12's, call by call and in order
(:mod:`.kernel_sites`, read from the kernel source)."""

from __future__ import annotations

import pytest

from .kernel_sequences import SEQUENCES, Sequence, logged_sites
from .kernel_sites import PCI_SCENARIO_SITES, SCENARIO_SITES, SEQUENCE_SITES, Site, xa_nodes_empty
from .scenarios import SCENARIOS
from .sweep import sites

BY_NAME = {s.name: s for s in SCENARIOS}


def _diff(model: list[str], kernel: list[Site]) -> str:
    """Model and kernel side by side, one point a line."""
    n = max(len(model), len(kernel))
    ms = model + ["-"] * (n - len(model))
    ks = kernel + [("-", "")] * (n - len(kernel))
    pairs = enumerate(zip(ms, ks, strict=True))
    return "\n".join(f"{i:3} {m:55} {k[0]} ({k[1]})" for i, (m, k) in pairs)


@pytest.mark.parametrize("name", sorted(SCENARIO_SITES))
def test_scenario_points_follow_the_kernel(name: str) -> None:
    """One ioctl in its scenario's state on the mock, 6.12: the points the model reaches
    are the kernel's, in the kernel's order."""
    s = BY_NAME[name]
    model = sites(lambda: s.setup("mock", "6.12"), s.op)
    kernel = SCENARIO_SITES[name]
    assert model == [site for site, _ in kernel], _diff(model, kernel)


@pytest.mark.parametrize("name", sorted(PCI_SCENARIO_SITES))
def test_pci_scenario_points_follow_the_kernel(name: str) -> None:
    """One vfio-pci call (device open, SET_IRQS, a BAR mmap) in its scenario's state on
    x86-vtd, 6.12: the model's points are the kernel's, in the kernel's order."""
    s = BY_NAME[name]
    model = sites(lambda: s.setup("x86-vtd", "6.12"), s.op)
    kernel = PCI_SCENARIO_SITES[name]
    assert model == [site for site, _ in kernel], _diff(model, kernel)


@pytest.mark.parametrize("seq", SEQUENCES, ids=[s.name for s in SEQUENCES])
def test_sequence_points_follow_the_kernel(seq: Sequence) -> None:
    """A TEST_FAIL_NTH body on 6.12: the points after its fail_nth_enable() are the
    kernel's, so its sweep runs one step per kernel point (a lower bound on the
    kernel's own count, which adds the VFS and device-core allocations)."""
    model = logged_sites(seq, "6.12")
    kernel = SEQUENCE_SITES[seq.name]
    assert model == [site for site, _ in kernel], _diff(model, kernel)


def test_xarray_node_counts() -> None:
    """lib/xarray.c's geometry: index 0 alone in the head; 128 mock slots at 16M/2K span
    two leaves under a three-level tree; 512 pages take eight leaves and a parent."""
    assert xa_nodes_empty(0, 0) == 0
    assert xa_nodes_empty(0, 0, root_ok=False) == 1
    assert xa_nodes_empty(8192, 8192 + 127) == 4
    assert xa_nodes_empty(0, 511) == 9
